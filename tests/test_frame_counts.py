"""Stage one caches exactly the frames ffmpeg decodes, at the timestamps ffmpeg reports.

The reference is ffmpeg's own ``framemd5`` muxer (one line per decoded frame with its pts), an
independent path from the decoder's showinfo parsing.
"""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from distinit.pipeline.ffmpeg_binary import ffmpeg_binary
from distinit.pipeline.frame_geometry import FrameGeometry
from distinit.pipeline.video import iter_video
from tests.videogen import make_lavfi_video


def _framemd5(path: Path, time_base: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ffmpeg_binary(), "-nostdin", "-loglevel", "error", "-i", str(path), "-map", "0:v:0",
         "-fps_mode", "passthrough", "-enc_time_base", time_base, "-f", "framemd5", "-"],
        capture_output=True, text=True,
    )  # fmt: skip


def ffmpeg_frame_times(path: Path) -> np.ndarray:
    # Keep the demuxer's time base: "demux" in ffmpeg 7 and later, "-1" before (Debian's 5.1).
    result = _framemd5(path, "demux")
    if result.returncode != 0:
        result = _framemd5(path, "-1")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    tb = next(
        Fraction(line.split(":")[1].strip()) for line in out.splitlines() if line.startswith("#tb")
    )
    pts = [
        int(line.split(",")[2]) for line in out.splitlines() if line and not line.startswith("#")
    ]
    return np.array([float(p * tb) for p in pts])


def our_frame_times(path: Path) -> np.ndarray:
    return np.concatenate([c.times for c in iter_video(path, FrameGeometry(16, 16))])


@pytest.fixture(scope="module")
def containers(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("containers")
    made = [
        make_lavfi_video(root / "mpeg4.avi", seconds=1, extra=("-c:v", "mpeg4")),
        make_lavfi_video(root / "h264.mkv", seconds=1),
        make_lavfi_video(root / "vp9.webm", seconds=1, extra=("-c:v", "libvpx-vp9")),
        make_lavfi_video(root / "mjpeg.mov", seconds=1, extra=("-c:v", "mjpeg")),
        make_lavfi_video(root / "h264_30000_1001.ts", seconds=1, fps=30),
        make_lavfi_video(root / "vfr.mp4", seconds=1, extra=(
            "-vf", "setpts='if(lt(N,10),N/25,0.4+(N-10)/5)/TB'", "-fps_mode", "vfr")),
    ]  # fmt: skip
    return made


def test_real_clips_match_ffmpeg(sample_clips: Path) -> None:
    for clip in sorted(sample_clips.glob("*.mp4")):
        reference = ffmpeg_frame_times(clip)
        ours = our_frame_times(clip)
        assert len(ours) == len(reference), clip.name
        np.testing.assert_allclose(ours - ours[0], reference - reference[0], atol=1e-6)


def test_other_containers_and_codecs_match_ffmpeg(containers: list[Path]) -> None:
    for video in containers:
        reference = ffmpeg_frame_times(video)
        ours = our_frame_times(video)
        assert len(ours) == len(reference) > 0, video.name
        np.testing.assert_allclose(ours - ours[0], reference - reference[0], atol=1e-6)
