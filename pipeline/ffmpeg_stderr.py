"""What ffmpeg says on stderr while it decodes: each frame's timestamp (from ``showinfo``), the
stream's size, frame rate, duration and rotation, and the reason a decode failed.

Read by a thread (:func:`read_stderr`) so neither of ffmpeg's pipes can fill up. Timestamps are
seconds from the stream's first frame as ffmpeg normalises them (``start_time`` removed), which is
what a decode with or without seeking reports.
"""

from __future__ import annotations

import queue
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

_SHOWINFO = re.compile(r"\bn:\s*(\d+)\s+pts:\s*(-?\d+)\s+pts_time:(\S+)")
_TIME_BASE = re.compile(r"config in time_base:\s*(\d+)/(\d+)")
_DURATION = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_STREAM = re.compile(r"Stream #0:\d+.*?: Video: .*?, (\d{1,5})x(\d{1,5})(?=[\s,\[]|$)")
_FPS = re.compile(r"([\d.]+)\s+fps")
# "displaymatrix: rotation of -90.00 degrees" (ffmpeg 5/6), "Display Matrix: ..." (7 and later)
_ROTATION = re.compile(r"display\s*matrix: rotation of (-?[\d.]+) degrees", re.IGNORECASE)
# Stderr lines that explain a failure better than the generic last line does.
_NOISE = ("Parsed_showinfo", "color_range", "Press [q]", "frame=", "video:", "Metadata", "encoder")


@dataclass
class VideoInfo:
    """What ffmpeg reported about the source stream (filled in while decoding)."""

    width: int = 0
    height: int = 0
    fps: float = float("nan")
    duration: float = float("nan")
    time_base: Fraction | None = None


@dataclass
class StderrState:
    info: VideoInfo = field(default_factory=VideoInfo)
    pts: queue.Queue[tuple[int, int] | None] = field(default_factory=queue.Queue)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=12))
    rotation_seen: bool = False  # only the first video stream's display matrix counts


def read_stderr(pipe: object, state: StderrState) -> None:
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


def failure_reason(path: str, tail: Sequence[str], returncode: int | None) -> str:
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
