"""The ``distinit eval`` configuration: one frozen dataclass, validated on construction."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from distinit.eval.inflate import INFLATABLE
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.runtime import DEFAULT_LOADER_WORKERS

INITS = ("checkpoint", "scratch", "inflated")
MODES = ("finetune", "linear")
SPLITS = ("1", "2", "3", "all")
MODALITIES = ("rgb", "flow")

# Mode-specific defaults, used when --epochs / --lr are not given (stated in results.json).
# finetune: SGD (momentum 0.9) on all layers, cosine schedule, one random clip per video per epoch.
# linear: full-batch Adam on the frozen features of the K clips of every training video.
DEFAULTS = {
    "finetune": {"epochs": 30, "lr": 0.01, "weight_decay": 5e-4},
    "linear": {"epochs": 300, "lr": 0.01, "weight_decay": 1e-4},
}

# The student's input for scratch / inflated (and the flags a checkpoint's recipe may be changed
# by): clips of 16 consecutive native frames, stretched to 171x128, a 112 crop. A distilled
# checkpoint brings its own (see distinit.eval.recipe).
BASELINE_INPUT: dict[str, Any] = {
    "clip_len": 16,
    "frame_step": 1,
    "resize": (171, 128),
    "crop": 112,
}


@dataclass(frozen=True)
class EvalConfig:
    dataset: str  # packaged manifest name or path of a manifest .json
    root: Path
    out: Path
    init: str = "checkpoint"
    checkpoint: Path | None = None
    student: str = "r3d_18"  # for scratch / inflated; a checkpoint names its own student
    # The student's input. None: the checkpoint's, or rgb for scratch / inflated. Given with a
    # checkpoint it must agree with it (checked when the checkpoint is read).
    modality: str | None = None
    inflate_weights: Path | None = None
    splits_dir: Path | None = None
    store: Path | None = None  # a frame store of the dataset (extract --teacher none)
    split: str = "1"
    mode: str = "finetune"
    epochs: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    batch_size: int = 32
    # The student's input (BASELINE_INPUT's fields). None: not given, so the checkpoint's
    # recipe, or BASELINE_INPUT for scratch / inflated (resolved in distinit.eval.recipe).
    clip_len: int | None = None
    frame_step: int | None = None  # native frames between consecutive clip frames
    resize: tuple[int, int] | None = None
    crop: int | None = None
    clips_per_video: int = 10
    device: str = "auto"
    workers: int = DEFAULT_LOADER_WORKERS
    seed: int = 0
    allow_partial: bool = False
    amp: bool = True  # only has an effect on CUDA
    precise_bn: bool = True  # finetune: re-estimate BatchNorm statistics before testing
    tensorboard: bool = False  # also write each split's accuracies as TensorBoard events
    # Delete each split's finetune.pt once its results are written (254 MB for r3d_18); a re-run
    # of the same command then fine-tunes again instead of reusing it.
    drop_resume_state: bool = False

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ConfigError(f"--init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.mode not in MODES:
            raise ConfigError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.split not in SPLITS:
            raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if (self.init == "checkpoint") != (self.checkpoint is not None):
            raise ConfigError("give either --checkpoint RUN/final.pt or --init scratch|inflated")
        if self.init == "inflated" and self.student not in INFLATABLE:
            raise ConfigError(
                f"--init inflated needs a student with ResNet-18 layers ({', '.join(INFLATABLE)}),"
                f" got {self.student!r}"
            )
        if self.modality is not None and self.modality not in MODALITIES:
            raise ConfigError(
                f"--modality must be one of {', '.join(MODALITIES)}, got {self.modality!r}"
            )
        if self.inflate_weights is not None and self.init != "inflated":
            raise ConfigError("--inflate-weights only applies to --init inflated")
        for name in ("batch_size", "clip_len", "frame_step", "clips_per_video", "crop", "epochs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ConfigError("--weight-decay must be non-negative")
        if self.workers < 0:
            raise ConfigError("--workers must be non-negative")
        if self.resize is not None and (len(self.resize) != 2 or min(self.resize) < 1):
            raise ConfigError(f"--resize must be two positive sizes, got {self.resize}")
        if self.init != "checkpoint":
            # A baseline's input is known now (a checkpoint's once the checkpoint is read).
            from distinit.eval.recipe import resolve_input

            resolve_input(self, None)

    def given_input(self) -> dict[str, Any]:
        """The input flags given (not None), by BASELINE_INPUT's field names."""
        return {k: getattr(self, k) for k in BASELINE_INPUT if getattr(self, k) is not None}

    @property
    def splits(self) -> list[int]:
        return [1, 2, 3] if self.split == "all" else [int(self.split)]

    @property
    def effective_epochs(self) -> int:
        return self.epochs if self.epochs is not None else int(DEFAULTS[self.mode]["epochs"])

    @property
    def effective_lr(self) -> float:
        return self.lr if self.lr is not None else float(DEFAULTS[self.mode]["lr"])

    @property
    def effective_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return float(DEFAULTS[self.mode]["weight_decay"])

    def to_json(self) -> dict[str, Any]:
        raw = asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in raw.items()}
