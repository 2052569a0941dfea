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
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from distinit.pipeline.clip_rules import input_channels
from distinit.pipeline.directory_lock import lock_run_directory
from distinit.pipeline.errors import (
    CheckpointError,
    ConfigError,
    NonFiniteLossError,
)
from distinit.pipeline.frame_source import FrameSource, open_frame_source
from distinit.pipeline.shards import ShardSet
from distinit.pipeline.stopping import ShieldedWorkerInit, StopSignals, interrupted
from distinit.pipeline.views import ViewSet
from distinit.train import distributed
from distinit.train.bad_clips import BadClipCount, TolerantClips, failures
from distinit.train.checkpoint import (
    FinalCheckpoint,
    InputRecipe,
    load_init_weights,
    save_final,
)
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
from distinit.train.step import Trainee, agreed, amp_enabled, autocast, next_batch
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


def open_targets(cfg: TrainConfig, shards: ShardSet | None = None) -> tuple[ShardSet, FrameSource]:
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
        lock = lock_run_directory(Path(cfg.out), "train", ctx.process)
        try:
            with StopSignals() as signals:
                return _train(cfg, ctx, progress, signals, resume_state, announce, targets)
        finally:
            if lock is not None:
                lock.release()
    finally:
        distributed.teardown(ctx)


@dataclass
class _Run:
    """What one invocation trains: the clips, the student and its optimisation state."""

    shards: ShardSet
    dataset: ClipDataset
    shard_set: dict[str, Any]  # which clip each step draws depends on it
    teachers: list[dict[str, Any]]  # what last.pt and final.pt record
    heads: dict[str, int]
    student: Student
    trainee: Trainee
    use_amp: bool
    total: int
    start: int = 0
    earlier_s: float = 0.0  # training time of earlier invocations (last.pt records it)
    began: float = 0.0  # time.monotonic() when this invocation's first step began

    def elapsed(self) -> float:
        """Training time of the whole run, earlier invocations included."""
        return self.earlier_s + time.monotonic() - self.began

    @property
    def scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        assert self.trainee.scheduler is not None  # distillation always has a schedule
        return self.trainee.scheduler

    def save_last(self, cfg: TrainConfig, step: int) -> None:
        save_last(
            Path(cfg.out) / LAST_NAME,
            {
                "step": step,
                "elapsed_s": self.elapsed(),  # a resumed run's progress counts the time spent
                "config": cfg.to_json(),
                "teachers": json.dumps(self.teachers),  # the targets' identity: weights, recipe
                "shard_set": json.dumps(self.shard_set),
                **self.trainee.state_dicts(_TRAINING_STATE),
                "rng": rng_state(),
            },
        )


_TRAINING_STATE = ("model", "optimizer", "scheduler", "scaler")  # what last.pt holds


def _set_up(
    cfg: TrainConfig,
    ctx: distributed.DistContext,
    resume_state: dict[str, Any] | None,
    targets: tuple[ShardSet, FrameSource] | None,
) -> _Run:
    shards, frames = open_targets(cfg) if targets is None else targets
    global_batch = cfg.batch_size * ctx.process.world_size
    spec = clip_spec(cfg, shards.views)
    dataset = ClipDataset(shards, frames, spec, seed=cfg.seed, global_batch=global_batch)
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
    student = _student(cfg, heads, ctx)
    use_amp = amp_enabled(cfg.amp, ctx.device)
    optimizer = build_optimizer(cfg, student)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, cfg.warmup_steps, cfg.schedule)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    run = _Run(
        shards=shards,
        dataset=dataset,
        shard_set=shard_set_fingerprint(shards),
        teachers=[t.to_json() for t in shards.teachers],
        heads=heads,
        student=student,
        trainee=Trainee(student, optimizer, scaler, scheduler),
        use_amp=use_amp,
        total=total,
    )
    last_path = Path(cfg.out) / LAST_NAME
    if last_path.exists():
        if resume_state is None:
            resume_state = check_resume(last_path, cfg, run.teachers, run.shard_set)
        run.start = _resume(last_path, resume_state, cfg, run.trainee, total)
        run.earlier_s = float(resume_state.get("elapsed_s", 0.0))
        log.info("resuming %s from step %d of %d", cfg.out, run.start, total)
    return run


def _student(cfg: TrainConfig, heads: dict[str, int], ctx: distributed.DistContext) -> Student:
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank and every run
    student = Student(cfg.student, heads, in_channels=input_channels(cfg.modality))
    if cfg.init_from is not None:  # weights only; a resumed run's last.pt overrides them
        taken = load_init_weights(student, cfg.init_from)
        log.info("initialised from %s (heads taken over: %s)", cfg.init_from, taken or "none")
    synced = distributed.sync_batchnorm(student, ctx)  # batch norm layers replaced in place
    assert synced is student
    return student.to(ctx.device)


