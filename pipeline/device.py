"""Which torch device a command runs on, the same rule for every stage."""

from __future__ import annotations

import torch

from distinit.pipeline.errors import ConfigError
from distinit.pipeline.runtime import local_rank


def resolve_device(option: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.

    A CUDA device without an index is this process's own GPU under torchrun (``LOCAL_RANK``) or
    Slurm (``SLURM_LOCALID``), so the ranks of one node spread over its GPUs instead of all
    landing on GPU 0.
    """
    if option == "auto":
        option = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(option)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {option!r} (auto, cpu, cuda or cuda:N)") from exc
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {option!r} (auto, cpu, cuda or cuda:N)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {option!r} asked for, but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank() % torch.cuda.device_count())
    return device
