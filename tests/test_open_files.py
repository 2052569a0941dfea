"""Open files are bounded per process, and a machine's limit is never called a damaged shard."""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from distinit.pipeline import shards as shards_module
from distinit.pipeline.errors import MachineFaultError
from distinit.pipeline.frame_geometry import FrameGeometry
from distinit.pipeline.framestore import StoreFormat, encode_gop
from distinit.pipeline.shards import ShardSet, ShardWriter, VideoRecord, quantize
from distinit.pipeline.video import iter_video
from tests.test_train_run import COMMON
from tests.test_train_support import TEACHERS, peaked_logits
from tests.videogen import make_index_video

SHARDS = 33
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _many_shards(root: Path, count: int = SHARDS) -> Path:
    """``count`` shards of one 8-frame video each (``v00.mp4`` ...), all from one decode, with a
    40x32 store (train's ``--resize`` in COMMON)."""
    video = make_index_video(root / "v.mp4", 8, size=48)
    store = StoreFormat(40, 32)
    chunks = list(iter_video(video, [FrameGeometry(32, 32), FrameGeometry(*store.size)]))
    times = np.concatenate([c.times for c in chunks])
    indices = np.concatenate([c.indices for c in chunks])
    gops = [(len(c), encode_gop(c.views[-1], store)) for c in chunks]
    logits = {
        t.name: quantize(peaked_logits(indices, t.num_classes, 1 + 2 * k))
        for k, t in enumerate(TEACHERS)
    }
    out = root / "shards"
    out.mkdir()
    for i in range(count):
        writer = ShardWriter(out / f"shard-{i:04d}.h5", TEACHERS, {"videos_root": str(root)}, store)
        record = VideoRecord(id=f"v{i:02d}.mp4", status="ok", native_frames=len(times), fps=25.0)
        writer.add_video(record, times, indices, logits, gops)
        writer.close()
    return out


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _many_shards(tmp_path_factory.mktemp("many"))


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_reading_every_shard_keeps_at_most_max_open(many_shards: Path) -> None:
    s = ShardSet(many_shards, max_open=3)
    before = _open_fds()
    for r in s.ok_videos():
        assert s.frames(r.id, [0, 7]).shape == (2, 32, 40, 3)
        assert s.logits(r.id, [1, 2])["objects"].argmax(axis=1).tolist() == [1, 2]
        assert s.open_files <= 3 and _open_fds() <= before + 3
    assert s.open_files == 3
    # A shard closed to make room opens again when it is read again.
    assert s.logits("v00.mp4", [5])["objects"].argmax(axis=1).tolist() == [5]
    s.close()
    assert s.open_files == 0 and _open_fds() == before


def test_the_default_bound_leaves_room_under_the_open_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (30, hard))
        assert shards_module.default_max_open() == 7
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
        assert shards_module.default_max_open() == shards_module.MAX_OPEN_SHARDS
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _emfile(*args: object, **kwargs: object) -> h5py.File:
    # h5py's own wording for a failed open
    raise OSError(
        errno.EMFILE,
        "Unable to synchronously open file (unable to open file: name = 'x.h5', errno = 24, "
        "error message = 'Too many open files', flags = 0, o_flags = 0)",
    )


def test_too_many_open_files_is_not_called_damage(
    many_shards: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = ShardSet(many_shards)
    monkeypatch.setattr(h5py, "File", _emfile)
    reads = (lambda: s.logits("v03.mp4", [0]), lambda: ShardSet(many_shards), s.verify_checksums)
    for read in reads:
        with pytest.raises(MachineFaultError) as caught:
            read()
        message = str(caught.value)
        assert "\n" not in message
        assert "Too many open files (EMFILE)" in message and "ulimit -n" in message
        assert "damaged" not in message and "delete" not in message


def _limit_open_files(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


@pytest.mark.parametrize(("workers", "limit"), [(0, 30), (2, 48)])
def test_train_touches_more_shards_than_the_open_file_limit(
    many_shards: Path, tmp_path: Path, workers: int, limit: int
) -> None:
    # 33 videos, one per shard, all in every step: each step's batch is one loader worker's,
    # so two steps take every worker through every shard. All of them open at once do not fit
    # under ``limit`` open files (a worker also holds about 20 of torch's: pipes, shared memory).
    argv = [sys.executable, "-m", "distinit.pipeline.cli", "train", "--targets", str(many_shards),
            "--out", str(tmp_path / "run"), *COMMON, "--batch-size", str(SHARDS),
            "--max-steps", "2", "--workers", str(workers)]  # fmt: skip
    r = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=300,
                       preexec_fn=lambda: _limit_open_files(limit))  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "run" / "final.pt").is_file()