def _loader(
    cfg: TrainConfig, ctx: distributed.DistContext, dataset: ClipDataset, start: int, end: int
) -> DataLoader[dict[str, Any]]:
    """The batches of steps ``start..end`` for this rank."""
    prepare_workers(cfg.workers)
    return DataLoader(
        TolerantClips(dataset),
        batch_size=cfg.batch_size,
        sampler=StepSampler(start, end, cfg.batch_size, ctx.process.rank, ctx.process.world_size),
        num_workers=cfg.workers,
        # Out of the job's process group: a signal to the whole group (Slurm, `kill -TERM
        # -PGID`, Ctrl-C) reaches this process alone, which saves before the workers stop.
        worker_init_fn=ShieldedWorkerInit(worker_init),
        pin_memory=ctx.device.type == "cuda",
    )


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
    run = _set_up(cfg, ctx, resume_state, targets)
    start, total = run.start, run.total
    if ctx.process.is_main:
        out.mkdir(parents=True, exist_ok=True)
        truncate_log(out / LOG_NAME, start)
        if announce is not None:
            announce(start, total)
    run.began = time.monotonic()
    # Each rank keeps its buffers: batch norm is synchronised over the global batch already.
    model = distributed.wrap(run.student, ctx.process, ctx.device, broadcast_buffers=False)
    # --stop-after counts this invocation's steps, so rerunning one command makes progress.
    end = min(total, start + cfg.stop_after) if cfg.stop_after is not None else total
    batches = iter(_loader(cfg, ctx, run.dataset, start, end))
    steps = _StepLog(cfg, ctx, run, end, progress)
    bad, done = BadClipCount(cfg.max_bad_clips), start
    run.student.train()
    try:
        for step in range(start, end):
            t0 = time.perf_counter()
            batch, signum = next_batch(batches, ctx.process, signals)
            if batch is None or signum is not None:
                break
            t1 = time.perf_counter()
            entry = _distill_step(cfg, ctx, run, model, batch, step, bad)
            done = step + 1
            steps.write(done, entry, t0, t1, bad.total)
            if done % cfg.save_every == 0 or done == end:
                _save(cfg, ctx, run, done)
        if done < end:  # stopped by a signal (here or on another rank): keep every finished step
            _save(cfg, ctx, run, done)
            raise interrupted(
                f" at step {done} of {total}", f"saved {out / LAST_NAME}", signals.received
            )
        if ctx.process.is_main and end > start:
            plot_loss(out / LOG_NAME, out / CURVE_NAME)
    finally:
        steps.close()
    return RunResult(
        steps_done=max(end, start),
        total_steps=total,
        resumed_from=start,
        first_loss=steps.first_loss,
        last_loss=steps.last_loss,
        videos=len(run.dataset.videos),
        short_videos=run.dataset.short_videos,
        final_path=_finish(cfg, ctx, run) if end == total else None,
        bad_clips=bad.total,
    )


def _save(cfg: TrainConfig, ctx: distributed.DistContext, run: _Run, step: int) -> None:
    if ctx.process.is_main:
        run.save_last(cfg, step)


class _StepLog:
    """Where each finished step is reported, on rank 0: a line of ``log.jsonl`` every
    ``--log-every`` steps and at the last one, and the progress callback at every step."""

    def __init__(
        self,
        cfg: TrainConfig,
        ctx: distributed.DistContext,
        run: _Run,
        end: int,
        progress: ProgressFn | None,
    ) -> None:
        self.runlog = (
            RunLog(Path(cfg.out) / LOG_NAME, tensorboard=cfg.tensorboard, keep_until_step=run.start)
            if ctx.process.is_main
            else None
        )
        self.progress = progress if ctx.process.is_main else None
        self.global_batch = cfg.batch_size * ctx.process.world_size
        self.log_every, self.end, self.run = cfg.log_every, end, run
        self.first_loss: float | None = None  # of this invocation
        self.last_loss: float | None = None

    def write(self, done: int, entry: dict[str, Any], t0: float, t1: float, bad: int) -> None:
        """Step ``done`` (1-based), which fetched its batch from ``t0`` to ``t1`` and computed
        until now; ``bad``: clips replaced so far in this invocation."""
        t2 = time.perf_counter()
        self.last_loss = entry["loss"]
        self.first_loss = self.last_loss if self.first_loss is None else self.first_loss
        clips_per_s = self.global_batch / (t2 - t0)
        if self.runlog is not None and (done % self.log_every == 0 or done == self.end):
            epoch = (done - 1) // self.run.dataset.steps_per_epoch
            timing = {"clips_per_s": clips_per_s, "data_s": t1 - t0, "compute_s": t2 - t1}
            self.runlog.write({"step": done, "epoch": epoch, **entry, **timing, "bad_clips": bad})
        if self.progress is not None:
            loss, lr, elapsed = entry["loss"], entry["lr"], self.run.elapsed()
            self.progress(StepReport(done, self.run.total, loss, lr, clips_per_s, elapsed))

    def close(self) -> None:
        if self.runlog is not None:
            self.runlog.close()


