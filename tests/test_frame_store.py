"""The frame store's promises: every row's stored frame is the cached frame, at any frame rate,
with or without --fps; the source path agrees; training runs from the store alone.

Videos are generated with frames that encode their own index (tests/videogen.py), so "the
right frame" is read off the pixels, never inferred from timestamps.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from distinit.extract.config import ExtractConfig
from distinit.extract.runner import run_extract
from distinit.pipeline.cli import cli
from distinit.pipeline.errors import ConfigError, ShardError
from distinit.pipeline.frame_source import SourceFrames, StoreFrames, open_frame_source
from distinit.pipeline.framestore import StoreFormat, decode_gop, encode_gop, psnr
from distinit.pipeline.shards import ShardSet
from distinit.train.clips import ClipDataset, ClipSpec
from tests.test_train_support import index_dataset, write_shards
from tests.videogen import generator_ffmpeg, index_frame, read_index

SIZE = 64  # generated frames and the store: the index grid survives a stretch to this size
FRAMES = 48


def _index_video(path: Path, rate: str, *, vfr: bool = False) -> Path:
    """Frame i shows i; ``rate`` as ffmpeg takes it (``30000/1001``); ``vfr`` stretches every
    third frame's duration to 2.5 periods, so frame times are uneven."""
    extra = ["-vf", f"setpts='(N+1.5*floor(N/3))/({rate})/TB'", "-fps_mode", "vfr"] if vfr else []
    cmd = [
        generator_ffmpeg(), "-nostdin", "-loglevel", "error", "-y", "-f", "rawvideo",
        "-pix_fmt", "rgb24", "-s", f"{SIZE}x{SIZE}", "-r", rate, "-i", "-", *extra,
        "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv444p", "-g", "12", "-bf", "2", str(path),
    ]  # fmt: skip
    data = b"".join(index_frame(i, SIZE).tobytes() for i in range(FRAMES))
    subprocess.run(cmd, input=data, check=True)
    return path


RATES = [("24", False), ("25", False), ("30000/1001", False), ("50", False), ("60", False),
         ("120", False), ("30", True)]  # fmt: skip


@pytest.fixture(scope="module")
def rate_videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rates") / "videos"
    root.mkdir()
    for rate, vfr in RATES:
        name = f"r{rate.replace('/', '_')}{'_vfr' if vfr else ''}.mp4"
        _index_video(root / name, rate, vfr=vfr)
    return root


def _extract(videos: Path, out: Path, fps: float | None) -> ShardSet:
    summary = run_extract(
        ExtractConfig(
            videos=str(videos),
            out=str(out),
            teachers=("none",),
            fps=fps,
            store_size=(SIZE, SIZE),
            workers=2,
        )  # fmt: skip
    )
    assert summary.failed == 0 and summary.done == len(RATES)
    return ShardSet(out)


@pytest.mark.parametrize("fps", [None, 7.0, 200.0])  # 200: above every native rate
def test_every_stored_and_every_source_frame_is_the_cached_frame(
    rate_videos: Path, tmp_path: Path, fps: float | None
) -> None:
    shards = _extract(rate_videos, tmp_path / "shards", fps)
    store, source = StoreFrames(shards), SourceFrames(shards, (SIZE, SIZE), rate_videos)
    for record in shards.ok_videos():
        cached = shards.frame_indices(record.id)
        if fps is None or fps > 120:  # above the native rate: every native frame, once
            assert cached.tolist() == list(range(FRAMES)), record.id
        else:
            assert len(cached) < FRAMES and np.all(np.diff(cached) > 0), record.id
        rows = np.arange(record.row_count)
        shown = [read_index(f) for f in store(record.id, rows)]
        assert shown == cached.tolist(), f"{record.id}: store frames are not the cached ones"
        for stride in (1, 2, 3):  # what a strided clip asks the source path for
            for start in range(0, record.row_count - 3 * stride, 5):
                clip_rows = rows[start : start + 4 * stride : stride]
                got = [read_index(f) for f in source(record.id, clip_rows)]
                assert got == cached[clip_rows].tolist(), (record.id, stride, start)


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_the_training_dataset_shows_the_cached_frames(
    rate_videos: Path, tmp_path_factory: pytest.TempPathFactory, stride: int
) -> None:
    out = tmp_path_factory.getbasetemp() / f"dataset_rates_{stride}"
    shards = ShardSet(out) if out.exists() else _extract(rate_videos, out, None)
    spec = ClipSpec(4, stride, (SIZE, SIZE), SIZE, 1.0, "mean")
    for prefer in ("store", "source"):
        frames = open_frame_source(shards, (SIZE, SIZE), prefer=prefer)
        ds = ClipDataset(shards, frames, spec, seed=stride, global_batch=len(RATES))
        for index in range(2 * len(RATES)):
            item, plan = ds[index], ds.plan(index)
            clip = item["clip"].numpy()[:, :, ::-1] if plan.flip else item["clip"].numpy()
            record = ds.videos[plan.video]
            expected = shards.frame_indices(record.id)[item["rows"].numpy()]
            assert [read_index(f) for f in clip] == expected.tolist(), (prefer, record.id)


