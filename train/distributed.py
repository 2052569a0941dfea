"""Training's view of the job (see :mod:`distinit.pipeline.runtime`), and batch norm over the
global batch.

Under ``torchrun`` or ``srun`` (several processes) every process trains on its share of the
global batch and DDP averages gradients; NCCL on GPU, gloo on CPU. Batch norm statistics are
synchronised across processes so that N processes compute exactly what one process computes on
the whole global batch: torch's ``SyncBatchNorm`` on GPU, and on CPU (which ``SyncBatchNorm``
refuses) :class:`GlooBatchNorm`, which all-reduces the sums with a differentiable collective.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from distinit.pipeline import runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Training's view of the job: this process's place in it, and its device."""

    process: runtime.Process
    device: torch.device


def setup(device_option: str) -> DistContext:
    """Join the job's process group when launched by torchrun or Slurm, else one process."""
    return DistContext(*runtime.start(device_option))


def teardown(ctx: DistContext) -> None:
    runtime.stop(ctx.process)


def wrap(
    model: nn.Module, proc: runtime.Process, device: torch.device, *, broadcast_buffers: bool
) -> nn.Module:
    """``model`` in DistributedDataParallel when the job has several processes, else itself."""
    if not proc.distributed:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(
        model, device_ids=device_ids, broadcast_buffers=broadcast_buffers
    )


def mean_over_ranks(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.process.distributed:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= ctx.process.world_size
    return value


class GlooBatchNorm(nn.BatchNorm3d):
    """BatchNorm3d whose training statistics cover the whole global batch, on CPU.

    Same parameters and buffers as ``nn.BatchNorm3d`` (checkpoints are interchangeable); mean
    and variance come from all-reduced sums over ``(B, T, H, W)`` of every process. The
    collective is differentiable, so gradients flow to every process's inputs as if the global
    batch had been one tensor. Runs on its own process group so its collectives can never
    interleave with DDP's gradient all-reduces.
    """

    group: dist.ProcessGroup | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W)
        if not self.training:
            return super().forward(x)
        dims = (0, 2, 3, 4)
        # float64 sums: E[x²] - E[x]² cancels badly in float32, and the point of this module
        # is to match single-process batch norm to rounding.
        x64 = x.double()
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64)
        stats = torch.cat([x64.sum(dims), (x64 * x64).sum(dims), count])  # (2C + 1,)
        stats = dist_fn.all_reduce(stats, group=self.group)
        c = x.shape[1]
        n = stats[-1]
        mean64 = stats[:c] / n
        var64 = stats[c : 2 * c] / n - mean64 * mean64  # biased, as batch norm normalises
        mean, var = mean64.to(x.dtype), var64.to(x.dtype)
        assert self.running_mean is not None and self.running_var is not None
        assert self.num_batches_tracked is not None  # built with track_running_stats=True
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum if self.momentum is not None else 0.1
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * float(n / (n - 1)), alpha=m)
        shape = (1, c, 1, 1, 1)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape)


def sync_batchnorm(model: nn.Module, ctx: DistContext) -> nn.Module:
    """Make every BatchNorm3d of ``model`` normalise over the global batch (no-op alone)."""
    if not ctx.process.distributed:
        return model
    if ctx.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    group = dist.new_group(backend="gloo")
    assert isinstance(group, dist.ProcessGroup)  # this rank is a member of the new group
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm3d:
                bn = GlooBatchNorm(
                    child.num_features, child.eps, child.momentum, child.affine, True
                )
                bn.load_state_dict(child.state_dict())
                bn.group = group
                setattr(parent, name, bn)
    return model
