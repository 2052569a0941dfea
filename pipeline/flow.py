"""Optical flow of a clip, the input of a flow student: decoded RGB frames -> scaled (dx, dy)
fields, one per frame.

Flow is computed in stage two (and by evaluation) from the very frames a clip is made of, at the
student's resolution, so flow field t lines up with frame t and therefore with the RGB teacher's
cached targets for frame t: stage one does not change for flow students. Part of the clip
contract (:mod:`distinit.pipeline.clip_rules`), which training and evaluation share.

Implementation: OpenCV's DIS (Kroeger et al., ECCV 2016) from ``opencv-python-headless``: a
maintained part of OpenCV's video module that runs on CPU and needs no model weights or GPU, so it
can run inside DataLoader workers.
"""

from __future__ import annotations

import cv2
import numpy as np

FLOW_CLIP = 20.0
"""Displacements are clipped to +-FLOW_CLIP pixels per frame, then divided by it: values lie in
[-1, 1]. 20 px is the bound used by the two-stream / I3D flow pipelines, kept so runs compare."""

FLOW_CHANNELS = 2
"""Channels of a flow field, in this order: dx (positive = rightwards), dy (positive = down)."""

DIS_PRESET = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
"""Why MEDIUM: ULTRAFAST and FAST stop refining at pyramid scale 2, i.e. on a 28x28 grid for a
112x112 student frame, which blurs motion boundaries and biases a known translation; MEDIUM
refines down to scale 1 (the tests check the flow of a moving texture against its velocity), and
its cost is small beside decoding the clip (``distinit bench train`` prints it)."""


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
    # A fresh DIS object per clip: creating one is cheap, and sharing one across threads is not
    # safe (it keeps per-call buffers).
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
