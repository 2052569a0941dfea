"""The one video reader, shared by extraction, training and evaluation.

Frames stream from an ffmpeg subprocess (:mod:`~distinit.pipeline.ffmpeg_command`) through a pipe
as raw RGB at a fixed size, a chunk at a time, so memory does not grow with video length.
Per-frame timestamps come from ffmpeg's ``showinfo`` filter on stderr (no ffprobe needed), read by
a thread (:mod:`~distinit.pipeline.ffmpeg_stderr`). Stage one keeps frames by
:mod:`~distinit.pipeline.fps_rule`; stage two reads them from the frame store
(``pipeline/framestore.py``), made from this same decode, or finds them again by their stored
timestamps (:mod:`~distinit.pipeline.timestamp_match`).
"""

from __future__ import annotations

import io
import logging
import os
import queue
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from distinit.pipeline.errors import MachineFaultError, VideoDecodeError
from distinit.pipeline.faults import killed_decoder, open_file_limit_in_text, resource_fault
from distinit.pipeline.ffmpeg_command import ffmpeg_command, stacked_size
from distinit.pipeline.ffmpeg_stderr import StderrState, VideoInfo, failure_reason, read_stderr
from distinit.pipeline.fps_rule import FpsSelector
from distinit.pipeline.frame_geometry import FrameGeometry

log = logging.getLogger(__name__)

TIMESTAMP_TIMEOUT = 60.0  # seconds a frame's showinfo line may lag behind its pixels


@dataclass
class FrameChunk:
    """Consecutive kept frames of one video."""

    frames: np.ndarray  # (N, H, W, 3) uint8 RGB, the first view
    times: np.ndarray  # (N,) float64 seconds from the first frame
    indices: np.ndarray  # (N,) int64 native frame index (decode order)
    extra_views: tuple[np.ndarray, ...] = ()  # (N, H_k, W_k, 3) uint8 per further geometry

    def __len__(self) -> int:
        return len(self.times)

    @property
    def views(self) -> tuple[np.ndarray, ...]:
        return (self.frames, *self.extra_views)


