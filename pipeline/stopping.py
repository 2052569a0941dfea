"""When a run stops: one rule for signals and faults, for every command and every rank.

Signals. SIGINT and SIGTERM (Ctrl-C, ``kill``, ``timeout``, Slurm's time limit and pre-emption)
mean the same thing to every command. Inside :class:`StopSignals` the first one asks the run to
stop at its next safe point (train saves ``last.pt`` there, extract keeps the videos it has
written, eval the epochs it has finished); a second one stops at once. Outside it, the first one
stops at once. Either way the process exits ``128 + signal`` (130 for SIGINT, 143 for SIGTERM),
the status a shell reports for a process the signal killed, so a job script can tell them apart.

DataLoader workers are moved out of the terminal's and the job's process group
(:class:`ShieldedWorkerInit`): a signal sent to the whole group (``kill -TERM -PGID``, Ctrl-C,
Slurm) then reaches the main process alone, which stops the workers itself once it has saved,
instead of finding them dead mid-step.

Faults and ranks. A rank that meets a fault (an exception, a non-finite loss) or a signal must not
leave the others waiting in a collective. :func:`agree_to_stop` is the one place every rank
decides together: each says what it met, and when any rank met a fault every rank raises the same
one-line error; when any rank got a signal every rank stops at the same step.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from distinit.pipeline.errors import DistinitError, Interrupted, one_line

if TYPE_CHECKING:
    from distinit.pipeline.runtime import Process

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_received: int | None = None  # the last stop signal this process got (handlers are per process)


def exit_code(signum: int) -> int:
    """The exit status of a command stopped by ``signum``."""
    return 128 + signum


def received_signal() -> int | None:
    """The last stop signal this process received inside :class:`StopSignals`, if any."""
    return _received


def interrupted(where: str, kept: str, signum: int | None = None) -> Interrupted:
    """The error of a run that stopped at a safe point, for every command alike: the signal,
    where the run was, what it kept, and that the same command resumes. ``signum`` None: this
    process's last stop signal; a rank that stopped because another rank got one has none of
    its own and reports SIGTERM, what launchers and Slurm send a job."""
    signum = signum or received_signal() or signal.SIGTERM
    name = signal.Signals(signum).name
    return Interrupted(f"{name}{where}: {kept}; run the same command again to resume", signum)


class StopNow(KeyboardInterrupt):
    """A stop signal that ends the command at once (a second one, or one outside a run's safe
    points). A ``KeyboardInterrupt``, so ``finally`` blocks and context managers still run."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def stop_now(signum: int, frame: FrameType | None) -> None:
    """Signal handler: stop at once."""
    raise StopNow(signum)


def install_default_handlers() -> None:
    """Outside a run's safe points, SIGINT and SIGTERM both stop at once (the CLI's default)."""
    for s in STOP_SIGNALS:
        signal.signal(s, stop_now)


class StopSignals(threading.Event):
    """While held, the first SIGINT/SIGTERM sets this event (and :attr:`received`): the run
    stops at its next safe point. A second one raises :class:`StopNow`. The handlers before are
    restored on exit. Only the main thread can hold signal handlers; elsewhere it is a plain
    event."""

    def __init__(self) -> None:
        super().__init__()
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        global _received
        if self.is_set():
            raise StopNow(signum)
        self.received = _received = signum
        self.set()

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


class ShieldedWorkerInit:
    """A DataLoader ``worker_init_fn`` that first moves the worker into a process group of its
    own, then runs ``then`` (picklable, for spawned workers too). The main process still ends
    its workers (directly, by pid), and a worker whose parent died exits on its own (torch's
    watchdog)."""

    def __init__(self, then: Callable[[int], None] | None = None) -> None:
        self.then = then

    def __call__(self, worker_id: int) -> None:
        os.setpgid(0, 0)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # in case it is signalled by pid
        if self.then is not None:
            self.then(worker_id)


class RankFailed(DistinitError):
    """Another rank (or this one) met a fault; every rank of the job raises this same error."""


def agree_to_stop(
    proc: Process, signals: StopSignals | None, fault: BaseException | None = None
) -> int | None:
    """Collective: every rank calls it at the same point of its loop.

    Raises when any rank met a ``fault``: alone, the fault itself; in a job, every rank raises
    :class:`RankFailed` with the first faulty rank's one-line message (a fault that is not a
    :class:`DistinitError` is a bug: its own rank re-raises it, with its traceback). Otherwise
    returns the stop signal any rank received, or ``None`` to go on.
    """
    import torch
    import torch.distributed as dist

    signum = signals.received if signals is not None else None
    if not proc.distributed or not dist.is_initialized():
        if fault is not None:
            raise fault
        return signum
    flags = torch.tensor([1.0 if fault is not None else 0.0, float(signum or 0)])
    if dist.get_backend() == "nccl":
        flags = flags.cuda()
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    if flags[0].item() > 0:
        said: list[str | None] = [None] * proc.world_size
        dist.all_gather_object(said, _describe(fault) if fault is not None else None)
        rank, text = next((r, t) for r, t in enumerate(said) if t is not None)
        if fault is not None and not isinstance(fault, DistinitError):
            raise fault
        raise RankFailed(f"rank {rank} of {proc.world_size}: {text}") from fault
    return int(flags[1].item()) or None


def _describe(fault: BaseException) -> str:
    if isinstance(fault, DistinitError):
        return one_line(fault)
    return f"{type(fault).__name__}: {str(fault).strip().splitlines()[-1] if str(fault) else ''}"