def _distill_step(
    cfg: TrainConfig,
    ctx: distributed.DistContext,
    run: _Run,
    model: nn.Module,
    batch: dict[str, Any],
    step: int,
    bad: BadClipCount,
) -> dict[str, Any]:
    """One optimizer step on ``batch``; returns what the log records of it (losses averaged over
    ranks). Too many bad clips over the run stop it, with the steps before saved."""
    for message in failures(batch):
        log.warning("bad clip replaced at step %d: %s", step + 1, message)
    # (B, T, H, W, 3) uint8 for rgb, (B, T, H, W, 2) float32 for flow
    clips = batch["clip"].to(ctx.device, non_blocking=True)
    targets = {k: v.to(ctx.device, non_blocking=True) for k, v in batch["targets"].items()}
    kinds = {t.key: t.kind for t in run.shards.teachers}
    weights = {t: cfg.weight_of(t) for t in run.heads}
    lr = float(run.scheduler.get_last_lr()[0])

    def losses() -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(ctx.device, run.use_amp):
            # contiguous: the permuted layout would give DDP gradients of mismatched strides
            outputs = model(run.student.normalize(clips).contiguous())  # head -> (B, C)
        loss, per_teacher = distillation_loss(
            outputs, targets, cfg.temperature, weights, kinds, cfg.embedding_loss
        )
        mine = torch.stack([loss.detach(), *(per_teacher[t].detach() for t in run.heads)])
        if not torch.isfinite(mine).all():
            raise NonFiniteLossError(
                f"non-finite loss at step {step + 1} (lr {lr:.3g}): "
                f"{dict(zip(['total', *run.heads], mine.tolist(), strict=True))}; "
                "lower --lr or raise --warmup-steps"
            )
        return loss, mine

    loss, mine = agreed(losses, ctx.process)
    # The mean losses, and the bad clips summed, over ranks.
    n_bad = torch.tensor([float(len(failures(batch)))], device=ctx.device)
    reported = distributed.mean_over_ranks(torch.cat([mine, n_bad]), ctx)
    too_many = bad.add(round(float(reported[-1]) * ctx.process.world_size), step + 1)
    if too_many is not None:
        _save(cfg, ctx, run, step)  # the steps before are good: keep them
        raise too_many
    grad_norm = run.trainee.step(loss, cfg.grad_clip)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    values = reported[:-1].tolist()
    return {
        "loss": values[0],
        "loss_per_teacher": dict(zip(run.heads, values[1:], strict=True)),
        "lr": lr,
        "grad_norm": grad_norm,
    }


def _finish(cfg: TrainConfig, ctx: distributed.DistContext, run: _Run) -> Path:
    """Write ``final.pt`` (rank 0) once every step is done; ``last.pt`` goes with
    ``--drop-resume-state``, only once ``final.pt`` is safely on disk."""
    final_path = Path(cfg.out) / FINAL_NAME
    if ctx.process.is_main:
        save_final(
            final_path,
            FinalCheckpoint(
                student=cfg.student,
                heads=run.heads,
                state_dict=run.student.state_dict(),
                config=cfg.to_json(),
                teachers=run.teachers,
                modality=cfg.modality,
                in_channels=input_channels(cfg.modality),
                step=run.total,
                recipe=InputRecipe.of_run(cfg, run.shards.provenance.get("fps")),
                shard_set=run.shard_set,
                code_version=version("distinit"),
            ),
        )
        if cfg.drop_resume_state:
            (Path(cfg.out) / LAST_NAME).unlink(missing_ok=True)
    return final_path


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
    trainee: Trainee,
    total: int,
) -> int:
    """Restore ``last.pt``'s training state; returns the step it was saved at."""
    trainee.load_state_dicts(path, state, _TRAINING_STATE)
    restore_rng(state["rng"])
    step = int(state["step"])
    if step > total:
        raise CheckpointError(
            f"{path}: the run has already done {step} steps, more than the {total} asked for; "
            "give --max-steps of at least that, or use a new --out directory"
        )
    # A new run length (--max-steps/--epochs) changes the schedule from this step on; set the
    # step's lr from it (with the length unchanged this is the value just restored).
    optimizer, scheduler = trainee.optimizer, trainee.scheduler
    assert scheduler is not None  # distillation always has a schedule
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = base * lr_factor(step, total, cfg.warmup_steps, cfg.schedule)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what the log shows
    return step
