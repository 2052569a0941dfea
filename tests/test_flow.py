"""Optical flow for flow students: known motion through the real encoder and decoder, the
clip-to-flow rules (shape, scaling, last field), OpenCV threads, and the cross-modality init."""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from distinit.eval.inflate import flow_init_from_rgb
from distinit.pipeline.flow import FLOW_CHANNELS, FLOW_CLIP, clip_to_flow, set_flow_threads
from distinit.pipeline.frame_geometry import FrameGeometry
from distinit.pipeline.video import iter_video
from distinit.train.flow_cost import flow_cost_per_clip, moving_texture
from tests.videogen import generator_ffmpeg

VELOCITY = (2, -1)  # px/frame: rightwards and up
SIZE = (112, 112)  # (H, W), the students' resolution
MARGIN = 16  # interior only: near the border, texture enters and leaves the frame
TOLERANCE = 0.15  # relative error allowed on the mean flow's magnitude
ANGLE_TOLERANCE_DEG = 5.0  # allowed error on the mean flow's direction


def _encode(frames: np.ndarray, path: Path, fps: int = 25) -> Path:
    """H.264 / yuv420p at a moderate quality: the student sees decoded, lossy frames."""
    t_len, height, width = frames.shape[:3]
    cmd = [
        generator_ffmpeg(), "-nostdin", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps),
        "-i", "-", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18", str(path),
    ]  # fmt: skip
    subprocess.run(cmd, input=frames.tobytes(), check=True)
    return path


def _interior_mean_px(flow: np.ndarray) -> np.ndarray:
    """Mean (dx, dy) in pixels over the interior of every field of a (T, H, W, 2) flow."""
    return flow[:, MARGIN:-MARGIN, MARGIN:-MARGIN].reshape(-1, 2).mean(axis=0) * FLOW_CLIP


def assert_matches_velocity(mean_px: np.ndarray, velocity: tuple[float, float]) -> None:
    """Direction within ANGLE_TOLERANCE_DEG and magnitude within TOLERANCE of ``velocity``."""
    truth = np.asarray(velocity, dtype=np.float64)
    magnitude_error = abs(np.linalg.norm(mean_px) - np.linalg.norm(truth)) / np.linalg.norm(truth)
    # Signed angle between the two vectors, in (-180, 180]: no wrap-around at +-180 degrees.
    cross = truth[0] * mean_px[1] - truth[1] * mean_px[0]
    angle = math.degrees(math.atan2(cross, float(np.dot(truth, mean_px))))
    assert magnitude_error < TOLERANCE, (mean_px, truth)
    assert abs(angle) < ANGLE_TOLERANCE_DEG, (mean_px, truth)


def test_moving_texture_moves_as_stated() -> None:
    clip = moving_texture(4, (32, 40), VELOCITY)
    vx, vy = VELOCITY
    # A point at (x, y) in frame t is at (x + vx, y + vy) in frame t + 1.
    assert np.array_equal(clip[1, 5 + vy : 25 + vy, 5 + vx : 30 + vx], clip[0, 5:25, 5:30])


def test_known_motion_through_encoder_and_decoder(tmp_path: Path) -> None:
    """The flow a student sees for a texture moving (+2, -1) px/frame, after H.264 and our
    decoder, has that direction and magnitude within the stated tolerances."""
    height, width = SIZE
    video = _encode(moving_texture(16, SIZE, VELOCITY), tmp_path / "moving.mp4")
    decoded = np.concatenate(
        [chunk.frames for chunk in iter_video(video, FrameGeometry(width, height))]
    )
    assert decoded.shape == (16, height, width, 3)
    flow = clip_to_flow(decoded)
    assert_matches_velocity(_interior_mean_px(flow), VELOCITY)
    # Every field, not just the clip mean, sees the motion (no field lost or misaligned).
    for field in flow:
        assert_matches_velocity(_interior_mean_px(field[None]), VELOCITY)


@pytest.mark.parametrize("velocity", [(0, 3), (-3, 0), (1, 1)])
def test_other_directions_on_raw_frames(velocity: tuple[int, int]) -> None:
    flow = clip_to_flow(moving_texture(6, SIZE, velocity))
    assert_matches_velocity(_interior_mean_px(flow), velocity)


def test_shape_dtype_range_and_last_field_rule() -> None:
    clip = moving_texture(8, (64, 80), VELOCITY)
    flow = clip_to_flow(clip)
    assert flow.shape == (8, 64, 80, FLOW_CHANNELS)
    assert flow.dtype == np.float32
    assert flow.min() >= -1.0 and flow.max() <= 1.0
    # T frames give T fields: the last repeats the flow from frame T-2 to T-1.
    assert np.array_equal(flow[-1], flow[-2])


