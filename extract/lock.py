"""Advisory locks so two extractions never write the same videos of one shard directory."""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

from distinit.pipeline.directory_lock import DirectoryLock, open_lock_file
from distinit.pipeline.errors import ConfigError

_RANK_LOCK = re.compile(r"\.lock-(\d+)-of-(\d+)$")


class RankLock(DirectoryLock):
    """The lock on ``OUT/.lock-<index>-of-<num>``: ranks of one extraction each hold their own,
    a second process for the same rank is refused.

    Ranks of different layouts (``--num-shards``) own different videos under the same rank
    number, so they would write some videos twice: a rank also refuses to start while a rank
    lock of another layout is held. The check and the taking happen under an exclusive lock on
    the directory itself, so ranks starting together neither both pass nor leave files behind.
    """

    def __init__(self, out: Path, shard_index: int, num_shards: int) -> None:
        super().__init__(
            out,
            "another distinit extract is already writing here "
            "(give each process its own --shard-index/--num-shards to run several)",
            name=f".lock-{shard_index}-of-{num_shards}",
        )
        self.num_shards = num_shards

    def acquire(self) -> RankLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        guard = os.open(self.path.parent, os.O_RDONLY)
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)
            self._refuse_other_layouts()
            super().acquire()
        finally:
            os.close(guard)  # releases the directory lock
        return self

    def _refuse_other_layouts(self) -> None:
        for other in self.path.parent.glob(".lock-*-of-*"):
            m = _RANK_LOCK.search(other.name)
            if m is None or int(m.group(2)) == self.num_shards:
                continue
            try:
                probe = open_lock_file(other, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: left by a dead run
            except BlockingIOError as exc:
                raise ConfigError(
                    f"{self.path.parent}: another distinit extract with --num-shards "
                    f"{m.group(2)} is writing here; wait for it to finish or use its "
                    f"--num-shards (not {self.num_shards}), so no video is written twice"
                ) from exc
            finally:
                os.close(probe)