class VideoReader:
    """One ffmpeg process decoding one video; iterate to get :class:`FrameChunk` s.

    ``geometry`` may be a sequence of geometries: each chunk then carries one view per geometry
    (``chunk.views``), all from the same decoded frames. Use as a context manager (or call
    :meth:`close`) so the process is reaped even when the consumer stops early.

    A video's own fault (nothing decodes, no stream) raises :class:`VideoDecodeError`; ffmpeg
    ending early by itself keeps the frames with a :attr:`warning`; ffmpeg killed by a signal,
    out of file descriptors, or stalling raises :class:`MachineFaultError`: its frames are not
    the video's.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        geometry: FrameGeometry | Sequence[FrameGeometry],
        *,
        fps: float | None = None,
        chunk_size: int = 16,
        threads: int = 1,
        seek: float | None = None,
    ) -> None:
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise VideoDecodeError(self.path, "not a regular file")
        if os.path.getsize(self.path) == 0:
            raise VideoDecodeError(self.path, "empty file (0 bytes)")
        self.geometries = (geometry,) if isinstance(geometry, FrameGeometry) else tuple(geometry)
        if not self.geometries:
            raise ValueError("at least one frame geometry is needed")
        self.selector = FpsSelector(fps)
        self.chunk_size = chunk_size
        self.seek = seek if seek and seek > 0 else 0.0
        self._state = StderrState()
        self._proc = subprocess.Popen(
            ffmpeg_command(self.path, self.geometries, seek=seek, threads=threads),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        self._stderr_thread = threading.Thread(
            target=read_stderr, args=(self._proc.stderr, self._state), daemon=True
        )
        self._stderr_thread.start()
        self.frames_decoded = 0
        self.warning: str | None = None

    @property
    def info(self) -> VideoInfo:
        return self._state.info

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        # The process is gone, so stderr reaches EOF: let the reader thread finish first.
        self._stderr_thread.join(timeout=5)
        for pipe in (self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                pipe.close()

    def _read_frame(self, into: memoryview) -> bool:
        stdout = self._proc.stdout
        assert isinstance(stdout, io.RawIOBase)  # bufsize=0: readinto without a copy
        got = 0
        while got < len(into):
            n = stdout.readinto(into[got:])
            if not n:
                return False
            got += n
        return True

    def _frame_time(self) -> tuple[int, float]:
        try:
            item = self._state.pts.get(timeout=TIMESTAMP_TIMEOUT)
        except queue.Empty:  # the frame came, its stderr line did not: the machine stalls
            raise MachineFaultError(
                f"{self.path}: ffmpeg sent a frame but no timestamp for it within "
                f"{TIMESTAMP_TIMEOUT:.0f} s, a fault of the machine (overloaded), not of the "
                "video; run the same command again (extract redoes the video)"
            ) from None
        if item is None:
            raise VideoDecodeError(self.path, "ffmpeg produced a frame without timestamp info")
        index, pts = item
        tb = self._state.info.time_base
        seconds = float(pts * tb) if tb is not None else float("nan")
        return index, self.seek + seconds

    def __iter__(self) -> Iterator[FrameChunk]:
        width, height = stacked_size(self.geometries)
        buf = np.empty((self.chunk_size, height, width, 3), dtype=np.uint8)
        times = np.empty(self.chunk_size, dtype=np.float64)
        indices = np.empty(self.chunk_size, dtype=np.int64)
        filled = 0  # below chunk_size here: a full chunk is yielded as soon as it fills
        while True:
            target: np.ndarray = buf[filled]
            if not self._read_frame(memoryview(target).cast("B")):  # type: ignore[arg-type]
                break
            index, t = self._frame_time()
            self.frames_decoded += 1
            if not self.selector.keep(t):
                continue
            times[filled], indices[filled] = t, index
            filled += 1
            if filled == self.chunk_size:
                yield self._chunk(buf, times, indices, filled)
                filled = 0
        if filled:
            yield self._chunk(buf, times, indices, filled)
        returncode = self._proc.wait()
        self._stderr_thread.join(timeout=5)
        if returncode < 0:  # a signal (the OOM killer's SIGKILL) cut the output short
            raise killed_decoder(self.path, returncode, self.frames_decoded)
        code = open_file_limit_in_text(" | ".join(self._state.tail))
        if returncode != 0 and code is not None:
            raise resource_fault(code, f"{self.path}: ffmpeg")
        if self.frames_decoded == 0:
            raise VideoDecodeError(
                self.path, failure_reason(self.path, self._state.tail, returncode)
            )
        if returncode != 0:
            # Decoded as far as ffmpeg could: keep the frames, remember why it stopped.
            self.warning = failure_reason(self.path, self._state.tail, returncode)
            log.warning("%s: decoding stopped early: %s", self.path, self.warning)

    def _chunk(self, buf: np.ndarray, times: np.ndarray, indices: np.ndarray, n: int) -> FrameChunk:
        views = []
        top = 0
        for g in self.geometries:  # each view is a band of the stacked frame
            views.append(buf[:n, top : top + g.height, : g.width].copy())  # buf is reused
            top += g.height
        return FrameChunk(views[0], times[:n].copy(), indices[:n].copy(), tuple(views[1:]))


def iter_video(
    path: str | os.PathLike[str],
    geometry: FrameGeometry,
    *,
    fps: float | None = None,
    chunk_size: int = 16,
    threads: int = 1,
) -> Iterator[FrameChunk]:
    """Stage one's decode: every kept frame of a video from its start, in chunks."""
    with VideoReader(path, geometry, fps=fps, chunk_size=chunk_size, threads=threads) as reader:
        yield from reader


def native_frame_times(path: str | os.PathLike[str], *, threads: int = 1) -> np.ndarray:
    """The timestamp of every native frame of a video, ``(N,)`` float64 seconds: its frame index,
    from one decode that keeps no frame (they are scaled to 2x2 pixels on their way out).

    These are the times :func:`decode_at_times` matches, so frame ``i`` of this list is what
    ``decode_at_times(path, geometry, [times[i]])`` returns: a caller that knows them reads any
    frames by seeking instead of decoding the video from its start. Raises
    :class:`VideoDecodeError` when no frame decodes; a decode that stops early keeps what it got.
    """
    with VideoReader(path, FrameGeometry(2, 2), chunk_size=256, threads=threads) as reader:
        return np.concatenate([chunk.times for chunk in reader])
