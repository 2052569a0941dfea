from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from distinit.pipeline.errors import VideoDecodeError
from distinit.pipeline.fps_rule import FpsSelector
from distinit.pipeline.frame_geometry import FrameGeometry
from distinit.pipeline.timestamp_match import decode_at_times
from distinit.pipeline.video import iter_video
from tests.videogen import make_index_video, read_index

GEOM = FrameGeometry(64, 64)


def _decode_all(path: Path, geometry: FrameGeometry = GEOM, fps: float | None = None):
    chunks = list(iter_video(path, geometry, fps=fps, chunk_size=7))
    return (
        np.concatenate([c.frames for c in chunks]),
        np.concatenate([c.times for c in chunks]),
        np.concatenate([c.indices for c in chunks]),
    )


def test_every_native_frame_in_order_with_timestamps(index_video: Path) -> None:
    frames, times, indices = _decode_all(index_video)
    assert len(frames) == 60
    assert [read_index(f) for f in frames] == list(range(60))
    np.testing.assert_allclose(times, np.arange(60) / 25.0, atol=1e-6)
    assert indices.tolist() == list(range(60))


@pytest.mark.parametrize(
    ("suffix", "codec"),
    [(".mp4", "libx264"), (".avi", "mpeg4"), (".mkv", "libx264"), (".ts", "libx264")],
)
def test_decode_at_times_returns_exactly_those_frames(
    tmp_path: Path, suffix: str, codec: str
) -> None:
    video = make_index_video(tmp_path / f"v{suffix}", 90, codec=codec)
    _, times, _ = _decode_all(video)
    wanted = [70, 71, 73, 75, 75, 80]
    clip = decode_at_times(video, GEOM, times[wanted])
    assert [read_index(f) for f in clip] == wanted


def test_fps_resampling_keeps_first_frame_at_each_grid_point(index_video: Path) -> None:
    frames, times, indices = _decode_all(index_video, fps=5)
    # 25 fps source, 5 fps grid: every fifth native frame, never duplicated.
    assert indices.tolist() == list(range(0, 60, 5))
    assert [read_index(f) for f in frames] == list(range(0, 60, 5))


def test_fps_selector_never_duplicates_when_grid_is_finer_than_video() -> None:
    sel = FpsSelector(100.0)
    assert all(sel.keep(t) for t in np.arange(10) / 25.0)


def test_crop_geometry_keeps_aspect(tmp_path: Path) -> None:
    video = make_index_video(tmp_path / "v.mp4", 3, size=64)
    frames, _, _ = _decode_all(video, FrameGeometry(32, 32, resize_shorter=32))
    assert frames.shape == (3, 32, 32, 3)
    assert [read_index(f) for f in frames] == [0, 1, 2]


def test_not_a_video_is_a_one_line_error(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.mp4"
    bogus.write_text("hello")
    with pytest.raises(VideoDecodeError) as info:
        list(iter_video(bogus, GEOM))
    assert "notes.mp4" in str(info.value)
    assert "\n" not in str(info.value)


def test_real_clip_frame_count(sample_clips: Path) -> None:
    _, times, _ = _decode_all(sample_clips / "bikes.mp4", FrameGeometry(32, 32))
    assert len(times) == 250
    np.testing.assert_allclose(np.diff(times), 0.04, atol=1e-6)
