"""An evaluation's source videos: each checked and indexed once, then read by seeking.

A clip needs ``clip_len`` frames, yet choosing them needs the video's frame count, and decoding a
whole video for every clip costs time and memory in proportion to the video, per item and per
epoch. So every video is decoded once, up front, keeping only its frames' timestamps
(:func:`distinit.pipeline.video.native_frame_times`); a clip's frames are then read by those
timestamps (:func:`distinit.pipeline.timestamp_match.decode_at_times`: a seek and the clip's
span, the path train's ``--frames source`` takes). Frame ``i`` is the video's ``i``-th decoded
frame either way, so clips hold the frames a whole decode would give them.

The up-front pass is also the check of every file: all that do not decode are reported together
(:func:`undecodable`), not one per run. The index lives in this process and is inherited by the
loader workers it forks; a worker that finds a video not indexed indexes it once itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from distinit.eval.splits import VideoItem
from distinit.pipeline.errors import DatasetError, VideoDecodeError
from distinit.pipeline.frame_geometry import FrameGeometry
from distinit.pipeline.timestamp_match import decode_at_times
from distinit.pipeline.video import native_frame_times

# (path, size, mtime) -> timestamps of every native frame: a file changed in place is indexed anew
_TIMES: dict[tuple[str, int, int], np.ndarray] = {}

FramesOf = Callable[[np.ndarray], np.ndarray]  # rows -> (k, H, W, 3) uint8


def _key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return os.fspath(path), stat.st_size, stat.st_mtime_ns


def frame_times(path: Path) -> np.ndarray:
    """The timestamps of every native frame of ``path`` (indexed once per process)."""
    try:
        key = _key(path)
    except OSError as exc:
        raise VideoDecodeError(os.fspath(path), f"cannot read ({exc.strerror})") from exc
    if key not in _TIMES:
        _TIMES[key] = native_frame_times(path)
    return _TIMES[key]


def undecodable(
    items: list[VideoItem],
    *,
    workers: int,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, str]:
    """Index every video of ``items`` (several ffmpeg processes at once); returns the ones that do
    not decode, ``{rel: reason}``, in the order given. ``progress(done, total)``."""
    unique = list({item.rel: item for item in items}.values())

    def index(item: VideoItem) -> str | None:
        try:
            frame_times(item.path)
        except VideoDecodeError as exc:
            return exc.reason
        return None

    failed: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for done, (item, reason) in enumerate(zip(unique, pool.map(index, unique), strict=True), 1):
            if reason is not None:
                failed[item.rel] = reason
            if progress is not None:
                progress(done, len(unique))
    return failed


def source_frames(item: VideoItem, resize: tuple[int, int]) -> tuple[int, FramesOf]:
    """A video's frame count and a function from rows to its ``(k, H, W, 3)`` frames at
    ``resize``, read by seeking to them; a failure names the video."""
    try:
        times = frame_times(item.path)
    except VideoDecodeError as exc:
        raise DatasetError(f"cannot decode {exc}") from exc
    geometry = FrameGeometry(*resize)

    def take(rows: np.ndarray) -> np.ndarray:
        try:
            return decode_at_times(item.path, geometry, times[np.asarray(rows)])
        except VideoDecodeError as exc:
            raise DatasetError(f"cannot decode {exc}") from exc

    return len(times), take
