"""The device rule every stage shares: an unindexed ``cuda`` is this process's own GPU.

CUDA is simulated (four GPUs) so the rule is checked on any machine: with one real GPU every
local rank maps to GPU 0, and code that ignored LOCAL_RANK would pass there.
"""

from __future__ import annotations

import pytest
import torch

from distinit.pipeline.device import resolve_device
from distinit.pipeline.errors import ConfigError


@pytest.fixture
def four_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    for var in ("LOCAL_RANK", "SLURM_LOCALID"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.usefixtures("four_gpus")
@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, 0),
        ({"LOCAL_RANK": "3"}, 3),
        ({"SLURM_LOCALID": "2"}, 2),
        ({"LOCAL_RANK": "1", "SLURM_LOCALID": "2"}, 1),  # torchrun inside a Slurm allocation
        ({"LOCAL_RANK": "5"}, 1),  # more ranks than GPUs on the node: they wrap around
    ],
)
def test_unindexed_cuda_is_the_local_ranks_gpu(
    env: dict[str, str], expected: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert resolve_device("cuda") == torch.device("cuda", expected)
    assert resolve_device("auto") == torch.device("cuda", expected)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)  # an explicit index wins


def test_cuda_without_cuda_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")
