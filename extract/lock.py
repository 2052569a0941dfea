"""An advisory lock so two extractions cannot write the same rank of one shard directory."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from distinit.pipeline.errors import ConfigError


class RankLock:
    """``flock`` on ``OUT/.lock-<index>-of-<num>``; released by the OS if the process dies."""

    def __init__(self, out: Path, shard_index: int, num_shards: int) -> None:
        self.path = out / f".lock-{shard_index}-of-{num_shards}"
        self._fd: int | None = None

    def __enter__(self) -> RankLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise ConfigError(
                f"{self.path.parent}: another distinit extract is already writing here "
                "(give each process its own --shard-index/--num-shards to run several)"
            ) from exc
        if not _same_file(fd, self.path):  # its holder removed it as we opened it: now free
            os.close(fd)
            return self.__enter__()
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

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
