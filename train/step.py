"""One optimisation step, the same for distillation (``distinit train``) and fine-tuning (``distinit
eval``): take a batch, compute the loss, step the optimizer.

Every stop decision (a fault, a signal) is taken by all ranks together (see
:func:`distinit.pipeline.stopping.agree_to_stop`) before the step's first collective, so no rank is
left waiting in DDP's all-reduce. AMP is float16 autocast with a gradient scaler, on CUDA only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from distinit.pipeline.errors import CheckpointError
from distinit.pipeline.runtime import Process
from distinit.pipeline.stopping import StopSignals, agree_to_stop

T = TypeVar("T")


def amp_enabled(amp: bool, device: torch.device) -> bool:
    """AMP as asked, where it exists: float16 autocast runs on CUDA only."""
    return amp and device.type == "cuda"


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    return torch.autocast(device_type=device.type, dtype=torch.float16, enabled=enabled)


def next_batch(
    batches: Iterator[T], proc: Process, signals: StopSignals
) -> tuple[T | None, int | None]:
    """The next batch, decided by every rank together: ``(None, None)`` when the loader is done
    (every rank's sampler has the same length), ``(_, signum)`` when any rank got a stop signal;
    raises on every rank when any rank's loader failed."""
    fault: Exception | None = None
    batch: T | None = None
    try:
        batch = next(batches)
    except StopIteration:
        return None, None
    except Exception as exc:
        fault = exc
    return batch, agree_to_stop(proc, signals, fault)


def agreed(compute: Callable[[], T], proc: Process) -> T:
    """``compute()``, raising on every rank when it failed on any rank."""
    fault: Exception | None = None
    result: Any = None
    try:
        result = compute()
    except Exception as exc:
        fault = exc
    agree_to_stop(proc, None, fault)
    return result  # type: ignore[no-any-return]


def contiguous_input(normalized: torch.Tensor) -> torch.Tensor:
    """The student's input, ``(B, C, T, H, W)``. Contiguous: the permuted layout of a normalised
    clip would give DDP gradients of mismatched strides."""
    return normalized.contiguous()


@dataclass
class Trainee:
    """What a step changes and a saved state holds: the model's parameters, the optimizer, the
    AMP scaler and (for distillation) the lr schedule."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None

    def step(self, loss: torch.Tensor, grad_clip: float | None = None) -> float:
        """Backward and optimizer step; returns the gradient norm before clipping (NaN when
        ``grad_clip`` is None: not computed)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        grad_norm = float("nan")
        if grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            grad_norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        return grad_norm

    def parts(self) -> dict[str, Any]:
        named: dict[str, Any] = {
            "model": self.model,
            "optimizer": self.optimizer,
            "scaler": self.scaler,
            "scheduler": self.scheduler,
        }
        return {k: v for k, v in named.items() if v is not None}

    def state_dicts(self, names: Iterable[str]) -> dict[str, Any]:
        """``{name: its state_dict()}`` for the parts named (a saved state's payload)."""
        parts = self.parts()
        return {name: parts[name].state_dict() for name in names}

    def load_state_dicts(self, path: object, state: dict[str, Any], names: Iterable[str]) -> None:
        """Restore the parts named from ``state`` (read from ``path``); one line when it was
        saved by a run of another shape."""
        parts = self.parts()
        try:
            for name in names:
                parts[name].load_state_dict(state[name])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{path}: training state does not fit this run ({exc})") from exc
