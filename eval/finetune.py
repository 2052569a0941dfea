"""Fine-tuning: all layers and a new head, SGD with a cosine schedule, resumable.

State (``finetune.pt`` in the split's output folder: weights, optimiser, finished epochs and the
configuration it belongs to) is written atomically after every epoch and read back with
``weights_only=True``; running the same command again continues from the last finished epoch.
Training randomness is keyed by (seed, epoch), so a resumed run sees the clips an uninterrupted
one would. AMP (float16 autocast with a gradient scaler) is used on CUDA. Under ``torchrun`` or
``srun`` the model is wrapped in DistributedDataParallel and each rank sees its share of the
videos; ``batch_size`` is per rank, as in ``distinit train`` (the global batch is it times the
ranks); rank 0 writes the state.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from distinit.eval.datasets import ClipProtocol, TrainClips
from distinit.eval.initialise import HEAD
from distinit.eval.splits import VideoItem
from distinit.pipeline.atomic import atomic_torch_save
from distinit.pipeline.errors import (
    CheckpointError,
    ConfigError,
    NonFiniteLossError,
)
from distinit.pipeline.progress import eta_seconds, format_duration
from distinit.pipeline.runtime import Process
from distinit.pipeline.stopping import ShieldedWorkerInit, StopSignals, interrupted
from distinit.pipeline.weights import load_weights_only
from distinit.train import distributed
from distinit.train.clips import prepare_workers
from distinit.train.step import Trainee, agreed, amp_enabled, autocast, next_batch
from distinit.train.students import Student

log = logging.getLogger(__name__)

STATE_NAME = "finetune.pt"
MOMENTUM = 0.9


@dataclass(frozen=True)
class FinetuneSettings:
    epochs: int
    lr: float
    weight_decay: float
    batch_size: int  # per rank (distinit.pipeline.options.CLIP_BATCH)
    workers: int
    seed: int
    amp: bool

    def describe(self) -> dict[str, Any]:
        return {
            "optimizer": f"SGD momentum {MOMENTUM}",
            "schedule": "cosine from lr to 0 over the epochs, per epoch",
            "epochs": self.epochs,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "batch_size": self.batch_size,  # per process
            "layers_trained": "all, new action head",
        }


def _resume(
    path: Path, trainee: Trainee, identity: dict[str, str], progress: Callable[[str], None]
) -> int:
    """Epochs already done: restored from ``path`` when it belongs to this run. ``identity``:
    the recipe's ``fingerprint`` (a state of another recipe is refused) and the
    ``init_weights`` (a state fine-tuned from other weights is discarded)."""
    if not path.is_file():
        return 0
    state = load_weights_only(path, CheckpointError)
    if not isinstance(state, dict) or "epochs_done" not in state:
        raise CheckpointError(f"{path}: not a distinit fine-tuning state")
    if state.get("fingerprint") != identity["fingerprint"]:
        raise ConfigError(
            f"{path} belongs to a fine-tuning run with other settings; "
            "(another recipe or other initial weights); use another --out or delete it to start "
            "over"
        )
    if state.get("init_weights") != identity["init_weights"]:
        # Same recipe, other starting weights (a checkpoint retrained in place): the state
        # says nothing about this run.
        progress(f"{path} was fine-tuned from other initial weights; starting over")
        return 0
    trainee.load_state_dicts(path, state, _TRAINING_STATE)
    progress(f"resuming fine-tuning from {path} after epoch {state['epochs_done']}")
    return int(state["epochs_done"])


_TRAINING_STATE = ("model", "optimizer")  # what finetune.pt holds besides its identity


def finetune(
    student: Student,
    items: list[VideoItem],
    protocol: ClipProtocol,
    settings: FinetuneSettings,
    *,
    proc: Process,
    device: torch.device,
    state_dir: Path,
    fingerprint: str,
    init_weights: str,
    progress: Callable[[str], None],
) -> Student:
    """Train ``student`` (backbone and ``action`` head) on random clips of ``items``.

    ``fingerprint`` names the recipe (a state of another recipe is refused), ``init_weights`` the
    starting weights by content (a state fine-tuned from other weights is discarded).
    """
    student.to(device)
    trainee, use_amp = _trainee(student, settings, device)
    optimizer = trainee.optimizer
    state_path = state_dir / STATE_NAME
    identity = {"fingerprint": fingerprint, "init_weights": init_weights}
    start_epoch = _resume(state_path, trainee, identity, progress)
    if start_epoch >= settings.epochs:
        return student
    epochs = _Epochs(TrainClips(items, protocol, seed=settings.seed), settings, proc)
    model = distributed.wrap(student, proc, device, broadcast_buffers=True)
    total = epochs.steps_per_epoch * (settings.epochs - start_epoch)
    done, began = 0, time.monotonic()
    with StopSignals() as signals:
        for epoch in range(start_epoch, settings.epochs):
            lr = epochs.set_lr(optimizer, epoch)
            model.train()
            step = _Step(model, student, trainee, proc, device, use_amp, epoch)
            loss_sum, seen = 0.0, 0
            batches = iter(epochs.loader(epoch))
            while True:
                batch, signum = next_batch(batches, proc, signals)
                if signum is not None:
                    raise interrupted(
                        f" in fine-tuning epoch {epoch + 1} of {settings.epochs}",
                        f"finished epochs ({epoch}) are kept in {state_path}",
                        signum,
                    )
                if batch is None:
                    break
                loss_sum, seen, done = loss_sum + step(*batch), seen + len(batch[1]), done + 1
            elapsed = time.monotonic() - began
            eta = eta_seconds(done, total, elapsed)
            if proc.is_main:
                progress(
                    f"epoch {epoch + 1}/{settings.epochs}  loss {loss_sum / max(seen, 1):.4f}  "
                    f"lr {lr:.2e}  elapsed {format_duration(elapsed)}  ETA {format_duration(eta)}"
                )
                state = {**identity, "epochs_done": epoch + 1}
                atomic_torch_save(state_path, {**state, **trainee.state_dicts(_TRAINING_STATE)})
            if proc.distributed:
                dist.barrier()
    return student


def _trainee(
    student: Student, settings: FinetuneSettings, device: torch.device
) -> tuple[Trainee, bool]:
    """SGD with momentum over every layer, and whether it steps under AMP (CUDA only)."""
    optimizer = torch.optim.SGD(
        student.parameters(), lr=settings.lr, momentum=MOMENTUM, weight_decay=settings.weight_decay
    )
    use_amp = amp_enabled(settings.amp, device)
    return Trainee(student, optimizer, torch.amp.GradScaler("cuda", enabled=use_amp)), use_amp


class _Epochs:
    """The clips of each epoch, this rank's share: randomness keyed by (seed, epoch)."""

    def __init__(self, dataset: TrainClips, settings: FinetuneSettings, proc: Process) -> None:
        self.dataset, self.settings = dataset, settings
        self.sampler: DistributedSampler[int] | None = (
            DistributedSampler(
                dataset, num_replicas=proc.world_size, rank=proc.rank, seed=settings.seed
            )
            if proc.distributed
            else None
        )
        self.per_rank = settings.batch_size
        shown = self.sampler if self.sampler is not None else dataset
        self.steps_per_epoch = math.ceil(len(shown) / self.per_rank)
        # Flow workers run OpenCV; its thread count can only be lowered here, before they fork.
        prepare_workers(settings.workers)

    def set_lr(self, optimizer: torch.optim.Optimizer, epoch: int) -> float:
        """The cosine schedule from lr to 0 over the epochs, per epoch; returns the epoch's lr."""
        lr = self.settings.lr * 0.5 * (1 + math.cos(math.pi * epoch / self.settings.epochs))
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def loader(self, epoch: int) -> DataLoader[tuple[torch.Tensor, int]]:  # collated: 2 tensors
        self.dataset.set_epoch(epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        return DataLoader(
            self.dataset,
            batch_size=self.per_rank,
            shuffle=self.sampler is None,
            sampler=self.sampler,
            num_workers=self.settings.workers,
            generator=torch.Generator().manual_seed(self.settings.seed * 100003 + epoch),
            drop_last=False,
            worker_init_fn=ShieldedWorkerInit(),  # signals to the group reach us alone
        )


@dataclass
class _Step:
    """One fine-tuning step of ``epoch``: cross-entropy of the action head, then the optimizer;
    returns the batch's summed loss."""

    model: nn.Module  # the student, in DDP when the job has several processes
    student: Student
    trainee: Trainee
    proc: Process
    device: torch.device
    use_amp: bool
    epoch: int

    def __call__(self, clips: torch.Tensor, labels: torch.Tensor) -> float:
        # clips: (B, T, H, W, 3) uint8 or (B, T, H, W, 2) float32
        def loss_of() -> torch.Tensor:
            # contiguous: the permuted layout would give DDP gradients of mismatched strides
            x = self.student.normalize(clips.to(self.device, non_blocking=True)).contiguous()
            with autocast(self.device, self.use_amp):  # x: (B, C, T, H, W)
                loss = nn.functional.cross_entropy(self.model(x)[HEAD], labels.to(self.device))
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"fine-tuning loss is {loss.item()} at epoch {self.epoch + 1}"
                )
            return loss

        loss = agreed(loss_of, self.proc)
        self.trainee.step(loss)
        return loss.item() * len(labels)


def recompute_bn_stats(
    student: Student,
    items: list[VideoItem],
    protocol: ClipProtocol,
    *,
    device: torch.device,
    batch_size: int,
    workers: int,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Re-estimate BatchNorm running statistics with the final weights ("precise BN").
    ``progress(clips done, clips)`` after each batch.

    Running averages collected during training mix statistics of earlier weights; after a short
    fine-tuning they can be far off and test-time predictions collapse. One forward pass over a
    random clip of every training video, with a cumulative average, replaces them.
    """
    norms = [m for m in student.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the pass
    dataset = TrainClips(items, protocol, seed=seed + 1)
    prepare_workers(workers)  # before the workers fork (see distinit.train.clips)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    student.train().to(device)
    done = 0
    with torch.no_grad():
        for clips, _ in loader:
            student.features(student.normalize(clips.to(device)))
            done += len(clips)
            if progress is not None:
                progress(done, len(dataset))
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
    student.eval()
    log.info("BatchNorm statistics re-estimated on %d training clips", len(dataset))