def test_store_codec_round_trip_size_and_quality(sample_clips: Path) -> None:
    from distinit.pipeline.frame_geometry import FrameGeometry
    from distinit.pipeline.video import iter_video

    chunks = list(iter_video(sample_clips / "bikes.mp4", FrameGeometry(171, 128)))
    fmt = StoreFormat(171, 128)
    frames = np.concatenate([c.frames for c in chunks])
    blobs = [encode_gop(c.frames, fmt) for c in chunks]
    decoded = np.concatenate(
        [decode_gop(b, fmt, np.arange(len(c))) for b, c in zip(blobs, chunks, strict=True)]
    )
    assert decoded.shape == frames.shape  # odd width 171: padded for x264, cropped back
    # The README's promise: <= 2 KB per frame at >= 40 dB (bikes is the most detailed clip).
    assert sum(map(len, blobs)) / len(frames) <= 2048
    assert psnr(decoded, frames) >= 40.0
    # Any subset, any order, repeats: each asked frame is the same as in a full decode.
    picked = decode_gop(blobs[1], fmt, np.array([9, 2, 9, 0]))
    assert np.array_equal(picked, decoded[[16 + 9, 16 + 2, 16 + 9, 16 + 0]])
    with pytest.raises(ShardError, match="frame 16 wanted"):
        decode_gop(blobs[0], fmt, np.array([16]))


def test_store_colours_are_what_ffmpeg_reads_from_the_stream(sample_clips: Path) -> None:
    """The store converts colour with its own BT.601 matrices (OpenCV, for speed); FFmpeg reading
    the same stream by its tags must see the same picture, or the store would drift from every
    other tool (and from stores coded before the conversion moved)."""
    import av

    from distinit.pipeline.frame_geometry import FrameGeometry
    from distinit.pipeline.video import iter_video

    frames = next(iter(iter_video(sample_clips / "bikes.mp4", FrameGeometry(171, 128)))).frames
    fmt = StoreFormat(171, 128)
    blob = encode_gop(frames, fmt)
    ours = decode_gop(blob, fmt, np.arange(len(frames)))
    ctx = av.CodecContext.create("h264", "r")
    packets = [*ctx.parse(blob), *ctx.parse(None), None]
    pictures = [p for packet in packets for p in ctx.decode(packet)]
    assert pictures[0].colorspace == 6 and pictures[0].color_range == 1  # BT.601, limited
    ffmpeg = np.stack([p.to_ndarray(format="rgb24")[:128, :171] for p in pictures])
    difference = np.abs(ours.astype(np.int16) - ffmpeg)
    assert difference.max() <= 2 and difference.mean() < 0.2  # rounding, not a colour shift


def test_store_formats_recorded_before_the_tune_was_still_read() -> None:
    old = {"width": 171, "height": 128, "gop": 16, "crf": 16, "preset": "faster",
           "pix_fmt": "yuv444p", "codec": "h264"}  # fmt: skip
    assert StoreFormat.from_json(old).tune == "psnr"
    assert StoreFormat.from_json(StoreFormat(64, 64).to_json()) == StoreFormat(64, 64)


@pytest.fixture(scope="module")
def store_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return index_dataset(tmp_path_factory.mktemp("store_train"))


TRAIN_ARGS = [
    "--student", "mc3_18", "--clip-len", "4", "--frame-stride", "2", "--resize", "64x64",
    "--crop", "56", "--batch-size", "2", "--max-steps", "4", "--lr", "0.05", "--seed", "3",
    "--device", "cpu", "--workers", "0",
]  # fmt: skip


