"""Stage one's frame-selection rule.

Without ``--fps`` every native frame from the start is kept; with it, the first native frame at
or after each point of the grid ``0, 1/fps, 2/fps, ...`` (a frame is never duplicated). Each kept
frame's timestamp and native index are stored, so stage two finds the same frames again.
"""

from __future__ import annotations

import math


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
