"""The configuration of one ``distinit train`` run, validated on construction.

The whole config is stored in ``last.pt`` (to refuse resuming with a different recipe) and in
``final.pt`` (so eval knows how the student was distilled).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from distinit.pipeline.errors import ConfigError, UnknownNameError
from distinit.pipeline.frame_geometry import format_size
from distinit.pipeline.frame_source import FRAME_SOURCES
from distinit.pipeline.runtime import DEFAULT_LOADER_WORKERS

__all__ = ["TrainConfig", "parse_teacher_weight"]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step")
TARGET_FRAMES = ("mean", "random")
# What the student sees: RGB frames, or the optical flow between them (the teacher always sees
# RGB; see distinit.pipeline.flow).
MODALITIES = ("rgb", "flow")
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

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


EMBEDDING_LOSSES = ("cosine", "smooth_l1")


@dataclass(frozen=True)
class TrainConfig:
    targets: str
    out: str
    videos: str | None = None  # None: the videos_root recorded in the shards' provenance
    frames: str = "auto"  # where clip frames come from: auto (store if any), store, source
    student: str = "r3d_18"
    modality: str = "rgb"  # the student's input: "rgb" frames or "flow" between them
    clip_len: int = 16  # frames per clip
    frame_stride: int = 1  # shard rows between consecutive clip frames
    resize: tuple[int, int] = (171, 128)  # (width, height), stretched, video-ResNet convention
    crop: int = 112  # square crop side, pixels
    batch_size: int = 8  # clips per process and step
    # DataLoader worker processes per training process; never more than the cores.
    workers: int = DEFAULT_LOADER_WORKERS
    optimizer: str = "sgd"
    lr: float = 0.01  # peak learning rate for the global batch
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_steps: int = 0
    epochs: int = 10  # one epoch = one clip from every video
    max_steps: int | None = None  # when set, the run length in steps (overrides epochs)
    temperature: float = 1.0
    embedding_loss: str = "cosine"  # for embedding targets: "cosine" (2 - 2cos) or "smooth_l1"
    teacher_weights: tuple[tuple[str, float], ...] = ()  # unlisted teachers weigh 1
    target_frames: str = "mean"
    grad_clip: float | None = 5.0  # max global L2 norm of gradients; None: no clipping
    amp: bool = True  # mixed precision, only ever used on CUDA
    device: str = "auto"
    seed: int = 0
    log_every: int = 1
    tensorboard: bool = False  # also write log.jsonl's entries as TensorBoard event files
    save_every: int = 10
    # Delete last.pt once final.pt is written: frees its disk (270 MB for r3d_18) but the run
    # can then no longer be extended with a larger --max-steps / --epochs.
    drop_resume_state: bool = False
    stop_after: int | None = None  # exit (resumable) after this many steps of one invocation
    init_from: str | None = None  # a final.pt whose weights start the run (new optimizer, schedule)
    max_bad_clips: int = 10  # clips whose video cannot be decoded, skipped before the run stops

    def __post_init__(self) -> None:
        # Imported here: the registry pulls in torch, and `distinit train --help` should not.
        from distinit.train.students import student_spec

        try:
            spec = student_spec(self.student)
        except UnknownNameError as exc:
            raise ConfigError(str(exc)) from exc
        _positive(self, "clip_len", "frame_stride", "crop", "batch_size", "epochs")
        _positive(self, "log_every", "save_every")
        spec.check_input(self.clip_len, self.crop)
        if self.embedding_loss not in EMBEDDING_LOSSES:
            raise ConfigError(
                f"embedding_loss must be one of {', '.join(EMBEDDING_LOSSES)}, "
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
        if min(self.workers, self.warmup_steps, self.weight_decay, self.max_bad_clips) < 0:
            raise ConfigError(
                "workers, warmup_steps, weight_decay and max_bad_clips must not be negative"
            )
        if not self.lr > 0 or not self.temperature > 0:
            raise ConfigError("lr and temperature must be positive")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        for name, allowed in (
            ("optimizer", OPTIMIZERS),
            ("schedule", SCHEDULES),
            ("target_frames", TARGET_FRAMES),
            ("modality", MODALITIES),
            ("frames", FRAME_SOURCES),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.modality == "flow" and self.clip_len < 2:
            raise ConfigError("flow needs --clip-len >= 2: one frame has no motion")
        for name in ("max_steps", "stop_after"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"grad_clip must be positive, got {self.grad_clip}")
        if not _DEVICE.match(self.device):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
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


def _positive(cfg: TrainConfig, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be at least 1, got {getattr(cfg, name)}")


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
