"""Memory flat in video length: rows reach disk as they are done, shards stay within their bound.

Peak memory is traced with tracemalloc (numpy's buffers and Python's bytes are traced; HDF5's
chunk cache is not, and is bounded by HDF5 itself): a video ten times longer must not raise the
peak by more than noise. Holding a video's frame-store GOPs, frame tables or a shard image until
the video or the shard ends would.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np

from distinit.extract.config import ExtractConfig
from distinit.extract.runner import run_extract
from distinit.extract.shard_sequence import ShardSequence
from distinit.extract.spool import VideoSpool
from distinit.pipeline.framestore import StoreFormat
from distinit.pipeline.shards import ShardSet, TeacherInfo, VideoRecord, quantize, read_shard_header
from tests.videogen import make_lavfi_video


def _peak_traced_bytes(video: Path, out: Path) -> int:
    cfg = ExtractConfig(
        videos=str(video.parent), out=str(out), teachers=("none",), store_size=(48, 32), workers=1
    )
    tracemalloc.start()
    try:
        summary = run_extract(cfg)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary.done == 1
    return peak


def test_a_ten_times_longer_video_does_not_raise_peak_memory(tmp_path: Path) -> None:
    peaks = {}
    for name, seconds in (("short", 12), ("long", 120)):
        folder = tmp_path / name
        folder.mkdir()
        video = make_lavfi_video(folder / "v.mp4", seconds=seconds, size="64x48", fps=30)
        peaks[name] = _peak_traced_bytes(video, tmp_path / f"{name}-shards")
        rows = ShardSet(tmp_path / f"{name}-shards").ok_videos()[0].row_count
        assert rows == 30 * seconds
    assert peaks["long"] <= 1.15 * peaks["short"] + 256 * 1024, peaks


TEACHER = TeacherInfo("t", 10, tuple(f"c{i}" for i in range(10)), "0" * 64, "test", "none")


def _spooled(out: Path, rows: int, gop_bytes: int) -> VideoSpool:
    """A complete video of ``rows`` rows in a spool, its store GOPs ``gop_bytes`` bytes each."""
    spool = VideoSpool(out, "shard-r0000of0001-", (TEACHER.key,))
    for start in range(0, rows, 8):
        n = min(8, rows - start)
        spool.add_frames(np.arange(start, start + n) / 25.0, np.arange(start, start + n),
                         (n, bytes(gop_bytes)))  # fmt: skip
        spool.add_targets({TEACHER.key: quantize(np.ones((n, 10), np.float32))})
    return spool


def test_the_shard_size_bound_holds_before_a_video_is_added(tmp_path: Path) -> None:
    store = StoreFormat(48, 32)
    bound = 10_000
    shards = ShardSequence(tmp_path, "shard-r0000of0001-", [TEACHER], {}, 100, store, None,
                           max_bytes=bound)  # fmt: skip
    # (rows, bytes of each 8-row GOP); a row's targets and tables take 16 + 10 + 8 bytes.
    sizes = [(40, 100), (40, 100), (16, 3000), (200, 200), (8, 10)]
    nbytes = [rows * 34 + -(-rows // 8) * gop for rows, gop in sizes]
    assert nbytes == [1860, 1860, 6544, 11800, 282]
    for i, (rows, gop_bytes) in enumerate(sizes):
        spool = _spooled(tmp_path, rows, gop_bytes)
        assert spool.path.stat().st_size > rows * 34, "the rows are on disk before the video ends"
        shards.add_video(VideoRecord(f"v{i}.mp4", "ok"), spool)
        spool.remove()
    shards.close()
    # v2 would take the first shard to 10264 bytes: it starts the next one instead; v3 is larger
    # than the bound and has a shard of its own.
    grouped = [[r.id for r in read_shard_header(tmp_path / n).records] for n in shards.written]
    assert grouped == [["v0.mp4", "v1.mp4"], ["v2.mp4"], ["v3.mp4"], ["v4.mp4"]]
    ok = ShardSet(tmp_path).ok_videos()
    assert [r.row_count for r in ok] == [rows for rows, _ in sizes]
    assert not list(tmp_path.glob("*.tmp"))
