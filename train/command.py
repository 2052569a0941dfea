"""``distinit train``: the click command. Its options are :class:`TrainConfig`'s fields.

Only click and the config are imported at module level; torch-heavy modules load inside the
command body.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from distinit.pipeline.errors import ConfigError, ShardError
from distinit.pipeline.options import config_from, config_options
from distinit.pipeline.progress import ProgressLine, eta_seconds, format_duration
from distinit.train.config import TrainConfig

if TYPE_CHECKING:
    from distinit.pipeline.frame_source import FrameSource
    from distinit.pipeline.shards import ShardSet
    from distinit.train.loop import RunResult, StepReport

PROGRESS_EVERY_S = 5.0  # seconds between progress lines when stderr is not a terminal
CONFIG_NAME = "config.json"  # RUN/config.json: what `train --config` replays


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@config_options(TrainConfig, replay="RUN/config.json (train writes it beside the checkpoints)")
def train(**params: Any) -> None:
    """Stage two: distil cached teacher targets into a 3D video student.

    \b
    Example:
      distinit train --targets SHARDS --out RUN --student r2plus1d_18
      distinit train --config RUN/config.json --out RUN2 --lr 0.02   (the same run, but ...)
    Multi-GPU / multi-process:
      torchrun --nproc_per_node=8 --no-python distinit train --targets SHARDS --out RUN
      srun --ntasks-per-node=8 distinit train --targets SHARDS --out RUN
    Ctrl-C or SIGTERM saves last.pt at the current step; the same command resumes.
    """
    cfg = config_from(TrainConfig, params)
    from distinit.pipeline.runtime import process_from_environment
    from distinit.train.loop import run

    resume_state, shards, frames = _check_inputs(cfg)
    main = process_from_environment().is_main  # rank 0 alone reports
    line = ProgressLine(every=PROGRESS_EVERY_S)
    try:
        result = run(
            cfg,
            progress=_progress(line),
            resume_state=resume_state,
            announce=lambda start, total: _announce(cfg, frames, start, total),
            targets=(shards, frames),
        )
    finally:
        line.close()
    if main:
        _report(cfg, result)


def _check_inputs(cfg: TrainConfig) -> tuple[dict[str, Any] | None, ShardSet, FrameSource]:
    """Every input error, reported before the run is announced; returns ``last.pt`` as read
    for resuming (None: a new run), the shard set (read once for the run) and where the clip
    frames come from."""
    from distinit.train.loop import FINAL_NAME, check_resume, open_targets
    from distinit.train.resume import LAST_NAME, shard_set_fingerprint

    checked = _check_targets(cfg)
    if cfg.tensorboard:
        from distinit.train.events import require_tensorboard

        require_tensorboard()
    shards, frames = open_targets(cfg, checked)
    out = Path(cfg.out)
    resume_state = None  # last.pt, read once: here, and handed to the run
    if (out / FINAL_NAME).is_file() and not (out / LAST_NAME).is_file():
        # Training again from step 0 would overwrite a finished run's final.pt.
        raise ConfigError(
            f"{out / FINAL_NAME} is a finished run whose resume state ({LAST_NAME}) was "
            "dropped: it cannot be continued or extended; use a new --out"
        )
    if (out / LAST_NAME).is_file():
        teachers = [t.to_json() for t in shards.teachers]
        resume_state = check_resume(out / LAST_NAME, cfg, teachers, shard_set_fingerprint(shards))
    if cfg.init_from is not None:
        from distinit.train.checkpoint import load_final

        init = load_final(cfg.init_from)  # a missing or foreign file: one line, before we start
        if init.student != cfg.student:
            raise ConfigError(
                f"--init-from {cfg.init_from}: its student is {init.student}, this run trains "
                f"{cfg.student}; give the same --student"
            )
    return resume_state, shards, frames


def _progress(line: ProgressLine) -> Callable[[StepReport], None]:
    """The progress line of each step: this invocation's rate, the whole run's elapsed time."""
    started = time.monotonic()
    first_step: int | None = None  # the step this invocation started after

    def show(r: StepReport) -> None:
        nonlocal first_step
        if first_step is None:
            first_step = r.step - 1
        eta = eta_seconds(r.step - first_step, r.total - first_step, time.monotonic() - started)
        line.update(
            f"step {r.step}/{r.total}  loss {r.loss:.4f}  lr {r.lr:.3g}  "
            f"{r.clips_per_s:.1f} clips/s  elapsed {format_duration(r.elapsed_s)}  "
            f"ETA {format_duration(eta)}",
            final=r.step in (first_step + 1, r.total),
        )

    return show


def _announce(cfg: TrainConfig, frames: FrameSource, start: int, total: int) -> None:
    """Rank 0, once the run directory is ours: say what runs, and save its config."""
    from distinit.pipeline.atomic import atomic_write
    from distinit.train.resume import LAST_NAME

    out = Path(cfg.out)
    atomic_write(out / CONFIG_NAME, cfg.replayable_json())
    warm = f", starting from the weights of {cfg.init_from}" if cfg.init_from else ""
    click.echo(f"training {cfg.student} ({cfg.modality}) into {cfg.out}{warm}", err=True)
    click.echo(f"frames: {frames.describe()}", err=True)
    if 0 < start < total:
        click.echo(f"resuming from step {start} of {total} ({out / LAST_NAME})", err=True)


def _report(cfg: TrainConfig, result: RunResult) -> None:
    """The run's closing lines: videos, steps, bad clips, loss, and what was written."""
    from distinit.train.runlog import LOG_NAME, run_losses

    out = Path(cfg.out)
    click.echo(
        f"videos: {result.videos} ({result.short_videos} shorter than a clip, looped); "
        f"steps {result.resumed_from} -> {result.steps_done} of {result.total_steps}"
    )
    if result.bad_clips:
        click.echo(
            f"bad clips: {result.bad_clips} could not be decoded and were replaced by others "
            f"(at most {cfg.max_bad_clips} tolerated; the log names each)"
        )
    first, last = run_losses(out / LOG_NAME)
    if first is not None and last is not None:
        click.echo(f"loss of the run: first {first:.4f}, last {last:.4f}")
    if result.final_path is not None and result.resumed_from == result.total_steps:
        click.echo(f"already complete: {result.final_path} (nothing to train)")
    elif result.final_path is not None:
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
