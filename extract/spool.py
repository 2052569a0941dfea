"""A video's finished rows on disk until the video is complete and joins a shard.

Several videos decode at once and their frames share teacher batches, so their rows arrive
interleaved, while a shard keeps each video's rows contiguous and holds only complete videos.
Each video in progress therefore appends its rows to a spool file of its own as they are done
(memory stays flat however long the video), and a complete video is copied from its spool into
the shard block by block. The file is opened for each append, so the open files stay bounded
however many short videos wait on one batch.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from distinit.pipeline.shards import ShardWriter, Targets

SPOOL_SUFFIX = ".spool.tmp"
Gop = tuple[int, bytes]  # (rows, H.264 bytes)

_FRAMES, _TARGETS = 0, 1  # block kinds


class VideoSpool:
    """Rows of one video in a file beside the shards, in two streams that each stay in row
    order: frames (times, indices, GOP) as they are decoded and targets as the teachers give
    them. ``keys`` are the teacher targets, in the order their arrays are written."""

    def __init__(self, directory: Path, prefix: str, keys: tuple[str, ...]) -> None:
        self.path = directory / f"{prefix}{uuid.uuid4().hex}{SPOOL_SUFFIX}"
        self.keys = keys
        self.frame_rows = 0
        self.target_rows = 0
        self.gop_bytes = 0

    def add_frames(self, times: np.ndarray, indices: np.ndarray, gop: Gop | None) -> None:
        arrays = [np.asarray(times, np.float64), np.asarray(indices, np.int64)]
        if gop is not None:
            arrays += [np.array([gop[0]], np.int64), np.frombuffer(gop[1], np.uint8)]
            self.gop_bytes += len(gop[1])
        self._write(_FRAMES, arrays)
        self.frame_rows += len(times)

    def add_targets(self, targets: Targets) -> None:
        self._write(_TARGETS, [a for key in self.keys for a in targets[key]])
        self.target_rows += targets[self.keys[0]][0].shape[1]

    def _write(self, kind: int, arrays: list[np.ndarray]) -> None:
        with open(self.path, "ab") as fh:
            np.save(fh, np.array([kind, len(arrays)], np.int64))
            for a in arrays:
                np.save(fh, a)

    def copy_into(self, writer: ShardWriter, video_id: str) -> None:
        """Append every row to ``writer`` in order (the caller then ends the video)."""
        if self.frame_rows == 0 and self.target_rows == 0:
            return  # nothing was ever written
        with open(self.path, "rb") as fh:
            for kind, arrays in _blocks(fh, os.fstat(fh.fileno()).st_size):
                if kind == _FRAMES:
                    gops = [(int(arrays[2][0]), arrays[3].tobytes())] if len(arrays) > 2 else None
                    writer.append_frames(video_id, arrays[0], arrays[1], gops)
                else:
                    triples = [
                        (arrays[i], arrays[i + 1], arrays[i + 2]) for i in range(0, len(arrays), 3)
                    ]
                    writer.append_targets(video_id, dict(zip(self.keys, triples, strict=True)))

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _blocks(fh: BinaryIO, size: int) -> Iterator[tuple[int, list[np.ndarray]]]:
    while fh.tell() < size:
        kind, count = np.load(fh, allow_pickle=False)
        yield int(kind), [np.load(fh, allow_pickle=False) for _ in range(int(count))]
