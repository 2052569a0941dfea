from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from distinit.pipeline.errors import ShardError
from distinit.pipeline.shards import (
    ShardSet,
    ShardWriter,
    TeacherInfo,
    VideoRecord,
    dequantize,
    quantize,
)

TEACHER = TeacherInfo("t", 7, tuple("abcdefg"), "0" * 64, "test", "none")


def _write(path: Path, videos: dict[str, np.ndarray], teachers=(TEACHER,)) -> Path:
    w = ShardWriter(path, list(teachers), {"videos_root": "/nowhere"})
    for vid, logits in videos.items():
        n = len(logits)
        w.add_video(
            VideoRecord(vid, "ok"),
            np.arange(n) / 25,
            np.arange(n),
            {t.name: quantize(logits) for t in teachers},
        )
    w.add_failure("broken.mp4", "no video stream")
    return w.close()


def test_round_trip_keeps_logits_within_quantisation_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 4, (9, 7)).astype(np.float32)
    _write(tmp_path / "a.h5", {"dir/one.mp4": x})
    s = ShardSet(tmp_path)
    assert [r.id for r in s.ok_videos()] == ["dir/one.mp4"]
    assert s.records["broken.mp4"].error == "no video stream"
    got = s.logits("dir/one.mp4", [4, 2, 4])["t"]
    step = (x.max(1) - x.min(1)) / 255
    assert np.all(np.abs(got - x[[4, 2, 4]]) <= step[[4, 2, 4], None] / 2 + 1e-5)
    np.testing.assert_allclose(s.times("dir/one.mp4"), np.arange(9) / 25)


def test_any_row_selection_reads_the_rows_asked_for(tmp_path: Path) -> None:
    """Rows in any order, repeated, near together (read as one span) or far apart (read by
    index), in a video that is not the shard's first: each is its own row of the whole video."""
    rng = np.random.default_rng(1)
    first, second = (rng.normal(0, 4, (n, 7)).astype(np.float32) for n in (30, 200))
    _write(tmp_path / "a.h5", {"a.mp4": first, "b.mp4": second})
    s = ShardSet(tmp_path)
    whole = s.logits("b.mp4")["t"]
    assert whole.shape == (200, 7)
    selections = [[], [0], [199], [5, 2, 5, 9], list(range(40, 56)), [199, 0], [3, 150, 3]]
    selections += [rng.integers(0, 200, rng.integers(1, 40)).tolist() for _ in range(30)]
    for rows in selections:
        np.testing.assert_array_equal(s.logits("b.mp4", rows)["t"], whole[rows], str(rows))
    with pytest.raises(IndexError, match="rows outside"):
        s.logits("b.mp4", [3, 200])


def test_quantisation_of_constant_rows_is_exact() -> None:
    x = np.full((2, 5), 3.5, dtype=np.float32)
    np.testing.assert_array_equal(dequantize(*quantize(x)), x)


def test_crash_before_close_leaves_no_final_file(tmp_path: Path) -> None:
    w = ShardWriter(tmp_path / "s.h5", [TEACHER], {})
    w.add_video(
        VideoRecord("v.mp4", "ok"), np.zeros(2), np.arange(2), {"t": quantize(np.zeros((2, 7)))}
    )
    assert not (tmp_path / "s.h5").exists()  # nothing under the final name before close()
    w.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ShardError, match="no shard files"):
        ShardSet(tmp_path)


def test_schema_mismatch_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.h5", {"v.mp4": np.zeros((2, 7), np.float32)})
    with h5py.File(path, "a") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(ShardError, match="schema version 99"):
        ShardSet(tmp_path)


def test_shards_with_different_teachers_are_refused(tmp_path: Path) -> None:
    other = TeacherInfo("u", 7, tuple("abcdefg"), "1" * 64, "test", "none")
    _write(tmp_path / "a.h5", {"v.mp4": np.zeros((2, 7), np.float32)})
    _write(tmp_path / "b.h5", {"w.mp4": np.zeros((2, 7), np.float32)}, teachers=(other,))
    with pytest.raises(ShardError, match="same teachers"):
        ShardSet(tmp_path)


def test_flipped_bytes_are_detected_by_checksums(tmp_path: Path) -> None:
    x = np.random.default_rng(1).normal(size=(600, 7)).astype(np.float32)
    path = _write(tmp_path / "a.h5", {"v.mp4": x})
    with h5py.File(path, "r") as f:
        offset = f["logits/t/q"].id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    data[offset + 100] ^= 0xFF
    path.write_bytes(bytes(data))
    problems = ShardSet(tmp_path).verify_checksums()
    assert problems and "a.h5" in problems[0]


def test_wrong_shapes_are_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.h5", {"v.mp4": np.zeros((3, 7), np.float32)})
    with h5py.File(path, "a") as f:
        f["videos/row_count"][0] = 50
    with pytest.raises(ShardError, match="outside the frame table"):
        ShardSet(tmp_path)


def test_teacher_provenance_is_stored(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.h5", {"v.mp4": np.zeros((1, 7), np.float32)})
    with h5py.File(path, "r") as f:
        assert json.loads(f.attrs["teachers"])[0]["class_names"] == list("abcdefg")


def test_non_finite_logits_are_reported(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.h5", {"v.mp4": np.zeros((3, 7), np.float32)})
    with h5py.File(path, "a") as f:
        f["logits/t/scale"][0, 1] = np.nan  # view 0, row 1
    shards = ShardSet(tmp_path)
    assert any("non-finite" in p for p in shards.verify_checksums())
    with pytest.raises(ShardError, match="non-finite"):
        shards.logits("v.mp4")


def test_missing_dataset_is_a_clear_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.h5", {"v.mp4": np.zeros((3, 7), np.float32)})
    with h5py.File(path, "a") as f:
        del f["frames/index"]
    with pytest.raises(ShardError, match="a.h5: unreadable or damaged shard"):
        ShardSet(tmp_path)
