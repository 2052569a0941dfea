"""Which process am I, and which job am I part of: one answer for extract, train and eval.

Rank, world size and local rank come from torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) or,
when those are absent, from Slurm (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``), so
``srun --ntasks=N distinit train ...`` starts one N-process job rather than N separate runs.
Under Slurm the rendezvous address is derived when not set: ``MASTER_ADDR`` is the first host of
``SLURM_JOB_NODELIST`` (``SLURM_NODELIST``), ``MASTER_PORT`` is ``20000 + SLURM_JOB_ID % 20000``,
so every task of one job agrees on it without any coordination.

Files are written atomically by :mod:`~distinit.pipeline.atomic`; one writer per directory is
:mod:`~distinit.pipeline.directory_lock`'s.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from distinit.pipeline.errors import ConfigError
from distinit.pipeline.slurm import first_slurm_host

if TYPE_CHECKING:
    import torch

# torch is imported where a process group needs it: the CLI asks which process this is without
# paying for torch.

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
