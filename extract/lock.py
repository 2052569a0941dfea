"""An advisory lock so two extractions cannot write the same rank of one shard directory."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from distinit.pipeline.errors import ConfigError


class RankLock:
    """``flock`` on ``OUT/.lock-<index>-of-<num>``; released by the OS if the process dies.

    Ranks of different layouts (``--num-shards``) own different videos under the same rank
    number, so they would write some videos twice: each rank also holds a shared lock on
    ``OUT/.layout-<num>``, and a rank refuses to start while another layout's is held.
    """

    def __init__(self, out: Path, shard_index: int, num_shards: int) -> None:
        self.path = out / f".lock-{shard_index}-of-{num_shards}"
        self.num_shards = num_shards
        self._fd: int | None = None
        self._layout_fd: int | None = None

    def __enter__(self) -> RankLock:
        self._layout_fd = _hold_layout(self.path.parent, self.num_shards)
        try:
            self._lock_rank()
        except BaseException:
            os.close(self._layout_fd)
            self._layout_fd = None
            raise
        return self

    def _lock_rank(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise ConfigError(
                f"{self.path.parent}: another distinit extract is already writing here "
                "(give each process its own --shard-index/--num-shards to run several)"
            ) from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for fd in (self._fd, self._layout_fd):
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
        self._fd = self._layout_fd = None


def _hold_layout(out: Path, num_shards: int) -> int:
    """A shared lock on this layout's file, once no other layout's is held; returns its fd.

    The check and the taking happen under ``OUT/.layout.lock``, so ranks starting together
    neither both pass (two layouts writing) nor see each other's probe as a writer.
    """
    guard = os.open(out / ".layout.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
        for other in out.glob(".layout-*"):
            if other.name == f".layout-{num_shards}":
                continue
            probe = os.open(other, os.O_RDWR)
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise ConfigError(
                    f"{out}: another distinit extract with --num-shards "
                    f"{other.name[len('.layout-') :]} is writing here; wait for it to finish or "
                    f"use its --num-shards (not {num_shards}), so no video is written twice"
                ) from exc
            finally:
                os.close(probe)
        fd = os.open(out / f".layout-{num_shards}", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
        return fd
    finally:
        os.close(guard)