def test_scaling_clips_at_flow_clip() -> None:
    # With a clip bound of 1 px, a 2 px/frame motion saturates at +1 and -1 px at -1.
    flow = clip_to_flow(moving_texture(4, SIZE, VELOCITY), clip=1.0)
    interior = flow[:, MARGIN:-MARGIN, MARGIN:-MARGIN]
    assert interior.min() >= -1.0 and interior.max() <= 1.0
    assert np.median(interior[..., 0]) == pytest.approx(1.0)
    # Unsaturated values are scaled by the bound: dy of -1 px over a 20 px bound is about -0.05.
    default = clip_to_flow(moving_texture(4, SIZE, VELOCITY))
    assert np.median(default[:, MARGIN:-MARGIN, MARGIN:-MARGIN, 1]) == pytest.approx(
        -1.0 / FLOW_CLIP, rel=TOLERANCE
    )


def test_static_and_padded_clips_give_zero_flow() -> None:
    frame = moving_texture(1, (48, 48), (0, 0))
    flow = clip_to_flow(np.repeat(frame, 5, axis=0))
    assert np.abs(flow).max() < 1e-3


@pytest.mark.parametrize(
    "frames",
    [
        np.zeros((1, 16, 16, 3), np.uint8),  # one frame has no motion
        np.zeros((4, 16, 16, 3), np.float32),  # not uint8
        np.zeros((4, 16, 16), np.uint8),  # not RGB
        np.zeros((4, 16, 16, 2), np.uint8),
    ],
)
def test_rejects_bad_input(frames: np.ndarray) -> None:
    with pytest.raises(ValueError):
        clip_to_flow(frames)


def test_set_flow_threads() -> None:
    previous = cv2.getNumThreads()
    try:
        set_flow_threads(1)
        assert cv2.getNumThreads() == 1
        with pytest.raises(ValueError):
            set_flow_threads(0)
    finally:
        cv2.setNumThreads(previous)


def test_flow_init_averages_colour_filters() -> None:
    torch.manual_seed(0)
    rgb = torch.randn(8, 3, 3, 7, 7, requires_grad=True)
    flow = flow_init_from_rgb(rgb)
    assert flow.shape == (8, 2, 3, 7, 7)
    assert flow.dtype == rgb.dtype and not flow.requires_grad
    mean = rgb.detach().mean(dim=1)
    for c in range(2):
        assert torch.equal(flow[:, c], mean)
    assert flow_init_from_rgb(rgb, in_channels=5).shape == (8, 5, 3, 7, 7)
    assert flow_init_from_rgb(torch.randn(4, 3, 5, 5)).shape == (4, 2, 5, 5)  # 2D filters too


def test_flow_init_response_matches_rgb_on_grey_input() -> None:
    """A flow input equal to x in both channels gets 2/3 of the RGB conv's response to the grey
    image (x, x, x): both see the colour-mean filter, summed over 2 vs 3 channels."""
    torch.manual_seed(1)
    rgb_conv = torch.nn.Conv3d(3, 4, (3, 5, 5), padding=(1, 2, 2), bias=False)
    flow_conv = torch.nn.Conv3d(2, 4, (3, 5, 5), padding=(1, 2, 2), bias=False)
    with torch.no_grad():
        flow_conv.weight.copy_(flow_init_from_rgb(rgb_conv.weight))
        x = torch.randn(1, 1, 4, 12, 12)  # (B, 1, T, H, W)
        grey = rgb_conv(x.expand(1, 3, 4, 12, 12))
        flow = flow_conv(x.expand(1, 2, 4, 12, 12))
    torch.testing.assert_close(flow, grey * (2 / 3), rtol=1e-5, atol=1e-5)


def test_flow_init_rejects_non_rgb() -> None:
    with pytest.raises(ValueError):
        flow_init_from_rgb(torch.zeros(4, 2, 3, 3, 3))


def test_flow_cost_per_clip_is_the_median_call_at_the_asked_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The figure is the median wall time of one clip_to_flow call on a clip of the asked shape,
    measured with the asked OpenCV threads; the caller's thread count comes back afterwards."""
    import distinit.pipeline.flow as flow

    durations = iter([0.05, 0.01, 0.10, 0.60])  # the warm-up call, then three timed ones
    seen: list[tuple[tuple[int, ...], int]] = []

    def timed_clip_to_flow(clip: np.ndarray) -> np.ndarray:
        seen.append((clip.shape, cv2.getNumThreads()))
        time.sleep(next(durations))
        return real(clip)

    real = flow.clip_to_flow
    monkeypatch.setattr(flow, "clip_to_flow", timed_clip_to_flow)
    previous = cv2.getNumThreads()
    try:
        cv2.setNumThreads(3)  # not the measuring count, so a missing restore shows
        cost = flow_cost_per_clip(clip_len=4, size=(32, 48), repeats=3, threads=1)
        assert cv2.getNumThreads() == 3
    finally:
        cv2.setNumThreads(previous)
    assert seen == [((4, 32, 48, 3), 1)] * 4
    # The median of 0.01, 0.10, 0.60 (their mean is 0.237): wide margins for a loaded machine.
    assert 0.10 <= cost < 0.237
