"""One writer per directory: a lock (``flock``, released by the OS when the process dies) keeps a
second job out of a run directory or a shard rank, refused in one line."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from distinit.pipeline.errors import ConfigError

if TYPE_CHECKING:
    from distinit.pipeline.runtime import Process


class DirectoryLock:
    """``flock`` on ``DIR/<name>``, taken without waiting; released by the OS if the process
    dies, so a killed run never leaves a stale lock behind, and the file is removed on release,
    so a finished run leaves none at all."""

    def __init__(
        self, directory: Path, refusal: str, name: str = ".lock", *, wait: bool = False
    ) -> None:
        self.path = Path(directory) / name
        self.refusal = refusal  # the one-line reason given to a second writer
        self.wait = wait  # wait for the holder instead of refusing (writers taking turns)
        self._fd: int | None = None

    def acquire(self) -> DirectoryLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = open_lock_file(self.path, os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
            except BlockingIOError as exc:
                os.close(fd)
                raise ConfigError(f"{self.path.parent}: {self.refusal}") from exc
            if _same_file(fd, self.path):
                break
            os.close(fd)  # its holder removed it as we opened it: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            # Removed while still held: a process that opened the old file meanwhile sees it is
            # gone (_same_file) and locks a new one.
            self.path.unlink(missing_ok=True)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def open_lock_file(path: Path, flags: int) -> int:
    """``os.open`` that never follows a symbolic link: a link planted where a lock file goes
    would otherwise have its target truncated and overwritten."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(
                f"{path} is a symbolic link where a lock file belongs; a lock is never "
                "followed through a link: remove it"
            ) from exc
        raise


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def lock_run_directory(directory: Path, command: str, proc: Process) -> DirectoryLock | None:
    """Rank 0 locks ``directory`` for this job; every rank raises the same one-line error when
    another job holds it. Returns the held lock on rank 0, ``None`` elsewhere."""
    lock = DirectoryLock(
        directory, f"another distinit {command} is already writing here (one run per directory)"
    )
    refused: ConfigError | None = None
    if proc.is_main:
        try:
            lock.acquire()
        except ConfigError as exc:
            refused = exc
    if _any_rank(refused is not None, proc):
        raise refused or ConfigError(f"{directory}: {lock.refusal}")
    return lock if proc.is_main else None


def _any_rank(flag: bool, proc: Process) -> bool:
    """True on every rank when ``flag`` is true on any rank (False alone when it is false)."""
    import torch
    import torch.distributed as dist

    if not proc.distributed or not dist.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)
