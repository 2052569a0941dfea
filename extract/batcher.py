"""Frames of any videos packed into fixed-size teacher batches.

Short videos never make small batches: a batch takes frames from whichever videos are being
decoded, and each row's quantised targets go back to the video that owns it, in its row order.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from distinit.extract.inference import TeacherRunner
from distinit.pipeline.shards import Targets, quantize


class RowOwner(Protocol):
    """A video whose frames wait in a batch."""

    rows_in_batch: int

    def take_targets(self, targets: Targets, finite: bool) -> None:
        """The next of its rows' targets; ``finite`` is False when any of them is not finite."""


class TeacherBatcher:
    """Fills a batch of ``batch_size`` frames and runs the teachers on it when it is full (or
    when :meth:`flush` is called)."""

    def __init__(self, runner: TeacherRunner, batch_size: int) -> None:
        g = runner.geometry
        self.runner = runner
        self.batch = np.empty((batch_size, g.height, g.width, 3), dtype=np.uint8)
        self.filled = 0
        self.owners: list[tuple[RowOwner, int]] = []  # (video, rows) runs in batch order

    def add(self, owner: RowOwner, frames: np.ndarray) -> bool:
        """Queue ``frames`` of ``owner``; True when a full batch ran (owners took targets)."""
        ran, start = False, 0
        while start < len(frames):
            take = min(len(self.batch) - self.filled, len(frames) - start)
            self.batch[self.filled : self.filled + take] = frames[start : start + take]
            self.owners.append((owner, take))
            owner.rows_in_batch += take
            self.filled += take
            start += take
            if self.filled == len(self.batch):
                self.flush()
                ran = True
        return ran

    def flush(self) -> None:
        """Run the teachers on the frames queued so far and hand each owner its rows."""
        if self.filled == 0:
            return
        targets = self.runner.run_views(self.batch[: self.filled])  # key -> (K, B, C)
        quantised = {key: quantize_views(x) for key, x in targets.items()}
        finite = np.logical_and.reduce([np.isfinite(x).all(axis=(0, 2)) for x in targets.values()])
        row = 0
        for owner, rows in self.owners:
            part = slice(row, row + rows)
            owner.take_targets(
                {key: (q[:, part], s[:, part], o[:, part]) for key, (q, s, o) in quantised.items()},
                bool(finite[part].all()),
            )
            owner.rows_in_batch -= rows
            row += rows
        self.owners.clear()
        self.filled = 0


def quantize_views(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`quantize` of ``(K, B, C)`` targets, row by row: ``(K, B, C), (K, B), (K, B)``."""
    k, b, c = x.shape
    q, scale, offset = quantize(x.reshape(k * b, c))
    return q.reshape(k, b, c), scale.reshape(k, b), offset.reshape(k, b)
