"""Fine-tuning: all layers and a new head, SGD with a cosine schedule, resumable.

State (``finetune.pt`` in the split's output folder: weights, optimiser, finished epochs and the
configuration it belongs to) is written atomically after every epoch and read back with
``weights_only=True``; running the same command again continues from the last finished epoch.
Training randomness is keyed by (seed, epoch), so a resumed run sees the clips an uninterrupted
one would. AMP (float16 autocast with a gradient scaler) is used on CUDA. Under ``torchrun`` or
``srun`` the model is wrapped in DistributedDataParallel and each rank sees its share of the
videos; ``batch_size`` is the global batch, split evenly over ranks; rank 0 writes the state.
"""

from __future__ import annotations

import logging
import math
import signal
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
from distinit.pipeline.errors import (
    CheckpointError,
    ConfigError,
    Interrupted,
    NonFiniteLossError,
)
from distinit.pipeline.progress import eta_seconds, format_duration
from distinit.pipeline.runtime import Process, atomic_torch_save
from distinit.pipeline.stopping import ShieldedWorkerInit, StopSignals, agree_to_stop
from distinit.pipeline.weights import load_weights_only
from distinit.train.clips import prepare_workers
from distinit.train.students import Student

log = logging.getLogger(__name__)

STATE_NAME = "finetune.pt"
MOMENTUM = 0.9


@dataclass(frozen=True)
class FinetuneSettings:
    epochs: int
    lr: float
    weight_decay: float
    batch_size: int  # global, over all ranks
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
            "batch_size": self.batch_size,
            "layers_trained": "all, new action head",
        }


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _load_state(
    path: Path, fingerprint: str, init_weights: str, progress: Callable[[str], None]
) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    state = load_weights_only(path, CheckpointError)
    if not isinstance(state, dict) or "epochs_done" not in state:
        raise CheckpointError(f"{path}: not a distinit fine-tuning state")
    if state.get("fingerprint") != fingerprint:
        raise ConfigError(
            f"{path} belongs to a fine-tuning run with other settings; "
            "(another recipe or other initial weights); use another --out or delete it to start "
            "over"
        )
    if state.get("init_weights") != init_weights:
        # Same recipe, other starting weights (a checkpoint retrained in place): the state
        # says nothing about this run.
        progress(f"{path} was fine-tuned from other initial weights; starting over")
        return None
    return state


def finetune(
    student: Student,
    items: list[VideoItem],
    protocol: ClipProtocol,
    settings: FinetuneSettings,
    *,
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
    rank, world = _rank_world()
    student.to(device)
    optimizer = torch.optim.SGD(
        student.parameters(),
        lr=settings.lr,
        momentum=MOMENTUM,
        weight_decay=settings.weight_decay,
    )
    state_path = state_dir / STATE_NAME
    start_epoch = 0
    state = _load_state(state_path, fingerprint, init_weights, progress)
    if state is not None:
        student.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epochs_done"])
        progress(f"resuming fine-tuning from {state_path} after epoch {start_epoch}")
    if start_epoch >= settings.epochs:
        return student

    dataset = TrainClips(items, protocol, seed=settings.seed)
    sampler: DistributedSampler[int] | None = (
        DistributedSampler(dataset, num_replicas=world, rank=rank, seed=settings.seed)
        if world > 1
        else None
    )
    per_rank = max(settings.batch_size // world, 1)
    model: nn.Module = student
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(student, device_ids=ids)
    use_amp = settings.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    # Flow workers run OpenCV; its thread count can only be lowered here, before they fork.
    prepare_workers(settings.workers)
    steps_per_epoch = math.ceil(len(sampler if sampler is not None else dataset) / per_rank)
    total = steps_per_epoch * (settings.epochs - start_epoch)
    done, began = 0, time.monotonic()
    proc = Process(rank, world)
    with StopSignals() as signals:
        for epoch in range(start_epoch, settings.epochs):
            lr = settings.lr * 0.5 * (1 + math.cos(math.pi * epoch / settings.epochs))
            for group in optimizer.param_groups:
                group["lr"] = lr
            dataset.set_epoch(epoch)
            if sampler is not None:
                sampler.set_epoch(epoch)
            loader = DataLoader(
                dataset,
                batch_size=per_rank,
                shuffle=sampler is None,
                sampler=sampler,
                num_workers=settings.workers,
                generator=torch.Generator().manual_seed(settings.seed * 100003 + epoch),
                drop_last=False,
                worker_init_fn=ShieldedWorkerInit(),  # signals to the group reach us alone
            )
            model.train()
            loss_sum, seen = 0.0, 0
            batches = iter(loader)
            while True:
                # Every stop decision (a fault, a signal) is taken by all ranks together, so no
                # rank is left waiting in DDP's all-reduce.
                fault: Exception | None = None
                try:
                    clips, labels = next(batches)  # (B, T, H, W, 3) uint8 or (B, T, H, W, 2)
                except StopIteration:
                    break  # every rank's sampler has the same length
                except Exception as exc:
                    fault = exc
                signum = agree_to_stop(proc, signals, fault)
                if signum is not None:
                    raise Interrupted(
                        f"{signal.Signals(signum).name} in fine-tuning epoch {epoch + 1} of "
                        f"{settings.epochs}: finished epochs ({epoch}) are kept in {state_path}; "
                        "run the same command again to resume",
                        signum,
                    )
                try:
                    # contiguous: the permuted layout would give DDP gradients of mismatched
                    # strides
                    x = student.normalize(clips.to(device, non_blocking=True)).contiguous()
                    labels = labels.to(device)  # x: (B, C, T, H, W)
                    with torch.autocast(
                        device_type=device.type, dtype=torch.float16, enabled=use_amp
                    ):
                        loss = nn.functional.cross_entropy(model(x)[HEAD], labels)
                    if not torch.isfinite(loss):
                        raise NonFiniteLossError(
                            f"fine-tuning loss is {loss.item()} at epoch {epoch + 1}"
                        )
                except Exception as exc:
                    fault = exc
                agree_to_stop(proc, None, fault)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                loss_sum += loss.item() * len(labels)
                seen += len(labels)
                done += 1
            elapsed = time.monotonic() - began
            eta = eta_seconds(done, total, elapsed)
            if rank == 0:
                progress(
                    f"epoch {epoch + 1}/{settings.epochs}  loss {loss_sum / max(seen, 1):.4f}  "
                    f"lr {lr:.2e}  elapsed {format_duration(elapsed)}  ETA {format_duration(eta)}"
                )
                atomic_torch_save(
                    state_path,
                    {
                        "fingerprint": fingerprint,
                        "init_weights": init_weights,
                        "epochs_done": epoch + 1,
                        "model": student.state_dict(),
                        "optimizer": optimizer.state_dict(),
                    },
                )
            if world > 1:
                dist.barrier()
    return student


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
