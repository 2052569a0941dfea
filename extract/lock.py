"""Advisory locks so two extractions never write the same videos of one shard directory."""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path
from types import TracebackType

from distinit.pipeline.errors import ConfigError

_RANK_LOCK = re.compile(r"\.lock-(\d+)-of-(\d+)$")


class RankLock:
    """``flock`` on ``OUT/.lock-<index>-of-<num>``; released by the OS if the process dies, and
    the file removed when the run ends.

    Ranks of different layouts (``--num-shards``) own different videos under the same rank
    number, so they would write some videos twice: a rank refuses to start while a rank lock of
    another layout is held. The check and the taking happen under an exclusive lock on the
    directory itself, so ranks starting together neither both pass nor leave files behind.
    """

    def __init__(self, out: Path, shard_index: int, num_shards: int) -> None:
        self.path = out / f".lock-{shard_index}-of-{num_shards}"
        self.num_shards = num_shards
        self._fd: int | None = None

    def __enter__(self) -> RankLock:
        guard = os.open(self.path.parent, os.O_RDONLY)
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)
            self._refuse_other_layouts()
            self._fd = self._lock_rank()
        finally:
            os.close(guard)  # releases the directory lock
        return self

    def _refuse_other_layouts(self) -> None:
        for other in self.path.parent.glob(".lock-*-of-*"):
            m = _RANK_LOCK.search(other.name)
            if m is None or int(m.group(2)) == self.num_shards:
                continue
            try:
                probe = os.open(other, os.O_RDWR)
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

    def _lock_rank(self) -> int:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                os.close(fd)
                raise ConfigError(
                    f"{self.path.parent}: another distinit extract is already writing here "
                    "(give each process its own --shard-index/--num-shards to run several)"
                ) from exc
            if _same_file(fd, self.path):
                break
            os.close(fd)  # its holder removed it as we opened it: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            # Removed while still held, so no lock file is left behind; a process that opened
            # the old file meanwhile sees it is gone (_same_file) and locks a new one.
            self.path.unlink(missing_ok=True)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False
