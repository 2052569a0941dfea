"""Progress for long commands: one line format, one ETA rule, for extract, train, eval.

On a terminal the line is rewritten in place; anywhere else (a log file, a batch job's output)
each update is a plain line, at most one every ``every`` seconds, so logs stay readable. The ETA
is the time left at the average rate so far, in the unit the work is counted in (frames for
extract, steps for train, epochs or videos for eval), so it is shown from the first report on.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO


def format_duration(seconds: float | None) -> str:
    """``H:MM:SS``; ``--:--`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "--:--"
    whole = int(max(0.0, seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def eta_seconds(done: float, total: float | None, elapsed: float) -> float | None:
    """Seconds left to reach ``total`` at the average rate so far; None before there is a rate."""
    if total is None or done <= 0 or elapsed <= 0:
        return None
    return max(0.0, elapsed / done * (total - done))


def expected_frames(duration: float, native_fps: float, fps: float | None) -> int | None:
    """Frames a video will yield: duration x frame rate (``fps`` caps it, never raises it).

    Known as soon as the decoder has read the stream header; None when the container does not
    say (then the video counts as an average one until it is done).
    """
    rate = native_fps if fps is None else min(fps, native_fps) if native_fps > 0 else fps
    if not (math.isfinite(duration) and math.isfinite(rate)) or duration <= 0 or rate <= 0:
        return None
    return max(1, round(duration * rate))


class FrameCount:
    """Extract's work measured in frames across videos that open one after another.

    Each video's frame count is expected (:func:`expected_frames`) when it opens and replaced by
    the true count when it ends; videos not opened yet count as the mean of the known ones. So the
    ETA does not grow while a long video is last, and exists from the first decoded frames.
    """

    def __init__(self, videos: int) -> None:
        self.videos = videos
        self._frames: dict[str, int] = {}  # expected, then actual, frames per opened video

    def opened(self, video_id: str, expected: int | None) -> None:
        if expected is not None:
            self._frames.setdefault(video_id, expected)

    def finished(self, video_id: str, frames: int) -> None:
        self._frames[video_id] = frames

    def total(self) -> float | None:
        """Expected frames of all videos; None while no video's count is known."""
        if not self._frames:
            return None
        known = sum(self._frames.values())
        return known + known / len(self._frames) * max(0, self.videos - len(self._frames))


class ProgressLine:
    """One progress line on ``stream`` (stderr by default): in place on a TTY, else plain lines.

    ``every`` is the least time between plain lines (a terminal line is cheap to rewrite and is
    redrawn at most every 0.2 s); ``final=True`` forces the update through. ``quiet_for``: no
    line in the first seconds, so work that ends quickly prints only its result.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        every: float = 5.0,
        tty: bool | None = None,
        quiet_for: float = 0.0,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every = 0.2 if self.tty else every
        self._last = -math.inf
        self._quiet_until = time.monotonic() + quiet_for
        self._open = False  # a TTY line is drawn and not yet ended
        self._gone = False  # the stream broke (a closed pipe): progress is no longer shown

    def update(self, text: str, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and (now - self._last < self.every or now < self._quiet_until):
            return
        self._last = now
        if self.tty:
            self._write("\r\x1b[K" + text)
            self._open = True
        else:
            self._write(text + "\n")

    def close(self) -> None:
        """End an in-place line, so what is printed next starts on a line of its own."""
        if self._open:
            self._write("\n")
            self._open = False

    def __enter__(self) -> ProgressLine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()  # also when the work raised: its error starts on a line of its own

    def _write(self, text: str) -> None:
        # A progress line is never worth a run: `cmd | tee log` loses its reader on the same
        # Ctrl-C that asks the run to save and stop, and the save must still happen.
        if self._gone:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except OSError:
            self._gone = True
