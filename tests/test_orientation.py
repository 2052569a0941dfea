"""Phone videos carry a display rotation: frames must reach the teacher as they are shown.

A video is made from index frames (frame i shows i) and given a display matrix without
re-encoding, as phones store portrait video; the decoder must apply it, so undoing the rotation
on each decoded frame gives back the index. ffmpeg's ``-display_rotation`` is counter-clockwise.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from distinit.pipeline.frame_geometry import FrameGeometry
from distinit.pipeline.video import VideoReader, iter_video
from tests.videogen import generator_ffmpeg, make_lavfi_video, read_index


def _rotated(src: Path, out: Path, degrees: int) -> Path:
    subprocess.run(
        [generator_ffmpeg(), "-nostdin", "-loglevel", "error", "-y", "-display_rotation",
         str(degrees), "-i", str(src), "-c", "copy", str(out)],
        check=True,
    )  # fmt: skip
    return out


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_rotated_video_is_decoded_as_displayed(
    index_video: Path, tmp_path: Path, degrees: int
) -> None:
    video = _rotated(index_video, tmp_path / "rotated.mp4", degrees)
    frames = np.concatenate([c.frames for c in iter_video(video, FrameGeometry(64, 64))])
    assert len(frames) == 60
    turned_back = [read_index(np.rot90(f, -degrees // 90)) for f in frames]
    assert turned_back == list(range(60))
    assert [read_index(f) for f in frames[1:]] != list(range(1, 60)), "rotation was ignored"


def test_rotated_video_reports_its_displayed_size(tmp_path: Path) -> None:
    src = make_lavfi_video(tmp_path / "landscape.mp4", size="96x64", seconds=0.2)
    video = _rotated(src, tmp_path / "portrait.mp4", 90)
    with VideoReader(video, FrameGeometry(32, 32)) as reader:
        for _ in reader:
            pass
        assert (reader.info.width, reader.info.height) == (64, 96)
