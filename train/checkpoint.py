"""The student checkpoint (``RUN/final.pt``): what eval and users load.

Plain dicts, tensors and JSON-able values only, so ``torch.load(..., weights_only=True)`` reads
it and a downloaded checkpoint can never run code. Besides the weights it carries the student's
input recipe (:class:`InputRecipe`: what eval must feed it again) and where its targets came from
(the teachers and the shard set's fingerprint).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from distinit.pipeline.atomic import atomic_torch_save
from distinit.pipeline.errors import CheckpointError
from distinit.pipeline.weights import load_weights_only
from distinit.train.config import TrainConfig
from distinit.train.students import STUDENTS, Student, student_spec

FINAL_FORMAT = "distinit-student"
FINAL_SCHEMA_VERSION = 1  # the recipe and provenance are optional keys: older files still load
# The tag of ``RUN/last.pt`` (written by distinit.train.resume), named here so that a resume
# state handed in where a final.pt belongs is told apart from a foreign file.
LAST_FORMAT = "distinit-train-state"


@dataclass(frozen=True)
class InputRecipe:
    """What the student was distilled on, the input eval must give it again.

    Clips of ``clip_len`` shard rows ``frame_stride`` apart, frames stretched to ``resize`` (W, H),
    a ``crop`` square; RGB scaled to [0, 1] and normalised by ``mean``/``std`` (None for flow,
    which no statistics apply to). ``shard_fps`` is the shards' ``extract --fps``: None when they
    held every native frame, the one case where a row step is a native frame step.
    """

    modality: str
    clip_len: int
    frame_stride: int
    resize: tuple[int, int]
    crop: int
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    shard_fps: float | None

    @classmethod
    def of_run(cls, cfg: TrainConfig, shard_fps: float | None) -> InputRecipe:
        spec = student_spec(cfg.student)
        rgb = cfg.modality == "rgb"
        return cls(
            modality=cfg.modality,
            clip_len=cfg.clip_len,
            frame_stride=cfg.frame_stride,
            resize=cfg.resize,
            crop=cfg.crop,
            mean=spec.mean if rgb else None,
            std=spec.std if rgb else None,
            shard_fps=shard_fps,
        )

    @property
    def native_frame_step(self) -> int | None:
        """Native frames between consecutive clip frames; None when the shards sampled the
        videos at ``--fps`` (a row is then a varying number of native frames)."""
        return self.frame_stride if self.shard_fps is None else None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["resize"] = list(self.resize)
        for key in ("mean", "std"):
            d[key] = list(d[key]) if d[key] is not None else None
        return d

    @classmethod
    def from_json(cls, d: Any, path: Path) -> InputRecipe:
        try:
            return cls(
                modality=str(d["modality"]),
                clip_len=int(d["clip_len"]),
                frame_stride=int(d["frame_stride"]),
                resize=(int(d["resize"][0]), int(d["resize"][1])),
                crop=int(d["crop"]),
                mean=tuple(float(v) for v in d["mean"]) if d["mean"] is not None else None,
                std=tuple(float(v) for v in d["std"]) if d["std"] is not None else None,
                shard_fps=float(d["shard_fps"]) if d["shard_fps"] is not None else None,
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise CheckpointError(f"{path}: malformed input recipe ({exc!r})") from exc


@dataclass
class FinalCheckpoint:
    student: str
    heads: dict[str, int]  # head name (teacher) -> classes
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]
    teachers: list[dict[str, Any]]  # TeacherInfo.to_json() of each teacher
    modality: str = "rgb"
    in_channels: int = 3
    step: int = 0
    recipe: InputRecipe | None = None  # None: written before checkpoints recorded it
    # Provenance, absent from checkpoints written before it was recorded: the shard set the run
    # drew its clips from (distinit.train.resume.shard_set_fingerprint) and the code version.
    shard_set: dict[str, Any] | None = None
    code_version: str | None = None

    def build_student(self) -> Student:
        """The distilled student with its teacher heads, weights loaded."""
        net = Student(self.student, self.heads, in_channels=self.in_channels)
        missing, unexpected = net.load_state_dict(self.state_dict, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint does not fit {self.student}: missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}"
            )
        return net


def save_final(path: str | os.PathLike[str], ckpt: FinalCheckpoint) -> None:
    payload = {
        "format": FINAL_FORMAT,
        "schema_version": FINAL_SCHEMA_VERSION,
        "student": ckpt.student,
        "heads": dict(ckpt.heads),
        "state_dict": {k: v.detach().cpu() for k, v in ckpt.state_dict.items()},
        "config": ckpt.config,
        "teachers": ckpt.teachers,
        "modality": ckpt.modality,
        "in_channels": ckpt.in_channels,
        "step": ckpt.step,
        "shard_set": ckpt.shard_set,
        "code_version": ckpt.code_version,
    }
    if ckpt.recipe is not None:
        payload["recipe"] = ckpt.recipe.to_json()
    atomic_torch_save(path, payload)


def load_tagged(path: Path, fmt: str, version: int, what: str, hint: str = "") -> dict[str, Any]:
    """A weights-only file whose ``format`` tag and ``schema_version`` must match (the shape
    shared by ``final.pt`` and ``last.pt``)."""
    return check_tag(path, load_weights_only(path, CheckpointError), fmt, version, what, hint)


def check_tag(
    path: Path, payload: Any, fmt: str, version: int, what: str, hint: str = ""
) -> dict[str, Any]:
    """``payload`` (read from ``path``) if its ``format`` tag and ``schema_version`` match."""
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise CheckpointError(f"{path}: not a distinit {what}")
    if payload.get("schema_version") != version:
        raise CheckpointError(
            f"{path}: {what} schema {payload.get('schema_version')}, expected {version}{hint}"
        )
    return payload


def load_final(path: str | os.PathLike[str]) -> FinalCheckpoint:
    """Load and validate ``final.pt``; never unpickles code (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    payload = load_weights_only(path, CheckpointError)
    if isinstance(payload, dict) and payload.get("format") == LAST_FORMAT:
        raise CheckpointError(
            f"{path} is a run's resume state (last.pt), not its result: pass RUN/final.pt, "
            "which train writes when the run completes"
        )
    payload = check_tag(path, payload, FINAL_FORMAT, FINAL_SCHEMA_VERSION, "student checkpoint")
    if payload["student"] not in STUDENTS:
        raise CheckpointError(f"{path}: unknown student {payload['student']!r}")
    return FinalCheckpoint(
        student=payload["student"],
        heads=dict(payload["heads"]),
        state_dict=payload["state_dict"],
        config=payload["config"],
        teachers=payload["teachers"],
        modality=payload.get("modality", "rgb"),
        in_channels=int(payload.get("in_channels", 3)),
        step=int(payload.get("step", 0)),
        recipe=InputRecipe.from_json(payload["recipe"], path) if "recipe" in payload else None,
        shard_set=payload.get("shard_set"),
        code_version=payload.get("code_version"),
    )


def load_init_weights(student: Student, path: str | os.PathLike[str]) -> list[str]:
    """Start ``student`` from the weights of another run's ``final.pt`` (``--init-from``).

    Weights only: the optimizer and schedule start afresh. The backbone must be the same network
    with the same input; heads are taken where their teacher and class count match, the others
    keep their fresh initialisation. Returns the names of the heads taken over.
    """
    ckpt = load_final(path)
    if ckpt.student != student.name or ckpt.in_channels != student.in_channels:
        raise CheckpointError(
            f"--init-from {path}: its student is {ckpt.student} on {ckpt.modality} "
            f"({ckpt.in_channels} input channels), this run trains {student.name} with "
            f"{student.in_channels} input channels; give the same --student and --modality"
        )
    own = student.state_dict()
    kept = {k: v for k, v in ckpt.state_dict.items() if k in own and own[k].shape == v.shape}
    backbone = [k for k in own if k.startswith("backbone.")]
    lacking = [k for k in backbone if k not in kept]
    if lacking:
        raise CheckpointError(f"--init-from {path}: backbone weights do not fit ({lacking[:3]})")
    student.load_state_dict(kept, strict=False)
    return sorted(
        h for h in student.heads if all(k in kept for k in own if k.startswith(f"heads.{h}."))
    )
