"""The configuration of one ``distinit train`` run, validated on construction.

The whole config is stored in ``last.pt`` (to refuse resuming with a different recipe) and in
``final.pt`` (so eval knows how the student was distilled).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from typing import Any

import click

from distinit.pipeline.device import check_device
from distinit.pipeline.errors import ConfigError, UnknownNameError
from distinit.pipeline.frame_geometry import format_size
from distinit.pipeline.frame_source import FRAME_SOURCES
from distinit.pipeline.options import (
    AMP,
    CLIP_BATCH,
    CLIP_LEN,
    DEVICE,
    LOADER_WORKERS,
    MODALITIES,
    MODALITY,
    RESIZE,
    Flag,
    flag_of,
    opt,
)
from distinit.pipeline.runtime import DEFAULT_LOADER_WORKERS
from distinit.train.student_inputs import student_input, students_help

__all__ = ["MODALITIES", "STUDENT", "TrainConfig", "parse_teacher_weight"]

# --student, for train and for eval's baselines (the networks are distinit.train.students).
STUDENT = Flag(help=students_help())

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step")
TARGET_FRAMES = ("mean", "random")
# Milestones of the step schedule, as fractions of the run: lr x0.1 at each.
STEP_MILESTONES = (0.5, 0.75)

# Fields that may change between a run and its resumption: where things are, how fast the data
# arrives, how often it is reported. Everything else defines the result and must match.
RESUMABLE_CHANGES = frozenset(
    {
        "targets",
        "out",
        "videos",
        "frames",
        "workers",
        "log_every",
        "tensorboard",
        "save_every",
        "stop_after",
        "device",
        "max_bad_clips",
        "drop_resume_state",
    }
)

# The run's length: a resumed run may be given a new one (at least the steps already done); the
# schedule is then recomputed for the new length from the current step on (see train.loop).
LENGTH_FIELDS = frozenset({"max_steps", "epochs"})

EMBEDDING_LOSSES = ("cosine", "smooth_l1")


def _grad_clip(value: float | None, _: object) -> float | None:
    return value if value is not None and value > 0 else None  # --grad-clip 0: no clipping


def _absolute(path: str | None, _: object) -> str | None:
    return None if path is None else os.path.abspath(path)  # a re-run from elsewhere matches


def _teacher_weights(given: tuple[str, ...], _: object) -> tuple[tuple[str, float], ...]:
    return tuple(sorted(parse_teacher_weight(t) for t in given))


@dataclass(frozen=True)
class TrainConfig:
    """Every field is an option of ``distinit train`` (see :mod:`distinit.pipeline.options`)."""

    targets: str = opt(
        flag="Shard directory written by `distinit extract`.", type=click.Path(file_okay=False)
    )
    out: str = opt(
        flag="Run directory (config.json, log.jsonl, loss.png, last.pt, final.pt). An existing "
        "last.pt there is resumed (same options; --max-steps may grow).",
        type=click.Path(file_okay=False),
    )
    videos: str | None = opt(  # None: the videos_root recorded in the shards' provenance
        None,
        "Videos directory the shard ids are relative to. Default: the one recorded by extract. "
        "Only read when the shards have no frame store (or with --frames source).",
        type=click.Path(file_okay=False),
    )
    frames: str = opt(
        "auto",
        "Where clip frames come from: the shards' frame store (by row, no source videos "
        "needed), the source videos (decoded by stored timestamps), or auto: the store when the "
        "shards have one at --resize.",
        choices=FRAME_SOURCES,
    )
    student: str = opt("r3d_18", STUDENT)
    modality: str = opt(
        "rgb",
        MODALITY,
        help=f"{MODALITY.help} The teachers' targets are the same RGB-frame targets either way.",
    )
    clip_len: int = opt(16, CLIP_LEN)
    frame_stride: int = opt(1, "Extracted frames (shard rows) between consecutive clip frames.")
    resize: tuple[int, int] = opt((171, 128), RESIZE)  # (width, height), video-ResNet convention
    crop: int = opt(112, "Square crop side in pixels (random for training).")
    batch_size: int = opt(8, CLIP_BATCH)
    # Never more than the cores.
    workers: int = opt(DEFAULT_LOADER_WORKERS, LOADER_WORKERS)
    optimizer: str = opt("sgd", "SGD with momentum, or AdamW.", choices=OPTIMIZERS)
    lr: float = opt(0.01, "Peak learning rate (per global batch).")
    momentum: float = opt(0.9, "SGD momentum (unused by AdamW).")
    weight_decay: float = opt(1e-4, "Weight decay (L2 for SGD, decoupled for AdamW).")
    schedule: str = opt(
        "cosine",
        "After warm-up: cosine to 0, or x0.1 at 50% and 75% of the run.",
        choices=SCHEDULES,
    )
    warmup_steps: int = opt(0, "Steps of linear lr warm-up.")
    epochs: int = opt(
        10, "Run length in epochs (one clip per video each); ignored with --max-steps."
    )
    max_steps: int | None = opt(
        None,
        "Run length in optimizer steps; overrides --epochs. Default: from --epochs. "
        "On an existing run (RUN/last.pt, even a finished one) a new length continues it from the "
        "steps done to the new end: the lr schedule is recomputed for the new length from that "
        "step on (cosine: lr rises to the new curve's value there, then decays to 0 at the new "
        "end) and final.pt is rewritten; fewer steps than already done is refused.",
    )
    init_from: str | None = opt(  # a final.pt whose weights start the run
        None,
        "Start from the weights of another run's final.pt (same --student and --modality; "
        "heads of the same teachers are kept, others start fresh). Weights only: a new optimizer "
        "and schedule. Recorded in the run's config.",
        type=click.Path(dir_okay=False),
        parse=_absolute,
    )
    temperature: float = opt(
        1.0, "Softmax temperature T of teacher and student; the loss is scaled by T²."
    )
    embedding_loss: str = opt(
        "cosine",
        "Loss on embedding targets: 2 - 2cos of the L2-normalised projection and target, or "
        "smooth L1 between them scaled to unit variance per dimension.",
        choices=EMBEDDING_LOSSES,
    )
    teacher_weights: tuple[tuple[str, float], ...] = opt(  # unlisted teachers weigh 1
        (),
        "Weight of one target's loss (repeatable; NAME as the shards key it: the teacher for "
        "logits, NAME:embedding for an embedding). Default: 1 for every target.",
        name="--teacher-weight",
        metavar="NAME=W",
        parse=_teacher_weights,
    )
    target_frames: str = opt(
        "mean",
        "Clip target: mean of the frames' tempered teacher distributions, or one random frame's.",
        choices=TARGET_FRAMES,
    )
    grad_clip: float | None = opt(  # max global L2 norm of gradients; None: no clipping
        5.0,
        "Clip the global gradient L2 norm to this; 0 disables.",
        type=click.FLOAT,
        parse=_grad_clip,
    )
    amp: bool = opt(True, AMP)
    device: str = opt("auto", DEVICE)
    seed: int = opt(0, "Seeds initial weights and every clip draw; a CPU run is repeatable.")
    log_every: int = opt(1, "Write a log.jsonl line every this many steps.")
    tensorboard: bool = opt(
        False,
        "Also write TensorBoard event files into RUN (losses, lr, clips/s, data and compute "
        "time, as log.jsonl has them); needs pip install 'distinit[tensorboard]'.",
    )
    save_every: int = opt(10, "Write RUN/last.pt every this many steps (and at the end).")
    drop_resume_state: bool = opt(
        False,
        "Delete RUN/last.pt once final.pt is written (frees ~270 MB for r3d_18; the run then "
        "cannot be extended with a larger --max-steps/--epochs).",
    )
    stop_after: int | None = opt(  # exit (resumable) after this many steps of one invocation
        None,
        "Train at most this many steps in this invocation, save last.pt and exit; rerunning "
        "the same command trains the next ones (for time-limited jobs). Default: run to the end.",
    )
    max_bad_clips: int = opt(
        10,
        "Clips whose video does not decode (under --frames source) that are replaced by "
        "another clip and counted; one more stops the run in one line. 0: stop at the first.",
    )

    def __post_init__(self) -> None:
        if os.path.abspath(self.out) == os.path.abspath(self.targets):
            raise ConfigError("--out must not be the --targets directory: give the run its own")
        try:
            inputs = student_input(self.student)
        except UnknownNameError as exc:
            raise ConfigError(str(exc)) from exc
        _positive(self, "clip_len", "frame_stride", "crop", "batch_size", "epochs")
        _positive(self, "log_every", "save_every")
        inputs.check(self.student, self.clip_len, self.crop)
        if self.embedding_loss not in EMBEDDING_LOSSES:
            raise ConfigError(
                f"--embedding-loss must be one of {', '.join(EMBEDDING_LOSSES)}, "
                f"got {self.embedding_loss!r}"
            )
        if len(self.resize) != 2 or min(self.resize) < 1:
            raise ConfigError(
                f"--resize must be two positive sizes, got {format_size(self.resize)}"
            )
        if self.crop > min(self.resize):
            raise ConfigError(
                f"--crop {self.crop} is larger than the resized frame "
                f"(--resize {format_size(self.resize)})"
            )
        for name in ("workers", "warmup_steps", "weight_decay", "max_bad_clips"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{_flag(name)} must not be negative, got {getattr(self, name)}")
        for name in ("lr", "temperature"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{_flag(name)} must be positive, got {getattr(self, name)}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"--momentum must be in [0, 1), got {self.momentum}")
        for name, allowed in (
            ("optimizer", OPTIMIZERS),
            ("schedule", SCHEDULES),
            ("target_frames", TARGET_FRAMES),
            ("modality", MODALITIES),
            ("frames", FRAME_SOURCES),
        ):
            if (value := getattr(self, name)) not in allowed:
                choices = ", ".join(allowed)
                raise ConfigError(f"{_flag(name)} must be one of {choices}, got {value!r}")
        if self.modality == "flow" and self.clip_len < 2:
            raise ConfigError("flow needs --clip-len >= 2: one frame has no motion")
        for name in ("max_steps", "stop_after"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{_flag(name)} must be at least 1, got {value}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"--grad-clip must be positive, got {self.grad_clip}")
        check_device(self.device)
        names = [n for n, _ in self.teacher_weights]
        if len(set(names)) != len(names):
            raise ConfigError(f"a teacher is weighted twice: {names}")
        if any(not w >= 0 for _, w in self.teacher_weights):
            raise ConfigError("teacher weights must be non-negative")

    def weight_of(self, teacher: str) -> float:
        return dict(self.teacher_weights).get(teacher, 1.0)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["resize"] = list(self.resize)
        d["teacher_weights"] = {n: w for n, w in self.teacher_weights}
        return d

    def replayable_json(self) -> dict[str, Any]:
        """What ``RUN/config.json`` holds: :meth:`to_json` with its directories absolute, as
        extract's manifest has them, so ``--config`` replays the run from any directory."""
        d = self.to_json()
        for name in ("targets", "out", "videos"):
            d[name] = _absolute(d[name], None)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        values["resize"] = tuple(values.get("resize", (171, 128)))
        values["teacher_weights"] = tuple(sorted(dict(values.get("teacher_weights", {})).items()))
        return cls(**values)

    def resume_mismatches(self, saved: dict[str, Any]) -> list[str]:
        """Fields whose saved value differs from this config's, ignoring RESUMABLE_CHANGES and
        the run length (LENGTH_FIELDS, checked against the steps done when resuming)."""
        now = self.to_json()
        return sorted(
            k
            for k in set(now) | set(saved)
            if k not in RESUMABLE_CHANGES | LENGTH_FIELDS and now.get(k) != saved.get(k)
        )


def _flag(field_name: str) -> str:
    return flag_of(TrainConfig, field_name)


def _positive(cfg: TrainConfig, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{_flag(name)} must be at least 1, got {getattr(cfg, name)}")


def parse_teacher_weight(text: str) -> tuple[str, float]:
    """``NAME=W`` -> ``(NAME, W)``."""
    name, sep, value = text.partition("=")
    try:
        weight = float(value)
    except ValueError:
        weight = float("nan")
    if not sep or not name or weight != weight:
        raise ConfigError(f"teacher weight must look like NAME=0.5, got {text!r}")
    return name, weight
