"""What computing flow costs per clip, measured on a synthetic moving texture (for ``distinit bench
train``; the tests check the flow of the same texture against its known velocity)."""

from __future__ import annotations

import time

import cv2
import numpy as np

from distinit.pipeline import flow
from distinit.pipeline.flow import set_flow_threads


def moving_texture(
    frames: int,
    size: tuple[int, int],
    velocity: tuple[int, int],
    *,
    seed: int = 0,
) -> np.ndarray:
    """A ``(frames, H, W, 3)`` uint8 grey texture translating by ``velocity`` = (vx, vy) whole
    pixels per frame (x right, y down): content at (x, y) in frame t is at (x+vx, y+vy) in t+1.

    Smoothed noise rather than white noise, so the pattern survives chroma subsampling and
    lossy encoding and has gradients at every scale DIS looks at. Used by the benchmark and the
    tests, which check the flow against ``velocity``.
    """
    height, width = size
    vx, vy = velocity
    pad_x, pad_y = abs(vx) * frames, abs(vy) * frames
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (height + 2 * pad_y, width + 2 * pad_x), dtype=np.uint8)
    blurred = cv2.GaussianBlur(noise, (0, 0), 1.5).astype(np.float32)
    # Stretch back to the full 0..255 range that blurring narrowed: strong gradients to track.
    low, high = float(blurred.min()), float(blurred.max())
    texture = np.round((blurred - low) * (255.0 / max(high - low, 1.0))).astype(np.uint8)
    clip = np.empty((frames, height, width, 3), dtype=np.uint8)  # (T, H, W, 3)
    for t in range(frames):
        # frame_t[y, x] = texture[y - vy*t + pad_y, x - vx*t + pad_x]
        y0, x0 = pad_y - vy * t, pad_x - vx * t
        clip[t] = texture[y0 : y0 + height, x0 : x0 + width, None]
    return clip


def flow_cost_per_clip(
    clip_len: int = 16,
    size: tuple[int, int] = (112, 112),
    repeats: int = 5,
    *,
    threads: int = 1,
) -> float:
    """Seconds of CPU wall time :func:`clip_to_flow` takes per clip of ``clip_len`` frames of
    ``size`` = (height, width), median of ``repeats`` runs after one warm-up.

    Measured with ``threads`` OpenCV threads (default 1: the cost inside one DataLoader worker,
    which is what the data-loader benchmark compares with RGB decoding); the process's previous
    OpenCV thread count is restored afterwards. The clip is a moving texture, so DIS does real
    work at every pyramid level.
    """
    if clip_len < 2 or repeats < 1:
        raise ValueError("clip_len must be at least 2 and repeats at least 1")
    clip = moving_texture(clip_len, size, (2, -1))
    previous = cv2.getNumThreads()
    set_flow_threads(threads)
    try:
        flow.clip_to_flow(clip)  # warm-up: first call pays OpenCV's lazy initialisation
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            flow.clip_to_flow(clip)
            times.append(time.perf_counter() - start)
    finally:
        cv2.setNumThreads(previous)
    return float(np.median(times))
