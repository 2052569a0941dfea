"""Optical flow for flow students: decoded RGB clips -> scaled (dx, dy) fields, and the
cross-modality initialisation of a flow student's first convolution from RGB weights.

Flow is computed here, in stage two, from the very frames the clip dataset decoded (at the
student's resolution), so flow field t lines up with frame t and therefore with the RGB teacher's
cached logits for frame t: stage one does not change for flow students.

Implementation: OpenCV's DIS (Kroeger et al., ECCV 2016) from ``opencv-python-headless``. DIS is
a maintained part of OpenCV's video module, runs on CPU in a few milliseconds per frame pair at
112 px, and needs no model weights or GPU, so it can run inside DataLoader workers. (Farneback,
the other OpenCV choice, was about twice as slow per 16-frame 112x112 clip on one core for
similar accuracy on a translating texture.)
"""

from __future__ import annotations

import time

import cv2
import numpy as np
import torch

FLOW_CLIP = 20.0
"""Displacements are clipped to +-FLOW_CLIP pixels per frame, then divided by it: values lie in
[-1, 1]. 20 px is the bound used by the two-stream / I3D flow pipelines, kept so runs compare."""

FLOW_CHANNELS = 2
"""Channels of a flow field, in this order: dx (positive = rightwards), dy (positive = down)."""

DIS_PRESET = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
"""Why MEDIUM: ULTRAFAST and FAST stop refining at pyramid scale 2, i.e. on a 28x28 grid for a
112x112 student frame, which blurs motion boundaries and biased a known (+2, -1) px/frame
translation by ~9% in dy in our measurement; MEDIUM refines down to scale 1 and was within 1%,
at ~17-25 ms per 16-frame 112x112 clip on one core, which is small beside decoding the clip."""


def set_flow_threads(threads: int) -> None:
    """Set how many threads OpenCV (and so DIS) may use in this process.

    OpenCV's default is one thread per core *in every process*. A DataLoader with N workers
    that each compute flow would then run N x cores threads, which oversubscribes the CPU and
    slows decoding down as well; call ``set_flow_threads(1)`` in the *parent* before the
    DataLoader forks its workers (:func:`distinit.train.clips.prepare_workers`), so they inherit
    it and the parallelism comes from the workers. Never call it in a forked worker (e.g. from
    ``worker_init_fn``): OpenCV's thread pool does not survive fork, and resizing it there joins
    threads that exist only in the parent, which hangs. The setting is process-wide (OpenCV has
    no per-call thread count), which is why it is a separate function rather than an argument of
    :func:`clip_to_flow`.
    """
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    cv2.setNumThreads(threads)


def clip_to_flow(frames: np.ndarray, *, clip: float = FLOW_CLIP) -> np.ndarray:
    """Optical flow of a decoded clip, one field per frame.

    ``frames`` is ``(T, H, W, 3)`` uint8 RGB at the student's resolution, ``T >= 2``; the result
    is ``(T, H, W, 2)`` float32 with channels (dx, dy) in pixels per frame, divided by ``clip``
    after clipping to ``[-clip, clip]``, so every value lies in ``[-1, 1]``.

    Rules:
      * Field t (t < T-1) is the forward flow from frame t to frame t+1, computed by DIS on the
        grayscale frames (ITU-R 601 luma, OpenCV's ``RGB2GRAY``): a point at (x, y) in frame t is
        at (x + dx, y + dy) in frame t+1.
      * The last frame has no successor in the clip, so field T-1 repeats field T-2. Repeating
        (rather than a backward flow from T-1 to T-2, negated) costs T-1 DIS calls instead of T
        and keeps every field a forward flow computed the same way.
      * A clip padded by repeating frames (short videos) gets zero flow on the repeated frames,
        which is what a static video looks like.

    Raises ``ValueError`` on a wrong shape or dtype or ``T < 2`` (one frame has no motion).
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected (T, H, W, 3) uint8 RGB, got {frames.dtype} {frames.shape}")
    t_len, height, width = frames.shape[:3]
    if t_len < 2:
        raise ValueError(f"flow needs at least 2 frames, got {t_len}")
    if clip <= 0:
        raise ValueError(f"clip must be positive, got {clip}")
    # A fresh DIS object per clip: creating one costs ~20 us, and sharing one across threads is
    # not safe (it keeps per-call buffers).
    dis = cv2.DISOpticalFlow.create(DIS_PRESET)  # = cv2.DISOpticalFlow_create, typed in stubs
    gray = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]
    out = np.zeros((t_len, height, width, FLOW_CHANNELS), dtype=np.float32)  # (T, H, W, 2)
    for t in range(t_len - 1):
        # out[t] is a contiguous (H, W, 2) float32 view, so DIS writes into it; its contents are
        # not used as an initial guess (DIS's useInitialFlow is off by default).
        out[t] = dis.calc(gray[t], gray[t + 1], out[t])
    out[t_len - 1] = out[t_len - 2]
    np.clip(out, -clip, clip, out=out)
    out /= np.float32(clip)
    return out


def flow_init_from_rgb(conv_weight: torch.Tensor, in_channels: int = FLOW_CHANNELS) -> torch.Tensor:
    """Cross-modality initialisation of a first convolution for a non-RGB input.

    ``conv_weight`` is an RGB filter bank ``(out, 3, kt, kh, kw)`` (or ``(out, 3, kh, kw)``);
    the result has ``in_channels`` input channels, each the mean of the RGB filters over the
    colour dimension (TSN's rule for flow networks initialised from ImageNet). The mean, not the
    sum, is replicated: so each input channel starts with the RGB filter's average response to
    one colour, whatever ``in_channels`` is. Returns a new tensor of the same dtype and device,
    detached from ``conv_weight``'s graph, ready for ``conv.weight.data.copy_`` in ``no_grad``.
    """
    if conv_weight.ndim < 3 or conv_weight.shape[1] != 3:
        raise ValueError(
            f"expected an RGB filter bank (out, 3, ...), got shape {tuple(conv_weight.shape)}"
        )
    if in_channels < 1:
        raise ValueError(f"in_channels must be at least 1, got {in_channels}")
    mean = conv_weight.detach().mean(dim=1, keepdim=True)  # (out, 1, kt, kh, kw)
    repeats = [1, in_channels] + [1] * (conv_weight.ndim - 2)
    return mean.repeat(*repeats).contiguous()  # (out, in_channels, kt, kh, kw)


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
        clip_to_flow(clip)  # warm-up: first call pays OpenCV's lazy initialisation
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            clip_to_flow(clip)
            times.append(time.perf_counter() - start)
    finally:
        cv2.setNumThreads(previous)
    return float(np.median(times))
