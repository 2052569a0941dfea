"""The three initialisations compared by the paper: distilled checkpoint, scratch, inflated.

Each comes as an RGB or an optical-flow student (``modality``). A checkpoint decides its own
modality (``FinalCheckpoint.modality`` / ``in_channels``); scratch and inflated take
``--modality``. Inflated flow uses the cross-modality rule of
:func:`distinit.eval.inflate.flow_init_from_rgb`: the inflated RGB first convolution averaged over
the colour channels, one copy per flow channel.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from distinit.eval.config import EvalConfig
from distinit.eval.inflate import flow_init_from_rgb, inflate_into, load_resnet18_weights
from distinit.eval.recipe import EvalInput, resolve_input
from distinit.pipeline.clip_rules import input_channels
from distinit.pipeline.errors import CheckpointError
from distinit.pipeline.weights import file_sha256
from distinit.train.checkpoint import load_final
from distinit.train.students import Student, first_conv

log = logging.getLogger(__name__)

HEAD = "action"


def check_init_inputs(cfg: EvalConfig) -> EvalInput:
    """Fail before any dataset work when the checkpoint or weights file cannot be used.

    Returns the input the run gives the student (see :func:`distinit.eval.recipe.resolve_input`).
    """
    ckpt = load_final(cfg.checkpoint) if cfg.checkpoint is not None else None
    if cfg.init == "inflated":
        load_resnet18_weights(cfg.inflate_weights)
    return resolve_input(cfg, ckpt)


def build_student(cfg: EvalConfig, num_classes: int) -> tuple[Student, dict[str, Any]]:
    """The student with a fresh ``action`` head, and a description of its initial weights.

    A checkpoint decides the architecture and input modality (eval never rebuilds them from
    flags); its teacher heads are dropped. Scratch is torchvision's default initialisation under
    ``cfg.seed``.
    """
    torch.manual_seed(cfg.seed)
    if cfg.init == "checkpoint":
        assert cfg.checkpoint is not None
        ckpt = load_final(cfg.checkpoint)
        modality = resolve_input(cfg, ckpt).modality
        distilled = ckpt.build_student()
        student = Student(ckpt.student, {HEAD: num_classes}, in_channels=ckpt.in_channels)
        student.backbone.load_state_dict(distilled.backbone.state_dict())
        info = {
            "init": "checkpoint",
            "student": ckpt.student,
            "checkpoint": str(cfg.checkpoint),
            # What the results and every cache are keyed on: the weights, not where they lie.
            "checkpoint_sha256": file_sha256(cfg.checkpoint),
            "checkpoint_step": ckpt.step,
            "teachers": [t.get("name", "?") for t in ckpt.teachers],
            "shard_set": ckpt.shard_set,  # the targets it was distilled on (None: not recorded)
            "modality": modality,
        }
    elif cfg.init == "inflated":
        modality = cfg.modality or "rgb"
        state_2d, identity = load_resnet18_weights(cfg.inflate_weights)
        if modality == "rgb":
            student = Student(cfg.student, {HEAD: num_classes})
            inflate_into(student.backbone, state_2d)
            first = "inflated"
        else:
            student = _inflated_flow_student(cfg.student, num_classes, state_2d)
            first = "inflated, colour-averaged first conv"
        info = {
            "init": "inflated",
            "student": cfg.student,
            "inflated_from": identity,
            "modality": modality,
            "first_conv": first,
        }
    else:
        modality = cfg.modality or "rgb"
        student = Student(cfg.student, {HEAD: num_classes}, in_channels=input_channels(modality))
        info = {"init": "scratch", "student": cfg.student, "seed": cfg.seed, "modality": modality}
    log.info("initialised %s", info)
    return student, info


def _inflated_flow_student(
    name: str, num_classes: int, state_2d: dict[str, torch.Tensor]
) -> Student:
    """A 2-channel flow student whose weights are the I3D-inflated RGB ones, except the first
    convolution, which is the inflated RGB filter averaged over colour (flow_init_from_rgb)."""
    rgb = Student(name, {HEAD: num_classes})
    inflate_into(rgb.backbone, state_2d)
    rgb_weight = first_conv(rgb.backbone)[2].weight  # (out, 3, kt, kh, kw)
    flow = Student(name, {HEAD: num_classes}, in_channels=input_channels("flow"))
    # The only tensor whose shape differs is the first conv's weight (3 vs 2 input channels;
    # the stems of the inflatable students have no bias): load everything else as inflated.
    flow_conv_key = _first_conv_weight_key(flow)
    state = {k: v for k, v in rgb.backbone.state_dict().items() if k != flow_conv_key}
    missing, unexpected = flow.backbone.load_state_dict(state, strict=False)
    if list(missing) != [flow_conv_key] or unexpected:
        raise CheckpointError(
            f"inflating into a flow {name}: expected only {flow_conv_key} to differ, got "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    with torch.no_grad():
        first_conv(flow.backbone)[2].weight.copy_(flow_init_from_rgb(rgb_weight))
    # The action head is fresh either way; keep the RGB student's draw for the same seed.
    flow.heads.load_state_dict(rgb.heads.state_dict())
    return flow


def _first_conv_weight_key(student: Student) -> str:
    """The backbone state-dict key of the first convolution's weight (e.g. ``stem.0.weight``)."""
    conv = first_conv(student.backbone)[2]
    for key, module in student.backbone.named_modules():
        if module is conv:
            return f"{key}.weight"
    raise TypeError("first convolution not found among the backbone's modules")
