"""``distinit train``: the click command. Options mirror :class:`TrainConfig`'s fields.

Only click and the config are imported at module level; torch-heavy modules load inside the
command body.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from distinit.pipeline.cli import FRAME_SIZE
from distinit.pipeline.errors import ConfigError, ShardError
from distinit.pipeline.progress import ProgressLine, eta_seconds, format_duration
from distinit.train.config import TrainConfig, parse_teacher_weight

if TYPE_CHECKING:
    from distinit.pipeline.shards import ShardSet

_D = TrainConfig.__dataclass_fields__
PROGRESS_EVERY_S = 5.0  # seconds between progress lines when stderr is not a terminal


def _default(name: str) -> object:
    return _D[name].default


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--targets",
    required=True,
    type=click.Path(file_okay=False),
    help="Shard directory written by `distinit extract`.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Run directory (log.jsonl, loss.png, last.pt, final.pt). "
    "An existing last.pt there is resumed (same options; --max-steps may grow).",
)
@click.option(
    "--videos",
    type=click.Path(file_okay=False),
    default=None,
    help="Videos directory the shard ids are relative to. Default: the one recorded by extract. "
    "Only read when the shards have no frame store (or with --frames source).",
)
@click.option(
    "--frames",
    type=click.Choice(["auto", "store", "source"]),
    default=_default("frames"),
    show_default=True,
    help="Where clip frames come from: the shards' frame store (by row, no source videos "
    "needed), the source videos (decoded by stored timestamps), or auto: the store when the "
    "shards have one at --resize.",
)
@click.option(
    "--student",
    default=_default("student"),
    show_default=True,
    help="Student network: r3d_18, mc3_18, r2plus1d_18, s3d, mvit_v2_s (16x224x224 clips only: "
    "--clip-len 16 --crop 224 --resize 298x224) or swin3d_t.",
)
@click.option(
    "--modality",
    type=click.Choice(["rgb", "flow"]),
    default=_default("modality"),
    show_default=True,
    help="What the student sees: RGB frames, or optical flow (OpenCV DIS) between them. "
    "The teachers' targets are the same RGB-frame targets either way.",
)
@click.option(
    "--clip-len", type=int, default=_default("clip_len"), show_default=True, help="Frames per clip."
)
@click.option(
    "--frame-stride",
    type=int,
    default=_default("frame_stride"),
    show_default=True,
    help="Extracted frames (shard rows) between consecutive clip frames.",
)
@click.option(
    "--resize",
    type=FRAME_SIZE,
    default="171x128",
    show_default=True,
    help="Frame size WIDTHxHEIGHT in pixels, stretched, before cropping.",
)
@click.option(
    "--crop",
    type=int,
    default=_default("crop"),
    show_default=True,
    help="Square crop side in pixels (random for training).",
)
@click.option(
    "--batch-size",
    type=int,
    default=_default("batch_size"),
    show_default=True,
    help="Clips per process per step (global batch = this x processes).",
)
@click.option(
    "--workers",
    type=int,
    default=_default("workers"),
    show_default=True,
    help="Data-loading worker processes per training process (0: load in the main process).",
)
@click.option(
    "--optimizer",
    type=click.Choice(["sgd", "adamw"]),
    default=_default("optimizer"),
    show_default=True,
    help="SGD with momentum, or AdamW.",
)
@click.option(
    "--lr",
    type=float,
    default=_default("lr"),
    show_default=True,
    help="Peak learning rate (per global batch).",
)
@click.option(
    "--momentum",
    type=float,
    default=_default("momentum"),
    show_default=True,
    help="SGD momentum (unused by AdamW).",
)
@click.option(
    "--weight-decay",
    type=float,
    default=_default("weight_decay"),
    show_default=True,
    help="Weight decay (L2 for SGD, decoupled for AdamW).",
)
@click.option(
    "--schedule",
    type=click.Choice(["cosine", "step"]),
    default=_default("schedule"),
    show_default=True,
    help="After warm-up: cosine to 0, or x0.1 at 50% and 75% of the run.",
)
@click.option(
    "--warmup-steps",
    type=int,
    default=_default("warmup_steps"),
    show_default=True,
    help="Steps of linear lr warm-up.",
)
@click.option(
    "--epochs",
    type=int,
    default=_default("epochs"),
    show_default=True,
    help="Run length in epochs (one clip per video each); ignored with --max-steps.",
)
@click.option(
    "--max-steps",
    type=int,
    default=None,
    help="Run length in optimizer steps; overrides --epochs. Default: from --epochs. "
    "On an existing run (RUN/last.pt, even a finished one) a new length continues it from the "
    "steps done to the new end: the lr schedule is recomputed for the new length from that "
    "step on (cosine: lr rises to the new curve's value there, then decays to 0 at the new "
    "end) and final.pt is rewritten; fewer steps than already done is refused.",
)
@click.option(
    "--init-from",
    type=click.Path(dir_okay=False),
    default=None,
    help="Start from the weights of another run's final.pt (same --student and --modality; "
    "heads of the same teachers are kept, others start fresh). Weights only: a new optimizer "
    "and schedule. Recorded in the run's config.",
)
@click.option(
    "--temperature",
    type=float,
    default=_default("temperature"),
    show_default=True,
    help="Softmax temperature T of teacher and student; the loss is scaled by T².",
)
@click.option(
    "--embedding-loss",
    type=click.Choice(["cosine", "smooth_l1"]),
    default=_default("embedding_loss"),
    show_default=True,
    help="Loss on embedding targets: 2 - 2cos of the L2-normalised projection and target, or "
    "smooth L1 between them scaled to unit variance per dimension.",
)
@click.option(
    "--teacher-weight",
    "teacher_weights",
    multiple=True,
    metavar="NAME=W",
    help="Weight of one target's loss (repeatable; NAME as the shards key it: the teacher for "
    "logits, NAME:embedding for an embedding). Default: 1 for every target.",
)
@click.option(
    "--target-frames",
    type=click.Choice(["mean", "random"]),
    default=_default("target_frames"),
    show_default=True,
    help="Clip target: mean of the frames' tempered teacher distributions, or one random frame's.",
)
@click.option(
    "--grad-clip",
    type=float,
    default=_default("grad_clip"),
    show_default=True,
    help="Clip the global gradient L2 norm to this; 0 disables.",
)
@click.option(
    "--amp/--no-amp",
    default=_default("amp"),
    show_default=True,
    help="Mixed precision (float16) on CUDA; never used on CPU.",
)
@click.option(
    "--device",
    default=_default("device"),
    show_default=True,
    help="auto, cpu, cuda or cuda:N (under torchrun or srun each process uses its local rank's "
    "GPU).",
)
@click.option(
    "--seed",
    type=int,
    default=_default("seed"),
    show_default=True,
    help="Seeds initial weights and every clip draw; a CPU run is repeatable.",
)
@click.option(
    "--log-every",
    type=int,
    default=_default("log_every"),
    show_default=True,
    help="Write a log.jsonl line every this many steps.",
)
@click.option(
    "--tensorboard",
    is_flag=True,
    help="Also write TensorBoard event files into RUN (losses, lr, clips/s, data and compute "
    "time, as log.jsonl has them); needs pip install 'distinit[tensorboard]'.",
)
@click.option(
    "--drop-resume-state",
    is_flag=True,
    help="Delete RUN/last.pt once final.pt is written (frees ~270 MB for r3d_18; the run then "
    "cannot be extended with a larger --max-steps/--epochs).",
)
@click.option(
    "--save-every",
    type=int,
    default=_default("save_every"),
    show_default=True,
    help="Write RUN/last.pt every this many steps (and at the end).",
)
@click.option(
    "--max-bad-clips",
    type=int,
    default=_default("max_bad_clips"),
    show_default=True,
    help="Clips whose video does not decode (under --frames source) that are replaced by "
    "another clip and counted; one more stops the run in one line. 0: stop at the first.",
)
@click.option(
    "--stop-after",
    type=int,
    default=None,
    help="Train at most this many steps in this invocation, save last.pt and exit; rerunning "
    "the same command trains the next ones (for time-limited jobs). Default: run to the end.",
)
def train(
    resize: tuple[int, int], teacher_weights: tuple[str, ...], grad_clip: float, **options: object
) -> None:
    """Stage two: distil cached teacher targets into a 3D video student.

    \b
    Example:
      distinit train --targets SHARDS --out RUN --student r2plus1d_18
    Multi-GPU / multi-process:
      torchrun --nproc_per_node=8 --no-python distinit train --targets SHARDS --out RUN
      srun --ntasks-per-node=8 distinit train --targets SHARDS --out RUN
    Ctrl-C or SIGTERM saves last.pt at the current step; the same command resumes.
    """
    if options["init_from"] is not None:  # recorded absolute: a re-run from elsewhere matches
        options["init_from"] = os.path.abspath(str(options["init_from"]))
    cfg = TrainConfig(
        resize=resize,
        teacher_weights=tuple(sorted(parse_teacher_weight(t) for t in teacher_weights)),
        grad_clip=grad_clip if grad_clip > 0 else None,
        **options,  # type: ignore[arg-type]
    )
    from distinit.pipeline.runtime import process_from_environment
    from distinit.train.loop import FINAL_NAME, StepReport, check_resume, open_targets, run
    from distinit.train.resume import LAST_NAME, shard_set_fingerprint
    from distinit.train.runlog import LOG_NAME, run_losses

    checked = _check_targets(cfg)
    if cfg.tensorboard:
        from distinit.train.events import require_tensorboard

        require_tensorboard()
    # Every input error is reported before the run is announced.
    shards, frames = open_targets(cfg, checked)
    resume_state = None  # last.pt, read once: here, and handed to the run
    if (Path(cfg.out) / FINAL_NAME).is_file() and not (Path(cfg.out) / LAST_NAME).is_file():
        # Training again from step 0 would overwrite a finished run's final.pt.
        raise ConfigError(
            f"{Path(cfg.out) / FINAL_NAME} is a finished run whose resume state ({LAST_NAME}) was "
            "dropped: it cannot be continued or extended; use a new --out"
        )
    if (Path(cfg.out) / LAST_NAME).is_file():
        resume_state = check_resume(
            Path(cfg.out) / LAST_NAME,
            cfg,
            [t.to_json() for t in shards.teachers],
            shard_set_fingerprint(shards),
        )
    if cfg.init_from is not None:
        from distinit.train.checkpoint import load_final

        init = load_final(cfg.init_from)  # a missing or foreign file: one line, before we start
        if init.student != cfg.student:
            raise ConfigError(
                f"--init-from {cfg.init_from}: its student is {init.student}, this run trains "
                f"{cfg.student}; give the same --student"
            )
    line = ProgressLine(every=PROGRESS_EVERY_S)
    started = time.monotonic()
    first_step: int | None = None  # the step this invocation started after

    def show(r: StepReport) -> None:
        nonlocal first_step
        if first_step is None:
            first_step = r.step - 1
        # The rate of this invocation; the elapsed time of the whole run.
        eta = eta_seconds(r.step - first_step, r.total - first_step, time.monotonic() - started)
        line.update(
            f"step {r.step}/{r.total}  loss {r.loss:.4f}  lr {r.lr:.3g}  "
            f"{r.clips_per_s:.1f} clips/s  elapsed {format_duration(r.elapsed_s)}  "
            f"ETA {format_duration(eta)}",
            final=r.step in (first_step + 1, r.total),
        )

    warm = f", starting from the weights of {cfg.init_from}" if cfg.init_from else ""

    def announce(start: int, total: int) -> None:  # rank 0, once the run directory is ours
        click.echo(f"training {cfg.student} ({cfg.modality}) into {cfg.out}{warm}", err=True)
        click.echo(f"frames: {frames.describe()}", err=True)
        if 0 < start < total:
            resumed = f"resuming from step {start} of {total} ({Path(cfg.out) / LAST_NAME})"
            click.echo(resumed, err=True)

    main = process_from_environment().is_main  # rank 0 alone reports
    try:
        result = run(
            cfg,
            progress=show,
            resume_state=resume_state,
            announce=announce,
            targets=(shards, frames),
        )
    finally:
        line.close()
    if not main:
        return
    click.echo(
        f"videos: {result.videos} ({result.short_videos} shorter than a clip, looped); "
        f"steps {result.resumed_from} -> {result.steps_done} of {result.total_steps}"
    )
    if result.bad_clips:
        click.echo(
            f"bad clips: {result.bad_clips} could not be decoded and were replaced by others "
            f"(at most {cfg.max_bad_clips} tolerated; the log names each)"
        )
    first, last = run_losses(Path(cfg.out) / LOG_NAME)
    if first is not None and last is not None:
        click.echo(f"loss of the run: first {first:.4f}, last {last:.4f}")
    if result.final_path is not None and result.resumed_from == result.total_steps:
        click.echo(f"already complete: {result.final_path} (nothing to train)")
    elif result.final_path is not None:
        out = Path(cfg.out)
        state = (
            "resume state deleted (--drop-resume-state)"
            if cfg.drop_resume_state
            else f"resumable state {out / 'last.pt'}"
        )
        click.echo(
            f"wrote {result.final_path}; log {out / 'log.jsonl'}, curve {out / 'loss.png'}, {state}"
        )
    else:
        click.echo(f"stopped after step {result.steps_done}; run again to continue")


def _check_targets(cfg: TrainConfig) -> ShardSet:
    """``--targets`` must be extract's output; a folder of videos gets the step it skipped.
    Returns the shard set, read once for the whole run (its headers cost time linear in the
    videos)."""
    from distinit.pipeline.shards import ShardSet
    from distinit.pipeline.video_files import find_videos

    try:
        return ShardSet(cfg.targets)
    except ShardError as exc:
        if Path(cfg.targets).is_dir() and find_videos(cfg.targets):
            raise ConfigError(
                f"--targets {cfg.targets} holds videos, not teacher targets: run `distinit "
                f"extract --videos {cfg.targets} --out SHARDS` first, then train --targets SHARDS"
            ) from exc
        raise ConfigError(f"--targets: {exc}") from exc
