"""Which torch device a command runs on, the same rule for every stage: how ``--device`` is
written (checked when a config is built, before torch is imported) and which device it then is
(decided when the command runs)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from distinit.pipeline.errors import ConfigError
from distinit.pipeline.runtime import local_rank

if TYPE_CHECKING:
    import torch

_DEVICE_FORM = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device(option: str) -> None:
    """Refuse, in one line, a ``--device`` that is not auto, cpu, cuda or cuda:N."""
    if not _DEVICE_FORM.fullmatch(option):
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {option!r}")


def resolve_device(option: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.

    A CUDA device without an index is this process's own GPU under torchrun (``LOCAL_RANK``) or
    Slurm (``SLURM_LOCALID``), so the ranks of one node spread over its GPUs instead of all
    landing on GPU 0.
    """
    import torch

    check_device(option)
    if option == "auto":
        option = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(option)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {option!r} asked for, but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank() % torch.cuda.device_count())
    return device
