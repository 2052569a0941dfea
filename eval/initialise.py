"""The three initialisations compared by the paper: distilled checkpoint, scratch, inflated.

Each comes as an RGB or an optical-flow student (``modality``). A checkpoint decides its own
modality (``FinalCheckpoint.modality`` / ``in_channels``); scratch and inflated take
``--modality``. Inflated flow uses the cross-modality rule of
:func:`distinit.train.flow.flow_init_from_rgb`: the inflated RGB first convolution averaged over
the colour channels, one copy per flow channel.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from distinit.eval.config import EvalConfig
from distinit.eval.inflate import inflate_into, load_resnet18_weights
from distinit.pipeline.errors import CheckpointError, ConfigError
from distinit.pipeline.weights import file_sha256
from distinit.train.checkpoint import FinalCheckpoint, load_final
from distinit.train.clip_rules import input_channels
from distinit.train.flow import flow_init_from_rgb
from distinit.train.students import Student, first_conv, student_spec

log = logging.getLogger(__name__)

HEAD = "action"


def check_init_inputs(cfg: EvalConfig) -> str:
    """Fail before any dataset work when the checkpoint or weights file cannot be used.

    Returns the modality the run uses (see :func:`resolve_modality`).
    """
    ckpt = load_final(cfg.checkpoint) if cfg.checkpoint is not None else None
    if cfg.init == "inflated":
        load_resnet18_weights(cfg.inflate_weights)
    return resolve_modality(cfg, ckpt)


def resolve_modality(cfg: EvalConfig, ckpt: FinalCheckpoint | None) -> str:
    """The student's input modality: the checkpoint's, else ``--modality`` (default rgb).

    For a flow checkpoint the test input must be the flow it was distilled on:

    * Resize: flow is in pixels per frame *at the resized resolution* (clipped at 20 px), so a
      different ``--resize`` changes the scale of every value; it is refused, not rescaled.
    * Frame spacing: eval clips are consecutive native frames. Training flow spans
      ``frame_stride`` shard rows; a stride other than 1 is refused, because eval cannot tell
      how many native frames that is (it depends on ``extract --fps``, which the checkpoint
      does not record). A stride-1 checkpoint matches eval exactly when its shards held every
      native frame (extract without ``--fps``); results.json says so.
    """
    if ckpt is None:
        return cfg.modality or "rgb"
    assert cfg.checkpoint is not None
    if ckpt.in_channels != input_channels(ckpt.modality):
        raise CheckpointError(
            f"{cfg.checkpoint}: a {ckpt.modality} student with {ckpt.in_channels} input "
            f"channels (expected {input_channels(ckpt.modality)})"
        )
    if cfg.modality is not None and cfg.modality != ckpt.modality:
        raise ConfigError(
            f"--modality {cfg.modality} contradicts {cfg.checkpoint}, a {ckpt.modality} "
            "student (a checkpoint's modality is its own; drop --modality)"
        )
    if ckpt.modality == "flow":
        if cfg.clip_len < 2:
            raise ConfigError("a flow student needs --clip-len >= 2: one frame has no motion")
        trained = tuple(ckpt.config.get("resize", ()))
        if trained and trained != tuple(cfg.resize):
            w, h = trained
            raise ConfigError(
                f"{cfg.checkpoint} was distilled on flow of {w}x{h} frames (pixels per frame at "
                f"that size); pass --resize {w}x{h}, not {cfg.resize[0]}x{cfg.resize[1]}"
            )
        stride = int(ckpt.config.get("frame_stride", 1))
        if stride != 1:
            raise ConfigError(
                f"{cfg.checkpoint} was distilled on flow between shard rows {stride} apart; "
                "eval computes flow between consecutive frames and cannot match that spacing "
                "(it depends on extract --fps, which the checkpoint does not record)"
            )
    return ckpt.modality


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
        student_spec(ckpt.student).check_input(cfg.clip_len, cfg.crop)  # before any decoding
        modality = resolve_modality(cfg, ckpt)
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
            "modality": modality,
        }
        if modality == "flow":
            info["flow_spacing"] = (
                "consecutive native frames; the checkpoint's flow spans 1 shard row, the same "
                "spacing when its shards held every native frame (extract without --fps)"
            )
    elif cfg.init == "inflated":
        modality = resolve_modality(cfg, None)
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
        modality = resolve_modality(cfg, None)
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