def _train(shards: Path, out: Path, *extra: str) -> list[float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "distinit.pipeline.cli", "train", "--targets", str(shards),
         "--out", str(out), *TRAIN_ARGS, *extra],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    where = "source videos under" if "source" in extra else "frame store in"
    assert f"frames: {where}" in proc.stderr  # the run says where its frames come from
    lines = (out / "log.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if '"loss"' in line]


@pytest.mark.parametrize("dataset", ["store/bytes", "logits/objects/q"])
def test_training_on_a_damaged_shard_is_one_line_naming_it_and_the_remedy(
    store_dataset: tuple[Path, Path], tmp_path: Path, dataset: str
) -> None:
    """A flipped byte fails its chunk's fletcher32 inside a loader worker: the user gets the
    shard and what to do, not the worker's traceback."""
    import h5py

    shards = Path(shutil.copytree(store_dataset[1], tmp_path / "shards"))
    (path,) = shards.glob("*.h5")
    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    data[offset + 50] ^= 0xFF
    path.write_bytes(bytes(data))
    proc = subprocess.run(
        [sys.executable, "-m", "distinit.pipeline.cli", "train", "--targets", str(shards),
         "--out", str(tmp_path / "run"), *TRAIN_ARGS, "--workers", "1"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert errors[0].startswith(f"Error: {path}: unreadable or damaged shard (")
    assert errors[0].endswith("delete it and run distinit extract again to redo its videos")


def test_training_from_the_store_matches_the_source_and_needs_no_videos(
    store_dataset: tuple[Path, Path], tmp_path: Path
) -> None:
    videos, shards = store_dataset
    from_source = _train(shards, tmp_path / "source", "--frames", "source")
    moved = tmp_path / "moved_away"
    shutil.copytree(shards, tmp_path / "portable")
    os.rename(videos, moved)  # the store is a portable training set: no source videos
    try:
        from_store = _train(tmp_path / "portable", tmp_path / "store", "--frames", "store")
        with pytest.raises(ConfigError, match="does not exist"):
            open_frame_source(ShardSet(tmp_path / "portable"), (64, 64), prefer="source")
    finally:
        os.rename(moved, videos)
    assert len(from_store) == len(from_source) == 4
    # Same clips, same crops, same targets; only the store's lossy coding (~40 dB on this
    # black-and-white grid) differs, so the losses agree closely, not bit for bit.
    np.testing.assert_allclose(from_store, from_source, rtol=0.02)


def test_shards_without_a_store_fall_back_to_the_source_with_a_notice(
    store_dataset: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    videos, _ = store_dataset
    plain = write_shards(tmp_path / "plain", videos, ["a/clip.mp4"], store=None)
    with caplog.at_level("WARNING"):
        frames = open_frame_source(ShardSet(plain), (64, 64))
    assert isinstance(frames, SourceFrames)
    assert "--frames none" in caplog.text and "much slower" in caplog.text
    with pytest.raises(ConfigError, match="no usable frame store"):
        open_frame_source(ShardSet(plain), (64, 64), prefer="store")
    # A schema-1 shard (written before the store existed) is still read, and says so.
    import h5py

    for shard in plain.glob("*.h5"):
        with h5py.File(shard, "r+") as f:
            f.attrs["schema_version"] = 1
    caplog.clear()
    with caplog.at_level("WARNING"):
        old = ShardSet(plain)
        assert isinstance(open_frame_source(old, (64, 64)), SourceFrames)
    assert old.schema_versions == [1] and "schema 1" in caplog.text
    # A store of another size than --resize is not silently resized either.
    with caplog.at_level("WARNING"):
        frames = open_frame_source(ShardSet(store_dataset[1]), (40, 32))
    assert isinstance(frames, SourceFrames) and "64x64 frames" in caplog.text


def test_inspect_saves_the_rows_a_strided_clip_reads(
    store_dataset: tuple[Path, Path], tmp_path: Path
) -> None:
    _, shards = store_dataset
    for where in ("store", "source"):
        out = tmp_path / where
        result = CliRunner().invoke(
            cli,
            ["inspect", str(shards), "--video", "a/clip.mp4", "--rows", "3:20:4", "--save",
             str(out), "--from", where],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        # Zero-padded to the video's last row (39), so the names sort as the rows do.
        assert sorted(p.name for p in out.glob("*.png")) == [
            "03.png", "07.png", "11.png", "15.png", "19.png"
        ]  # fmt: skip
        import cv2

        for png in out.glob("*.png"):
            assert read_index(cv2.imread(str(png))) == int(png.stem)
    bad = CliRunner().invoke(
        cli, ["inspect", str(shards), "--video", "a/clip.mp4", "--rows", "30:99", "--save", "x"]
    )
    assert isinstance(bad.exception, ShardError) and "rows 0..39" in str(bad.exception)


def test_bench_train_prints_and_writes_the_store_figures(tmp_path: Path) -> None:
    """The benchmark behind the README's stage-two table runs end to end and writes its keys."""
    videos, shards = index_dataset(tmp_path)
    figures = tmp_path / "figures.json"
    args = ["bench", "train", "--targets", str(shards), "--student", "mc3_18", "--clip-len", "4",
            "--resize", "64x64", "--crop", "32", "--batch-size", "1", "--workers", "1",
            "--clips", "4", "--steps", "1", "--json-out", str(figures)]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "loader from the frame store:" in result.output and "store / source = " in result.output
    written = json.loads(figures.read_text())
    assert written["store_clips_per_s_per_core"] > written["source_clips_per_s_per_core"] > 0
    assert 0 < written["store_bytes_per_frame"] < 64 * 64 * 3
    assert written["store_psnr_db"] >= 40 and written["store_psnr_frames"] == 40 + 5


@pytest.mark.parametrize("size", [(8, 128), (171, 15), (100000, 100000), (1025, 768)])
def test_an_impossible_store_size_is_refused_before_any_video(tmp_path: Path, size: tuple) -> None:
    with pytest.raises(ConfigError, match=rf"--store-size {size[0]}x{size[1]}: both sides"):
        ExtractConfig(videos=str(tmp_path), out=str(tmp_path / "out"), store_size=size)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def teacher_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The index videos extracted with a real teacher and a 64x64 frame store (45 rows)."""
    root = tmp_path_factory.mktemp("teacher_store")
    videos, _ = index_dataset(root)
    summary = run_extract(
        ExtractConfig(videos=str(videos), out=str(root / "targets"), store_size=(SIZE, SIZE),
                      crop=48, workers=1, device="cpu", compile="off", batch_size=8)
    )  # fmt: skip
    assert summary.failed == 0 and summary.done == 2
    return videos, root / "targets"


def _inspect(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["inspect", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def test_inspect_verify_with_the_videos_moved_is_ok_and_says_what_it_skipped(
    teacher_store: tuple[Path, Path], tmp_path: Path
) -> None:
    videos, shards = teacher_store
    moved = tmp_path / "moved"
    os.rename(videos, moved)  # the store makes the shards portable: moving videos is no damage
    try:
        code, out = _inspect(str(shards), "--verify", "8")
        assert code == 0, out
        assert "all intact" in out and "damage" not in out and out.rstrip().endswith("OK")
        assert "GOP tables match the rows, 8 rows decoded" in out
        skipped = [line for line in out.splitlines() if "skipped" in line]
        assert len(skipped) == 1, out
        assert skipped[0].startswith("store PSNR and target recompute skipped: ")
        assert str(videos) in skipped[0] and "pass --videos DIR" in skipped[0]
        assert "problem:" not in out and "recomputed" not in out
        # --videos says where they are now: the parts that need them run.
        code, out = _inspect(str(shards), "--verify", "8", "--videos", str(moved))
        assert code == 0, out
        assert "PSNR" in out and "dB against the source" in out and "recomputed 8 frames" in out
        assert "skipped" not in out
        # --save from the source finds them there too.
        save = ["--video", "a/clip.mp4", "--rows", "0:4", "--save", str(tmp_path / "png")]
        code, out = _inspect(str(shards), *save, "--from", "source", "--videos", str(moved))
        assert code == 0 and str(moved) in out, out
        # A --videos that does not hold them is an error, not something to skip.
        with pytest.raises(ConfigError, match="does not exist"):
            _inspect(str(shards), "--verify", "8", "--videos", str(tmp_path / "nowhere"))
    finally:
        os.rename(moved, videos)


def test_inspect_verify_reports_a_flipped_byte_as_damage(
    teacher_store: tuple[Path, Path], tmp_path: Path
) -> None:
    import h5py

    _, shards = teacher_store
    damaged = tmp_path / "damaged"
    shutil.copytree(shards, damaged)
    (path,) = damaged.glob("*.h5")
    with h5py.File(path, "r") as f:
        offset = f["store/bytes"].id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    data[offset + 100] ^= 0xFF
    path.write_bytes(bytes(data))
    code, out = _inspect(str(damaged), "--verify", "8")
    assert code != 0 and out.rstrip().endswith("FAILED"), out
    assert "damage found" in out and f"problem: {path.name}" in out
    assert "the shards are damaged: store decode and target recompute skipped" in out
    assert "no frames asked for" not in out


def test_inspect_verify_draws_distinct_rows_capped_at_the_row_count(
    teacher_store: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from distinit.extract import verification
    from distinit.extract.verification import draw_rows

    monkeypatch.setattr(verification, "SPAN_ROWS", 16)  # a 40-row video: decoded in three spans

    _, shards = teacher_store
    shard_set = ShardSet(shards)
    total = shard_set.total_rows()
    for n in (1, 30, total, 1000):
        picks = draw_rows(shard_set, n, seed=3)
        assert sum(len(rows) for rows in picks.values()) == min(n, total)
        for video_id, rows in picks.items():
            assert np.all(np.diff(rows) > 0)  # ascending, no row twice
            assert rows[0] >= 0 and rows[-1] < shard_set.records[video_id].row_count
    code, out = _inspect(str(shards), "--verify", "1000")
    assert code == 0 and total == 45, out
    assert f"--verify 1000: the shards hold {total} rows; checking every one" in out
    assert f"GOP tables match the rows, {total} rows decoded" in out
    assert f"recomputed {total} frames" in out


def test_inspect_prints_no_bytes_per_frame_for_an_empty_store(
    store_dataset: tuple[Path, Path], tmp_path: Path
) -> None:
    videos, _ = store_dataset
    empty = write_shards(tmp_path / "empty", videos, [])
    code, out = _inspect(str(empty))
    assert code == 0 and "0 frames" in out, out
    (store_line,) = [line for line in out.splitlines() if line.startswith("frame store:")]
    assert "bytes/frame" not in store_line


@pytest.mark.parametrize(
    "text, reason",
    [("8:0", "A must be below B"), ("4:4", "A must be below B"), ("0:8:0", "step S"),
     ("0:41", "rows 0..39"), ("-1:4", "rows 0..39"), ("a:b", "expected A:B")],
)  # fmt: skip
def test_a_bad_rows_range_says_what_is_wrong_with_it(text: str, reason: str) -> None:
    from distinit.extract.inspection import parse_rows

    assert parse_rows("3:20:4", 40).tolist() == [3, 7, 11, 15, 19]
    assert parse_rows("36:", 40).tolist() == [36, 37, 38, 39]
    with pytest.raises(ShardError, match=reason):
        parse_rows(text, 40)


def test_inspect_notes_a_video_that_decoded_far_fewer_frames_than_its_header_says() -> None:
    from distinit.extract.inspection import format_summary, short_decode_note
    from distinit.pipeline.shards import VideoRecord

    cut = VideoRecord("cut.mp4", "ok", row_count=68, native_frames=68, duration=14.8, fps=30.0)
    whole = VideoRecord("whole.mp4", "ok", row_count=440, native_frames=440, duration=14.8, fps=30)
    fps_kept = VideoRecord("five.mp4", "ok", row_count=74, native_frames=444, duration=14.8, fps=30)
    note = short_decode_note(cut)
    assert note is not None and "decoded 68 of the about 444 frames" in note
    assert short_decode_note(whole) is None and short_decode_note(fps_kept) is None
    videos = [
        {"id": r.id, "frames": r.row_count, "status": "ok", "note": short_decode_note(r)}
        for r in (cut, whole)
    ]
    text = format_summary(
        {"directory": "d", "videos_ok": 2, "videos_failed": 0, "frames": 508, "bytes": 0,
         "teachers": [], "provenance": {}, "store": None, "videos": videos}
    )  # fmt: skip
    assert "cut.mp4  (note: decoded 68 of the about 444" in text
    assert text.splitlines()[-1].endswith("whole.mp4")
