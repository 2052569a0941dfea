"""The three initialisations compared by the paper: distilled checkpoint, scratch, inflated."""

from __future__ import annotations

import logging
from typing import Any

import torch

from distinit.eval.config import EvalConfig
from distinit.eval.inflate import inflate_into, load_resnet18_weights
from distinit.pipeline.errors import CheckpointError
from distinit.train.checkpoint import load_final
from distinit.train.students import Student

log = logging.getLogger(__name__)

HEAD = "action"


def check_init_inputs(cfg: EvalConfig) -> None:
    """Fail before any dataset work when the checkpoint or weights file cannot be used."""
    if cfg.checkpoint is not None:
        load_final(cfg.checkpoint)
    if cfg.init == "inflated":
        load_resnet18_weights(cfg.inflate_weights)


def build_student(cfg: EvalConfig, num_classes: int) -> tuple[Student, dict[str, Any]]:
    """The student with a fresh ``action`` head, and a description of its initial weights.

    A checkpoint decides the architecture (eval never rebuilds it from flags); its teacher
    heads are dropped. Scratch is torchvision's default initialisation under ``cfg.seed``.
    """
    torch.manual_seed(cfg.seed)
    if cfg.init == "checkpoint":
        assert cfg.checkpoint is not None
        ckpt = load_final(cfg.checkpoint)
        if ckpt.in_channels != 3 or ckpt.modality != "rgb":
            raise CheckpointError(
                f"{cfg.checkpoint}: a {ckpt.modality} student ({ckpt.in_channels} input "
                "channels); eval decodes RGB clips only"
            )
        distilled = ckpt.build_student()
        student = Student(ckpt.student, {HEAD: num_classes})
        student.backbone.load_state_dict(distilled.backbone.state_dict())
        info = {
            "init": "checkpoint",
            "student": ckpt.student,
            "checkpoint": str(cfg.checkpoint),
            "checkpoint_step": ckpt.step,
            "teachers": [t.get("name", "?") for t in ckpt.teachers],
            "modality": ckpt.modality,
        }
    elif cfg.init == "inflated":
        state_2d, identity = load_resnet18_weights(cfg.inflate_weights)
        student = Student(cfg.student, {HEAD: num_classes})
        inflate_into(student.backbone, state_2d)
        info = {"init": "inflated", "student": cfg.student, "inflated_from": identity}
    else:
        student = Student(cfg.student, {HEAD: num_classes})
        info = {"init": "scratch", "student": cfg.student, "seed": cfg.seed}
    log.info("initialised %s", info)
    return student, info
