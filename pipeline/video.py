"""The one video decoder, shared by extraction, training and evaluation.

Frames stream from an ffmpeg subprocess through a pipe as raw RGB at a fixed size, a chunk at a
time, so memory does not grow with video length. Per-frame timestamps come from ffmpeg's
``showinfo`` filter on stderr (no ffprobe needed), read by a thread so neither pipe can fill up.

Frame-selection rule (both stages):

* Stage one decodes every native frame from the start and keeps all of them, or with ``fps`` the
  first native frame at or after each point of the grid ``0, 1/fps, 2/fps, ...`` (a frame is
  never duplicated). It stores each kept frame's timestamp and native index.
* Stage two reads a clip's rows from the frame store (``pipeline/framestore.py``), made from this
  same decode. Shards without a store fall back to :func:`decode_at_times`, which finds frames
  *by their stored timestamps*: each wanted time is matched to the nearest decoded native frame,
  and the match must be closer than half the native frame period around it, so at any frame rate
  (24 to 120 fps, or variable) a clip is made of exactly the frames whose targets were cached.

One decode can produce several *views* of every frame (e.g. the teacher's crop and the student's
whole resized frame): ffmpeg splits the decoded frame, scales each branch, pads them to one width
and stacks them vertically, so all views travel through one pipe in one process.

Timestamps are seconds from the stream's first frame as ffmpeg normalises them (``start_time``
removed), which is what a decode with or without seeking reports.
"""

from __future__ import annotations

import io
import logging
import math
import os
import queue
import re
import subprocess
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import ffmpeg
import numpy as np

from distinit.pipeline.errors import ConfigError, MachineFaultError, VideoDecodeError
from distinit.pipeline.faults import killed_decoder, open_file_limit_in_text, resource_fault
from distinit.pipeline.ffmpeg_binary import ffmpeg_binary

log = logging.getLogger(__name__)

_SHOWINFO = re.compile(r"\bn:\s*(\d+)\s+pts:\s*(-?\d+)\s+pts_time:(\S+)")
_TIME_BASE = re.compile(r"config in time_base:\s*(\d+)/(\d+)")
_DURATION = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_STREAM = re.compile(r"Stream #0:\d+.*?: Video: .*?, (\d{1,5})x(\d{1,5})(?=[\s,\[]|$)")
_FPS = re.compile(r"([\d.]+)\s+fps")
# "displaymatrix: rotation of -90.00 degrees" (ffmpeg 5/6), "Display Matrix: ..." (7 and later)
_ROTATION = re.compile(r"display\s*matrix: rotation of (-?[\d.]+) degrees", re.IGNORECASE)
TIMESTAMP_TIMEOUT = 60.0  # seconds a frame's showinfo line may lag behind its pixels
# Stderr lines that explain a failure better than the generic last line does.
_NOISE = ("Parsed_showinfo", "color_range", "Press [q]", "frame=", "video:", "Metadata", "encoder")


def format_size(size: tuple[int, ...]) -> str:
    """``(171, 128)`` -> ``171x128``: sizes in messages, as the CLI takes them (a malformed
    size of another length still prints, e.g. ``171``)."""
    return "x".join(map(str, size))


def parse_size(text: str) -> tuple[int, int]:
    """``171x128`` -> ``(171, 128)`` (width, height): how frame sizes are written on the CLI."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise ConfigError(f"size must look like 171x128 (width x height), got {text!r}")
    return int(m.group(1)), int(m.group(2))


# The resampling filters a frame may be resized with, by their ffmpeg and torch name.
INTERPOLATIONS = ("bilinear", "bicubic")


@dataclass(frozen=True)
class FrameGeometry:
    """Output size of decoded frames, and how the source is fitted into it.

    ``resize_shorter=None`` stretches the source to ``width`` x ``height`` (the video-ResNet
    convention of 171x128); otherwise the shorter side is scaled to ``resize_shorter`` keeping the
    aspect ratio and the centre ``width`` x ``height`` is cropped (the ImageNet eval transform).
    ``interpolation`` is ffmpeg's scaler: a teacher's decode uses the teacher's own.
    """

    width: int
    height: int
    resize_shorter: int | None = None
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ValueError(f"frame size must be positive, got {self.width}x{self.height}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                f"got {self.interpolation!r}"
            )
        if self.resize_shorter is not None and self.resize_shorter < max(self.width, self.height):
            raise ValueError("resize_shorter must be at least the crop size")

    @property
    def frame_bytes(self) -> int:
        return self.width * self.height * 3

    def describe(self) -> str:
        if self.resize_shorter is None:
            return f"resize to {self.width}x{self.height} ({self.interpolation})"
        return (
            f"resize shorter side to {self.resize_shorter} ({self.interpolation}), "
            f"centre crop {self.width}x{self.height}"
        )


@dataclass
class VideoInfo:
    """What ffmpeg reported about the source stream (filled in while decoding)."""

    width: int = 0
    height: int = 0
    fps: float = float("nan")
    duration: float = float("nan")
    time_base: Fraction | None = None


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


def _stacked_size(geometries: Sequence[FrameGeometry]) -> tuple[int, int]:
    """(width, height) of the frame that carries every view, stacked top to bottom."""
    return max(g.width for g in geometries), sum(g.height for g in geometries)


@dataclass
class _StderrState:
    info: VideoInfo = field(default_factory=VideoInfo)
    pts: queue.Queue[tuple[int, int] | None] = field(default_factory=queue.Queue)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=12))
    rotation_seen: bool = False  # only the first video stream's display matrix counts


class FpsSelector:
    """Stage one's ``--fps`` rule: the first native frame at or after each grid point ``n/fps``."""

    def __init__(self, fps: float | None) -> None:
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps = fps
        self._next = -math.inf

    def keep(self, time: float) -> bool:
        if self.fps is None:
            return True
        if time < self._next - 1e-6:
            return False
        self._next = (math.floor(time * self.fps + 1e-6) + 1) / self.fps
        return True


