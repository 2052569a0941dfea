"""Frames found again by their stored timestamps: the source path of shards without a frame
store, and of evaluation without one.

Each wanted time is matched to the nearest decoded native frame, and the match must be closer
than half the native frame period around it, so at any frame rate (24 to 120 fps, or variable) a
clip is made of exactly the frames whose targets were cached.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence

import numpy as np

from distinit.pipeline import video
from distinit.pipeline.errors import VideoDecodeError
from distinit.pipeline.frame_geometry import FrameGeometry

log = logging.getLogger(__name__)

# Wanted times further apart than this are read by separate seeks: decoding through a shorter
# gap costs less than a new ffmpeg process and its seek, which decodes from the keyframe before
# the target (several seconds back in long-GOP files) on top of the one-second margin.
SEEK_GAP_S = 10.0


def decode_at_times(
    path: str | os.PathLike[str],
    geometry: FrameGeometry,
    times: Sequence[float],
    *,
    threads: int = 1,
    seek_margin: float = 1.0,
) -> np.ndarray:
    """Decode the frames whose stage-one timestamps are ``times`` (any order, may repeat).

    Returns ``(len(times), H, W, 3)`` uint8. Each wanted time takes the *nearest* decoded native
    frame, which must lie closer than half the native frame period around it (the gaps to its
    decoded neighbours): the rule holds at any frame rate, variable ones included, and whatever
    subset of rows is asked for. Times within :data:`SEEK_GAP_S` of each other form one span;
    each span is one decode that seeks to just before its first time and stops two frames after
    its last, so what is decoded grows with the spans asked for, not with the video. If a seek
    landed badly (some containers, e.g. MPEG-TS, seek only to keyframes after the target), that
    span is decoded again from the start, which is always exact. Raises if a time has no such
    frame.
    """
    wanted = np.asarray(times, dtype=np.float64)
    if wanted.ndim != 1 or len(wanted) == 0:
        raise ValueError("times must be a non-empty 1-D sequence")
    unique = np.unique(wanted)
    spans = np.split(unique, np.flatnonzero(np.diff(unique) > SEEK_GAP_S) + 1)
    found = np.concatenate(
        [_decode_span(path, geometry, span, threads, seek_margin) for span in spans]
    )
    return found[np.searchsorted(unique, wanted)]


def _decode_span(
    path: str | os.PathLike[str],
    geometry: FrameGeometry,
    unique: np.ndarray,
    threads: int,
    seek_margin: float,
) -> np.ndarray:
    """The frames of ``unique`` (ascending, distinct times of one span), seeking to the span."""
    start = float(unique[0]) - seek_margin
    for seek in ((start,) if start > 0 else ()) + (None,):
        found = _collect(path, geometry, unique, seek=seek, threads=threads)
        if found is not None:
            return found
        log.debug("%s: seek to %.3fs missed frames; decoding from the start", path, start)
    missing = ", ".join(f"{t:.3f}" for t in unique[:5])
    raise VideoDecodeError(os.fspath(path), f"frames at t={missing}s not found when decoding")


def _collect(
    path: str | os.PathLike[str],
    geometry: FrameGeometry,
    unique: np.ndarray,
    *,
    seek: float | None,
    threads: int,
) -> np.ndarray | None:
    """Nearest decoded frame for each of ``unique``; None if one has no frame within half a
    native period (a seek that skipped frames, or a time that is not a frame of this video)."""
    out = np.empty((len(unique), geometry.height, geometry.width, 3), dtype=np.uint8)
    best = np.full(len(unique), np.inf)  # distance of the frame now in out[k]
    best_time = np.full(len(unique), np.nan)
    decoded: list[float] = []  # every decoded time: the native periods around a match
    last = float(unique[-1])
    after_last = 0
    with video.VideoReader(path, geometry, chunk_size=8, threads=threads, seek=seek) as reader:
        for chunk in reader:
            decoded.extend(chunk.times.tolist())
            pos = np.searchsorted(unique, chunk.times)
            for j, t in enumerate(chunk.times):
                for k in (pos[j] - 1, pos[j]):
                    if 0 <= k < len(unique) and abs(unique[k] - t) < best[k]:
                        out[k] = chunk.frames[j]
                        best[k], best_time[k] = abs(unique[k] - t), t
            # Two frames past the last wanted time settle its nearest frame and that frame's period.
            after_last += int((chunk.times > last).sum())
            if after_last >= 2:
                break
    if not decoded or not np.isfinite(best).all():
        return None
    stream = np.sort(np.asarray(decoded))
    for k in range(len(unique)):
        i = int(np.searchsorted(stream, best_time[k]))
        gaps = [stream[i] - stream[i - 1]] if i > 0 else []
        if i + 1 < len(stream):
            gaps.append(stream[i + 1] - stream[i])
        if i == 0 and seek is not None:
            return None  # the seek may have skipped the frame that was wanted
        half_period = 0.5 * min(gaps) if gaps else math.inf
        if best[k] >= max(half_period, 1e-6):
            return None
    return out
