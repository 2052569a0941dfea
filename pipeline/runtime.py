"""Which process am I, and how do I write files: one answer for extract, train and eval.

Rank, world size and local rank come from torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) or,
when those are absent, from Slurm (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``), so
``srun --ntasks=N distinit train ...`` starts one N-process job rather than N separate runs.
Under Slurm the rendezvous address is derived when not set: ``MASTER_ADDR`` is the first host of
``SLURM_JOB_NODELIST`` (``SLURM_NODELIST``), ``MASTER_PORT`` is ``20000 + SLURM_JOB_ID % 20000``,
so every task of one job agrees on it without any coordination.

Files are written atomically: a temporary name unique to this process (pid and a random tag, so
two ranks never share one), flushed and fsynced, then renamed over the destination. A crash or
``kill -9`` at any moment leaves the old file or the new one, never half of one. A directory
lock (``flock``, released by the OS when the process dies) keeps a second writer out of a run
directory.
"""

from __future__ import annotations

import errno
import fcntl
import io
import itertools
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from distinit.pipeline.errors import ConfigError

if TYPE_CHECKING:
    import torch

# torch is imported where a process group or torch.save needs it: the shard contract and the
# CLI use this module's file writes and locks without paying for torch.

log = logging.getLogger(__name__)

# DataLoader worker processes per training or evaluation process, for every command: one per
# core up to 4 (more workers than cores only contend with the training step for the CPU).
DEFAULT_LOADER_WORKERS = min(4, os.cpu_count() or 1)

SLURM_PORT_BASE = 20000  # MASTER_PORT = base + SLURM_JOB_ID % span, when Slurm does not set it
SLURM_PORT_SPAN = 20000


