"""The ``distinit eval`` configuration: one frozen dataclass, validated on construction."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from distinit.eval.inflate import INFLATABLE
from distinit.pipeline import options
from distinit.pipeline.device import check_device
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.frame_geometry import format_size
from distinit.pipeline.options import opt
from distinit.pipeline.runtime import DEFAULT_LOADER_WORKERS
from distinit.train.config import STUDENT

INITS = ("checkpoint", "scratch", "inflated")
MODES = ("finetune", "linear")
SPLITS = ("1", "2", "3", "all")

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


_BASELINE = "for --init scratch/inflated"
_REQUIRED = "[required unless --compare or --config]"


@dataclass(frozen=True)
class EvalConfig:
    """Every field is an option of ``distinit eval`` (see :mod:`distinit.pipeline.options`)."""

    dataset: str = opt(  # packaged manifest name or path of a manifest .json
        flag="hmdb51, ucf101, folder, or the path of a manifest .json. folder: one sub-folder of "
        "videos per class; with --splits DIR its trainlist0N.txt/testlist0N.txt define split N, "
        "else split N puts a fixed, hash-chosen 30% of each class's videos in test. " + _REQUIRED
    )
    root: Path = opt(flag=f"Dataset root (class folders). {_REQUIRED}")
    out: Path = opt(flag=f"Output folder (results.json, results.md, confusion PNGs). {_REQUIRED}")
    store: Path | None = opt(  # a frame store of the dataset (extract --teacher none)
        None,
        "Frame store of the dataset (distinit extract --videos ROOT --teacher none --out DIR): "
        "clips are read by row from it instead of decoding the source videos every epoch.",
    )
    splits_dir: Path | None = opt(
        None, "Folder where split files are looked for [default: --root].", name="--splits"
    )
    split: str = opt("1", "Split to run; 'all' runs 1, 2, 3 and reports the mean.", choices=SPLITS)
    checkpoint: Path | None = opt(
        None, "Distilled student RUN/final.pt (implies --init checkpoint)."
    )
    init: str = opt(
        "checkpoint",
        "Baseline initialisation: scratch, or inflated (ImageNet ResNet-18, I3D-style) "
        "[default: checkpoint when --checkpoint is given].",
        choices=INITS,
        show_default=False,
    )
    student: str = opt(  # for scratch / inflated; a checkpoint names its own student
        "r3d_18",
        STUDENT,
        help=f"{STUDENT.help} Only {_BASELINE}; inflated only for "
        f"{', '.join(INFLATABLE)} (they have a 2D ImageNet ResNet-18 counterpart).",
    )
    # The student's input. None: the checkpoint's, or rgb for scratch / inflated. Given with a
    # checkpoint it must agree with it (checked when the checkpoint is read).
    modality: str | None = opt(
        None,
        options.MODALITY,
        help=f"{options.MODALITY.help} Flow has 2 channels; inflated averages the RGB first "
        "conv over colour [default: rgb; a checkpoint's own, which a different value contradicts].",
    )
    inflate_weights: Path | None = opt(None, "Local 2D ResNet-18 state dict for --init inflated.")
    mode: str = opt(
        "finetune",
        "finetune: all layers and a new head; linear: frozen backbone, linear classifier.",
        choices=MODES,
    )
    epochs: int | None = opt(
        None,
        "Epochs of fine-tuning, or full-batch optimizer steps of the linear probe "
        f"[default: {DEFAULTS['finetune']['epochs']} finetune, "
        f"{DEFAULTS['linear']['epochs']} linear].",
    )
    lr: float | None = opt(
        None,
        f"Peak learning rate [default: {DEFAULTS['finetune']['lr']} finetune, "
        f"{DEFAULTS['linear']['lr']} linear].",
    )
    weight_decay: float | None = opt(
        None,
        f"L2 weight decay [default: {DEFAULTS['finetune']['weight_decay']} finetune, "
        f"{DEFAULTS['linear']['weight_decay']} linear].",
    )
    batch_size: int = opt(32, options.CLIP_BATCH)
    # The student's input (BASELINE_INPUT's fields). None: not given, so the checkpoint's
    # recipe, or BASELINE_INPUT for scratch / inflated (resolved in distinit.eval.recipe).
    clip_len: int | None = opt(
        None,
        options.CLIP_LEN,
        help=f"{options.CLIP_LEN.help} [default: the checkpoint's; "
        f"{BASELINE_INPUT['clip_len']} {_BASELINE}]. Every input flag that changes a "
        "checkpoint's recipe is said on stderr and recorded in results.json.",
    )
    frame_step: int | None = opt(  # native frames between consecutive clip frames
        None,
        "Native frames between consecutive clip frames [default: the checkpoint's (its "
        f"--frame-stride, when its shards held every native frame); "
        f"{BASELINE_INPUT['frame_step']} {_BASELINE}].",
    )
    clips_per_video: int = opt(10, "K uniformly spaced test clips per video.")
    resize: tuple[int, int] | None = opt(
        None,
        options.RESIZE,
        help=f"{options.RESIZE.help} [default: the checkpoint's; "
        f"{format_size(BASELINE_INPUT['resize'])} {_BASELINE}].",
    )
    crop: int | None = opt(
        None,
        "Square crop side, pixels (random while fine-tuning, centred for testing) "
        f"[default: the checkpoint's; {BASELINE_INPUT['crop']} {_BASELINE}].",
    )
    device: str = opt("auto", options.DEVICE)
    workers: int = opt(DEFAULT_LOADER_WORKERS, options.LOADER_WORKERS)
    seed: int = opt(0, "Seeds the head and clip sampling.")
    allow_partial: bool = opt(
        False, "Accept missing classes/videos and other counts (recorded in results)."
    )
    amp: bool = opt(True, options.AMP)
    precise_bn: bool = opt(  # finetune: re-estimate BatchNorm statistics before testing
        True, "Finetune: re-estimate BatchNorm statistics on training clips before testing."
    )
    tensorboard: bool = opt(
        False,
        "Also write each split's accuracies as TensorBoard event files into --out; needs "
        "pip install 'distinit[tensorboard]'.",
    )
    drop_resume_state: bool = opt(
        False,
        "Finetune: delete each split's finetune.pt once its results are written (~254 MB for "
        "r3d_18); running the same command again then fine-tunes again.",
    )

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
        if self.modality is not None and self.modality not in options.MODALITIES:
            raise ConfigError(
                f"--modality must be one of {', '.join(options.MODALITIES)}, got {self.modality!r}"
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
        check_device(self.device)
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
        # Paths absolute: `--config OUT/results.json` replays the run from any directory.
        return {k: os.path.abspath(v) if isinstance(v, Path) else v for k, v in raw.items()}