def _fit(stream: Any, geometry: FrameGeometry) -> Any:
    """The filters that fit a decoded frame into ``geometry``."""
    flags = geometry.interpolation  # ffmpeg's swscale names them as we do
    if geometry.resize_shorter is None:
        return stream.filter("scale", geometry.width, geometry.height, flags=flags)
    side = geometry.resize_shorter
    stream = stream.filter("scale", side, side, force_original_aspect_ratio="increase", flags=flags)
    return stream.filter("crop", geometry.width, geometry.height)


def _ffmpeg_command(
    path: str, geometries: Sequence[FrameGeometry], *, seek: float | None, threads: int
) -> list[str]:
    input_args: dict[str, object] = {"threads": threads}
    if seek is not None and seek > 0:
        input_args["ss"] = f"{seek:.6f}"
    # "file:" keeps names with colons or leading dashes from being read as protocols or options.
    stream = ffmpeg.input("file:" + os.path.abspath(path), **input_args)["v:0"]
    stream = stream.filter("showinfo", checksum=0)
    if len(geometries) == 1:
        stream = _fit(stream, geometries[0])
    else:
        # Scale each branch in the decoder's pixel format (as a single view is), then go to RGB
        # so views of odd widths pad and stack losslessly.
        width, _ = _stacked_size(geometries)
        split = stream.split()
        branches = []
        for k, g in enumerate(geometries):
            branch = _fit(split[k], g).filter("format", "rgb24")
            if g.width < width:
                branch = branch.filter("pad", width, g.height, 0, 0)
            branches.append(branch)
        stream = ffmpeg.filter(branches, "vstack", inputs=len(branches))
    out = stream.output(
        "pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough"
    ).global_args("-nostdin", "-hide_banner", "-loglevel", "info")
    return list(out.compile(cmd=ffmpeg_binary()))


def _read_stderr(pipe: object, state: _StderrState) -> None:
    in_input_section = True
    for raw in iter(pipe.readline, b""):  # type: ignore[attr-defined]
        line = raw.decode("utf-8", "replace").rstrip()
        m = _SHOWINFO.search(line)
        if m:
            state.pts.put((int(m.group(1)), int(m.group(2))))
            continue
        m = _TIME_BASE.search(line)
        if m and state.info.time_base is None:
            state.info.time_base = Fraction(int(m.group(1)), int(m.group(2)))
            continue
        if line.startswith(("Output #", "Stream mapping")):
            in_input_section = False
        if in_input_section:
            m = _DURATION.search(line)
            if m:
                h, mnt, s = m.groups()
                state.info.duration = int(h) * 3600 + int(mnt) * 60 + float(s)
            m = _STREAM.search(line)
            if m and not state.info.width:
                state.info.width, state.info.height = int(m.group(1)), int(m.group(2))
                fps = _FPS.search(line)
                if fps:
                    state.info.fps = float(fps.group(1))
            m = _ROTATION.search(line)
            if m and state.info.width and not state.rotation_seen:
                state.rotation_seen = True
                if round(float(m.group(1))) % 180 == 90:
                    # ffmpeg turns the frames upright (autorotate): report the displayed size.
                    state.info.width, state.info.height = state.info.height, state.info.width
        if line.strip() and not any(n in line for n in _NOISE):
            state.tail.append(line.strip())
    state.pts.put(None)


def _failure_reason(path: str, tail: Sequence[str], returncode: int | None) -> str:
    text = " | ".join(tail)
    if "moov atom not found" in text:
        with open(path, "rb") as fh:
            is_mp4 = fh.read(12)[4:8] == b"ftyp"
        return (
            "truncated or damaged MP4 (moov atom not found)"
            if is_mp4
            else "not a video file (ffmpeg found no container it knows)"
        )
    for needle, reason in (
        ("matches no streams", "no video stream"),
        ("Invalid data found", "not a decodable video (invalid data)"),
        ("No such file", "file not found"),
        ("Permission denied", "permission denied"),
        ("does not contain any stream", "no video stream"),
    ):
        if needle in text:
            return reason
    if tail:
        return f"ffmpeg failed: {tail[-1][:200]}"
    return f"ffmpeg exited with status {returncode}"


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
        self._state = _StderrState()
        self._proc = subprocess.Popen(
            _ffmpeg_command(self.path, self.geometries, seek=seek, threads=threads),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        self._stderr_thread = threading.Thread(
            target=_read_stderr, args=(self._proc.stderr, self._state), daemon=True
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
        width, height = _stacked_size(self.geometries)
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
                self.path, _failure_reason(self.path, self._state.tail, returncode)
            )
        if returncode != 0:
            # Decoded as far as ffmpeg could: keep the frames, remember why it stopped.
            self.warning = _failure_reason(self.path, self._state.tail, returncode)
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
    with VideoReader(path, geometry, chunk_size=8, threads=threads, seek=seek) as reader:
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