@dataclass(frozen=True)
class Process:
    """This process's place in a (possibly single-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "none"  # "torchrun", "slurm" or "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _int_env(env: dict[str, str] | os._Environ[str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError as exc:
        raise ConfigError(f"${name}={env[name]!r} is not an integer") from exc


def process_from_environment(env: dict[str, str] | os._Environ[str] | None = None) -> Process:
    """torchrun's variables first, then Slurm's, else one process."""
    env = os.environ if env is None else env
    for launcher, rank_var, size_var, local_var in (
        ("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"),
        ("slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
    ):
        if rank_var in env and size_var in env:
            rank, world = _int_env(env, rank_var), _int_env(env, size_var)
            local = _int_env(env, local_var) if local_var in env else 0
            if world < 1 or not 0 <= rank < world:
                raise ConfigError(f"${rank_var}={rank} is outside 0..{world - 1} (${size_var})")
            return Process(rank, world, local, launcher)
    return Process()


def local_rank(env: dict[str, str] | os._Environ[str] | None = None) -> int:
    """This process's index on its node: which GPU an unindexed ``cuda`` means. ``LOCAL_RANK``
    (torchrun), else ``SLURM_LOCALID``, else 0; read even without a rank and world size, so a
    process started by another launcher that sets only this still gets its own GPU."""
    env = os.environ if env is None else env
    for name in ("LOCAL_RANK", "SLURM_LOCALID"):
        if name in env:
            return _int_env(env, name)
    return 0


def first_slurm_host(nodelist: str) -> str:
    """The first host of a Slurm node list, as Slurm itself expands it: ``scontrol show
    hostnames`` where Slurm is installed, else :func:`slurm_hostnames` (the same grammar)."""
    scontrol = shutil.which("scontrol")
    if scontrol is not None:
        try:
            shown = subprocess.run(
                [scontrol, "show", "hostnames", nodelist],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout.split()
        except (OSError, subprocess.SubprocessError) as exc:
            log.debug("scontrol show hostnames failed (%s); expanding the list here", exc)
        else:
            if shown:
                return shown[0]
    return slurm_hostnames(nodelist)[0]


# A node list item is literal text and bracket groups; a bracket group is a comma list of
# numbers and ranges ``lo-hi``, zero-padded to the width of ``lo`` (``[08-10]``: 08, 09, 10).
_HOSTLIST_TOKEN = re.compile(r"\[([^\[\]]*)\]|([^\[\],]+)")
_HOSTLIST_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def slurm_hostnames(nodelist: str) -> list[str]:
    """Every host of a Slurm node list, in Slurm's order: ``rack[1-2]-gpu[01-02],login`` ->
    rack1-gpu01, rack1-gpu02, rack2-gpu01, rack2-gpu02, login."""
    text = nodelist.strip()
    hosts: list[str] = []
    pos = 0
    while pos < len(text):
        choices: list[list[str]] = []  # one list of alternatives per literal or bracket group
        while pos < len(text) and text[pos] != ",":
            m = _HOSTLIST_TOKEN.match(text, pos)
            if m is None:
                raise ConfigError(f"cannot read the Slurm node list {nodelist!r}")
            group, literal = m.group(1), m.group(2)
            choices.append([literal] if group is None else _expand_group(group, nodelist))
            pos = m.end()
        if not choices:
            raise ConfigError(f"cannot read the Slurm node list {nodelist!r} (an empty host)")
        hosts += ["".join(parts) for parts in itertools.product(*choices)]
        pos += 1  # the comma between items
    if not hosts:
        raise ConfigError(f"cannot read the Slurm node list {nodelist!r} (no host)")
    return hosts


def _expand_group(group: str, nodelist: str) -> list[str]:
    out: list[str] = []
    for part in group.split(","):
        m = _HOSTLIST_RANGE.fullmatch(part.strip())
        if m is None:
            raise ConfigError(f"cannot read the Slurm node list {nodelist!r} (range {part!r})")
        lo, hi = m.group(1), m.group(2) or m.group(1)
        if int(hi) < int(lo):
            raise ConfigError(f"cannot read the Slurm node list {nodelist!r} (range {part!r})")
        out += [str(n).zfill(len(lo)) for n in range(int(lo), int(hi) + 1)]
    return out


def rendezvous_environment(proc: Process, env: dict[str, str] | None = None) -> dict[str, str]:
    """``MASTER_ADDR``/``MASTER_PORT`` for a Slurm job that did not set them (torchrun always
    does); returns only the variables it adds."""
    env = dict(os.environ) if env is None else env
    added: dict[str, str] = {}
    if proc.launcher != "slurm" or not proc.distributed:
        return added
    if "MASTER_ADDR" not in env:
        nodelist = env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST"))
        if not nodelist:
            raise ConfigError("Slurm job without SLURM_JOB_NODELIST: set MASTER_ADDR")
        added["MASTER_ADDR"] = first_slurm_host(nodelist)
    if "MASTER_PORT" not in env:
        if "SLURM_JOB_ID" not in env:
            raise ConfigError("Slurm job without SLURM_JOB_ID: set MASTER_PORT")
        job = _int_env(env, "SLURM_JOB_ID")
        added["MASTER_PORT"] = str(SLURM_PORT_BASE + job % SLURM_PORT_SPAN)
    return added


def start(device_option: str) -> tuple[Process, torch.device]:
    """This process and its device; joins the job's process group when there are several
    (NCCL on CUDA, gloo on CPU), with the rendezvous taken from torchrun's or Slurm's
    variables."""
    import torch
    import torch.distributed as dist

    from distinit.pipeline.device import resolve_device  # it asks this module for local_rank

    proc = process_from_environment()
    device = resolve_device(device_option)
    if proc.distributed and not dist.is_initialized():
        os.environ.update(rendezvous_environment(proc))
        os.environ.setdefault("RANK", str(proc.rank))
        os.environ.setdefault("WORLD_SIZE", str(proc.world_size))
        os.environ.setdefault("LOCAL_RANK", str(proc.local_rank))
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend=backend, init_method="env://", rank=proc.rank, world_size=proc.world_size
        )
        log.info(
            "rank %d of %d on %s (%s, %s)",
            proc.rank,
            proc.world_size,
            device,
            backend,
            proc.launcher,
        )
    return proc, device


def stop(proc: Process) -> None:
    import torch.distributed as dist

    if proc.distributed and dist.is_initialized():
        dist.destroy_process_group()


def agree(flag: bool, proc: Process) -> bool:
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


# --- atomic writes -----------------------------------------------------------------------------


def _temporary(path: Path) -> Path:
    # pid and a random tag: two ranks (or two processes) writing one file never share a temp name
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _write_bytes(path: str | os.PathLike[str], data: bytes | memoryview) -> Path:
    path = Path(path)
    tmp = _temporary(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write(
    path: str | os.PathLike[str], content: bytes | str | Any, *, indent: int | None = 2
) -> Path:
    """Write bytes, text (UTF-8), or any other value as JSON, atomically."""
    if isinstance(content, bytes):
        data = content
    elif isinstance(content, str):
        data = content.encode("utf-8")
    else:
        data = (json.dumps(content, indent=indent) + "\n").encode("utf-8")
    return _write_bytes(path, data)


def atomic_torch_save(path: str | os.PathLike[str], obj: Any) -> Path:
    """``torch.save`` atomically."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return _write_bytes(path, buffer.getbuffer())


def probe_writable(directory: Path) -> None:
    """Create and remove a file in ``directory`` (raises OSError when this process may not).

    The probe's name carries this host, this process and a random tag, and is created
    exclusively: ranks on several hosts writing one directory (containers on them often share
    pids) never write over or remove one another's probe."""
    tag = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    probe = directory / f".write-test-{tag}"
    with open(probe, "xb"):
        pass
    probe.unlink()


# --- one writer per directory ------------------------------------------------------------------


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
    if agree(refused is not None, proc):
        raise refused or ConfigError(f"{directory}: {lock.refusal}")
    return lock if proc.is_main else None
