"""The training loop of ``distinit train``: clips in, student weights out.

Everything a run does is a function of its config: clip sampling is keyed by ``(seed, step,
position)`` (see :mod:`distinit.train.clips`), the student is initialised from ``seed``, and
``last.pt`` carries the optimizer, schedule, scaler and RNG state, so a run resumed after
``kill -9`` and a DDP run on CPU end with the weights of one uninterrupted process.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from distinit.pipeline import runtime
from distinit.pipeline.errors import (
    CheckpointError,
    ConfigError,
    Interrupted,
    NonFiniteLossError,
)
from distinit.pipeline.frame_source import FrameSource, open_frame_source
from distinit.pipeline.shards import ShardSet
from distinit.pipeline.stopping import ShieldedWorkerInit, StopSignals, agree_to_stop
from distinit.pipeline.views import ViewSet
from distinit.train import distributed
from distinit.train.bad_clips import BadClipCount, TolerantClips, failures
from distinit.train.checkpoint import (
    FinalCheckpoint,
    InputRecipe,
    load_init_weights,
    save_final,
)
from distinit.train.clip_rules import input_channels
from distinit.train.clips import (
    ClipDataset,
    ClipSpec,
    StepSampler,
    prepare_workers,
    worker_init,
)
from distinit.train.config import STEP_MILESTONES, TrainConfig
from distinit.train.loss import distillation_loss
from distinit.train.resume import (
    LAST_NAME,
    check_same_shard_set,
    load_last,
    restore_rng,
    rng_state,
    save_last,
    shard_set_fingerprint,
)
from distinit.train.runlog import CURVE_NAME, LOG_NAME, RunLog, plot_loss, truncate_log
from distinit.train.students import Student

log = logging.getLogger(__name__)

FINAL_NAME = "final.pt"


@dataclass
class RunResult:
    steps_done: int
    total_steps: int
    resumed_from: int
    first_loss: float | None  # first and last logged total loss of this invocation
    last_loss: float | None
    videos: int
    short_videos: int
    final_path: Path | None  # None when stopped early with --stop-after
    bad_clips: int = 0  # clips of this invocation whose video did not decode (replaced)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak lr for optimizer step ``step`` (0-based) of ``total``.

    Linear warm-up from ``1/(warmup+1)`` over ``warmup`` steps, then cosine decay to 0 at
    ``total`` or x0.1 at each of :data:`STEP_MILESTONES` (fractions of ``total``).
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 0.1 ** sum(step >= int(m * total) for m in STEP_MILESTONES)


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def clip_spec(cfg: TrainConfig, views: ViewSet | None, *, augment: bool = True) -> ClipSpec:
    """The clips of a run over shards with ``views`` (``shards.views``)."""
    return ClipSpec(
        clip_len=cfg.clip_len,
        frame_stride=cfg.frame_stride,
        resize=cfg.resize,
        crop=cfg.crop,
        temperature=cfg.temperature,
        target_frames=cfg.target_frames,
        augment=augment,
        modality=cfg.modality,
        views=views,
    )


def open_targets(
    cfg: TrainConfig, shards: ShardSet | None = None
) -> tuple[ShardSet, FrameSource]:
    """The shard set and where its clips' frames come from, with the teacher weights checked
    against the shards. ``shards``: ``ShardSet(cfg.targets)`` to a caller that has read it
    already (else it is read here)."""
    shards = ShardSet(cfg.targets) if shards is None else shards
    keys = [t.key for t in shards.teachers]
    unknown = sorted(set(dict(cfg.teacher_weights)) - set(keys))
    if unknown:
        raise ConfigError(f"--teacher-weight names {unknown}, but the shards hold {keys}")
    if not keys:
        raise ConfigError(
            f"{cfg.targets}: a frames-only store (extract --teacher none) holds no targets to "
            "learn; extract with a teacher to train"
        )
    if not any(cfg.weight_of(t) > 0 for t in keys):
        raise ConfigError("every teacher has weight 0: nothing to learn")
    return shards, open_frame_source(shards, cfg.resize, videos=cfg.videos, prefer=cfg.frames)


@dataclass(frozen=True)
class StepReport:
    """What the command shows while training (rank 0 only)."""

    step: int
    total: int
    loss: float
    lr: float
    clips_per_s: float
    elapsed_s: float  # training time of the whole run, earlier invocations included


ProgressFn = Callable[[StepReport], None]
# Called once the run directory is this job's and the start step known: (start, total).
AnnounceFn = Callable[[int, int], None]


def run(
    cfg: TrainConfig,
    progress: ProgressFn | None = None,
    resume_state: dict[str, Any] | None = None,
    announce: AnnounceFn | None = None,
    targets: tuple[ShardSet, FrameSource] | None = None,
) -> RunResult:
    """Train into ``cfg.out``, which this job alone writes (a second job is refused, before
    ``announce`` says anything). ``resume_state``: ``RUN/last.pt`` as :func:`check_resume`
    returned it, and ``targets``: what :func:`open_targets` returned, to a caller that has read
    them already (else they are read here)."""
    ctx = distributed.setup(cfg.device)
    try:
        lock = runtime.lock_run_directory(Path(cfg.out), "train", ctx.process)
        try:
            with StopSignals() as signals:
                return _train(cfg, ctx, progress, signals, resume_state, announce, targets)
        finally:
            if lock is not None:
                lock.release()
    finally:
        distributed.teardown(ctx)


def _train(
    cfg: TrainConfig,
    ctx: distributed.DistContext,
    progress: ProgressFn | None,
    signals: StopSignals,
    resume_state: dict[str, Any] | None,
    announce: AnnounceFn | None,
    targets: tuple[ShardSet, FrameSource] | None,
) -> RunResult:
    out = Path(cfg.out)
    shards, frames = open_targets(cfg) if targets is None else targets
    global_batch = cfg.batch_size * ctx.world_size
    spec = clip_spec(cfg, shards.views)
    dataset = ClipDataset(shards, frames, spec, seed=cfg.seed, global_batch=global_batch)
    shard_set = shard_set_fingerprint(shards)
    total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * dataset.steps_per_epoch
    if dataset.short_videos:
        log.warning(
            "%d of %d videos are shorter than a clip (%d frames at stride %d); their clips loop",
            dataset.short_videos,
            len(dataset.videos),
            cfg.clip_len,
            cfg.frame_stride,
        )
    heads = {t.key: t.num_classes for t in shards.teachers}
    kinds = {t.key: t.kind for t in shards.teachers}
    weights = {t: cfg.weight_of(t) for t in heads}

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank and every run
    in_channels = input_channels(cfg.modality)
    student = Student(cfg.student, heads, in_channels=in_channels)
    if cfg.init_from is not None:  # weights only; a resumed run's last.pt overrides them below
        taken = load_init_weights(student, cfg.init_from)
        log.info("initialised from %s (heads taken over: %s)", cfg.init_from, taken or "none")
    student = distributed.sync_batchnorm(student, ctx).to(ctx.device)
    use_amp = cfg.amp and ctx.device.type == "cuda"
    optimizer = build_optimizer(cfg, student)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, cfg.warmup_steps, cfg.schedule)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start = 0
    earlier_s = 0.0  # training time of earlier invocations (last.pt records it)
    last_path = out / LAST_NAME
    teachers = [t.to_json() for t in shards.teachers]  # what last.pt and final.pt record
    if last_path.exists():
        if resume_state is None:
            resume_state = check_resume(last_path, cfg, teachers, shard_set)
        start = _resume(last_path, resume_state, cfg, student, optimizer, scheduler, scaler, total)
        earlier_s = float(resume_state.get("elapsed_s", 0.0))
        log.info("resuming %s from step %d of %d", out, start, total)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        truncate_log(out / LOG_NAME, start)
        if announce is not None:
            announce(start, total)
    began = time.monotonic()

    def run_elapsed() -> float:
        return earlier_s + time.monotonic() - began

    model: nn.Module = student
    if ctx.distributed:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        model = DistributedDataParallel(student, device_ids=device_ids, broadcast_buffers=False)

    # --stop-after counts this invocation's steps, so rerunning one command makes progress.
    end = min(total, start + cfg.stop_after) if cfg.stop_after is not None else total
    prepare_workers(cfg.workers)
    loader = DataLoader(
        TolerantClips(dataset),
        batch_size=cfg.batch_size,
        sampler=StepSampler(start, end, cfg.batch_size, ctx.rank, ctx.world_size),
        num_workers=cfg.workers,
        # Out of the job's process group: a signal to the whole group (Slurm, `kill -TERM
        # -PGID`, Ctrl-C) reaches this process alone, which saves before the workers stop.
        worker_init_fn=ShieldedWorkerInit(worker_init),
        pin_memory=ctx.device.type == "cuda",
    )
    runlog = (
        RunLog(out / LOG_NAME, tensorboard=cfg.tensorboard, keep_until_step=start)
        if ctx.is_main
        else None
    )
    bad = BadClipCount(cfg.max_bad_clips)
    first_loss: float | None = None
    last_loss: float | None = None
    batches: Iterator[dict[str, Any]] = iter(loader)
    student.train()
    done = start

    def save(step: int) -> None:
        if ctx.is_main:
            _save_last(
                last_path,
                cfg,
                teachers,
                shard_set,
                (student, optimizer, scheduler, scaler),
                step,
                run_elapsed(),
            )

    try:
        for step in range(start, end):
            # Every stop decision (a fault, a signal) is taken by all ranks together, before
            # the step's first collective, so no rank is left waiting in one.
            t0 = time.perf_counter()
            fault: Exception | None = None
            try:
                batch = next(batches)
            except Exception as exc:
                fault = exc
            if agree_to_stop(ctx.process, signals, fault) is not None:
                break
            t1 = time.perf_counter()
            for message in failures(batch):
                log.warning("bad clip replaced at step %d: %s", step + 1, message)
            # (B, T, H, W, 3) uint8 for rgb, (B, T, H, W, 2) float32 for flow
            clips = batch["clip"].to(ctx.device, non_blocking=True)
            targets = {k: v.to(ctx.device, non_blocking=True) for k, v in batch["targets"].items()}
            try:
                with torch.autocast(ctx.device.type, dtype=torch.float16, enabled=use_amp):
                    # contiguous: the permuted layout would give DDP gradients of mismatched
                    # strides
                    outputs = model(student.normalize(clips).contiguous())  # head -> (B, C)
                loss, per_teacher = distillation_loss(
                    outputs, targets, cfg.temperature, weights, kinds, cfg.embedding_loss
                )
                mine = torch.stack([loss.detach(), *(per_teacher[t].detach() for t in heads)])
                if not torch.isfinite(mine).all():
                    raise NonFiniteLossError(
                        f"non-finite loss at step {step + 1} (lr "
                        f"{scheduler.get_last_lr()[0]:.3g}): "
                        f"{dict(zip(['total', *heads], mine.tolist(), strict=True))}; "
                        "lower --lr or raise --warmup-steps"
                    )
            except Exception as exc:
                fault = exc
            agree_to_stop(ctx.process, None, fault)
            # The mean losses, and the bad clips summed, over ranks.
            n_bad = torch.tensor([float(len(failures(batch)))], device=ctx.device)
            reported = distributed.mean_over_ranks(torch.cat([mine, n_bad]), ctx)
            too_many = bad.add(round(float(reported[-1]) * ctx.world_size), step + 1)
            if too_many is not None:
                save(done)  # the steps before are good: keep them
                raise too_many
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            grad_norm = (
                float(nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip))
                if cfg.grad_clip is not None
                else float("nan")
            )
            lr = float(scheduler.get_last_lr()[0])
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            t2 = time.perf_counter()
            done = step + 1
            values = reported[:-1].tolist()
            last_loss = values[0]
            first_loss = values[0] if first_loss is None else first_loss
            if runlog is not None and (done % cfg.log_every == 0 or done == end):
                runlog.write(
                    {
                        "step": done,
                        "epoch": step // dataset.steps_per_epoch,
                        "loss": values[0],
                        "loss_per_teacher": dict(zip(heads, values[1:], strict=True)),
                        "lr": lr,
                        "grad_norm": grad_norm,
                        "clips_per_s": global_batch / (t2 - t0),
                        "data_s": t1 - t0,
                        "compute_s": t2 - t1,
                        "bad_clips": bad.total,  # replaced so far in this invocation
                    }
                )
            if ctx.is_main and progress is not None:
                report = StepReport(
                    done, total, values[0], lr, global_batch / (t2 - t0), run_elapsed()
                )
                progress(report)
            if done % cfg.save_every == 0 or done == end:
                save(done)
        if done < end:
            # Stopped by a signal (here or on another rank): keep every finished step.
            save(done)
            signum = signals.received or signal.SIGTERM
            raise Interrupted(
                f"{signal.Signals(signum).name} at step {done} of {total}: saved {last_path}; "
                "run the same command again to resume",
                signum,
            )
        if ctx.is_main and end > start:
            plot_loss(out / LOG_NAME, out / CURVE_NAME)
    finally:
        if runlog is not None:
            runlog.close()

    final_path: Path | None = None
    if end == total:
        final_path = out / FINAL_NAME
        if ctx.is_main:
            save_final(
                final_path,
                FinalCheckpoint(
                    student=cfg.student,
                    heads=heads,
                    state_dict=student.state_dict(),
                    config=cfg.to_json(),
                    teachers=teachers,
                    modality=cfg.modality,
                    in_channels=in_channels,
                    step=total,
                    recipe=InputRecipe.of_run(cfg, shards.provenance.get("fps")),
                    shard_set=shard_set,
                    code_version=version("distinit"),
                ),
            )
            if cfg.drop_resume_state:  # only once final.pt is safely on disk
                last_path.unlink(missing_ok=True)
    return RunResult(
        steps_done=max(end, start),
        total_steps=total,
        resumed_from=start,
        first_loss=first_loss,
        last_loss=last_loss,
        videos=len(dataset.videos),
        short_videos=dataset.short_videos,
        final_path=final_path,
        bad_clips=bad.total,
    )


def _save_last(
    path: Path,
    cfg: TrainConfig,
    teachers: list[dict[str, Any]],
    shard_set: dict[str, Any],
    state: tuple[
        nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, torch.amp.GradScaler
    ],
    step: int,
    elapsed_s: float,
) -> None:
    student, optimizer, scheduler, scaler = state
    save_last(
        path,
        {
            "step": step,
            "elapsed_s": elapsed_s,  # so a resumed run's progress counts the time already spent
            "config": cfg.to_json(),
            "teachers": json.dumps(teachers),  # the targets' identity: weights hash, recipe
            "shard_set": json.dumps(shard_set),  # which clip each step draws depends on it
            "model": student.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_state(),
        },
    )


def _target_key(teacher: dict[str, Any]) -> str:
    return f"{teacher['name']}:{teacher.get('kind', 'logits')}"


def check_resume(
    path: Path, cfg: TrainConfig, teachers: list[dict[str, Any]], shard_set: dict[str, Any]
) -> dict[str, Any]:
    """``last.pt`` at ``path`` if this run may continue it (same config, same teachers' targets,
    same shard set); else the one-line refusal. The command calls it before it announces the
    run and hands the state to :func:`run`."""
    state = load_last(path)
    saved_set = state.get("shard_set")
    check_same_shard_set(path, json.loads(saved_set) if saved_set else None, shard_set)
    mismatches = cfg.resume_mismatches(state["config"])
    if mismatches:
        saved = state["config"]
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {cfg.to_json().get(k)!r}" for k in mismatches)
        raise CheckpointError(
            f"{path} was written by a run with a different config ({shown}); "
            "use a new --out directory or the original options"
        )
    # Targets made again by other teacher weights (or preprocessing) at the same --targets would
    # mix two teachers' targets into one run.
    saved_teachers = {_target_key(t): t for t in json.loads(state.get("teachers", "[]"))}
    changed = [
        _target_key(t)
        for t in teachers
        if _target_key(t) in saved_teachers and saved_teachers[_target_key(t)] != t
    ]
    if changed or set(saved_teachers) != {_target_key(t) for t in teachers}:
        raise CheckpointError(
            f"{path} was trained on targets of other teachers or teacher weights "
            f"({', '.join(changed) or 'other teachers'} changed since); use a new --out directory"
        )
    return state


def _resume(
    path: Path,
    state: dict[str, Any],
    cfg: TrainConfig,
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    total: int,
) -> int:
    try:
        student.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: training state does not fit this run ({exc})") from exc
    restore_rng(state["rng"])
    step = int(state["step"])
    if step > total:
        raise CheckpointError(
            f"{path}: the run has already done {step} steps, more than the {total} asked for; "
            "give --max-steps of at least that, or use a new --out directory"
        )
    # A new run length (--max-steps/--epochs) changes the schedule from this step on; set the
    # step's lr from it (with the length unchanged this is the value just restored).
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = base * lr_factor(step, total, cfg.warmup_steps, cfg.schedule)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what the log shows
    return step
