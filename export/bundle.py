"""``distinit export``: a distilled student as plain torchvision weights, a config and a card.

The output folder holds ``model.safetensors`` (the backbone under torchvision's own key names,
no distillation heads), ``config.json`` (the input recipe, how the weights fit torchvision's
network, and provenance) and ``README.md`` (the model card). Everything is checked before the
first file is written, so a refused export leaves nothing behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn
from torchvision.models import video as tv_video

from distinit.eval.report import load_results
from distinit.export.model_card import model_card
from distinit.export.recipe import input_recipe, provenance
from distinit.pipeline.atomic import atomic_write
from distinit.pipeline.errors import CheckpointError, ConfigError
from distinit.pipeline.weights import file_sha256
from distinit.train.checkpoint import FinalCheckpoint, load_final
from distinit.train.students import first_conv, student_spec

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
EXPORT_FORMAT = "distinit-export"
EXPORT_VERSION = 1
BACKBONE_PREFIX = "backbone."  # the Student's backbone module, torchvision's network inside


@dataclass(frozen=True)
class Export:
    """What :func:`export_checkpoint` wrote."""

    files: list[Path]
    config: dict[str, Any]


def export_checkpoint(
    checkpoint: Path, out: Path, *, results: Path | None = None, force: bool = False
) -> Export:
    """Write ``checkpoint`` (a ``final.pt``) to ``out`` as an export; ``results`` (an eval
    ``results.json`` of that checkpoint) adds its accuracies to the card."""
    _check_out(out, force)
    ckpt = load_final(checkpoint)  # refuses last.pt, foreign and non-torch files in one line
    sha256 = file_sha256(checkpoint)
    evaluated = _results_of(results, sha256) if results is not None else None
    weights = torchvision_weights(ckpt)
    config = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "student": ckpt.student,
        "feature_dim": student_spec(ckpt.student).feature_dim,
        "torchvision": torchvision_fit(ckpt, weights, checkpoint),
        "input": input_recipe(ckpt, checkpoint),
        "provenance": provenance(ckpt, sha256),
    }
    card = model_card(config, evaluated)
    out.mkdir(parents=True, exist_ok=True)
    # safetensors metadata holds strings only; "format": "pt" is what loaders look for.
    blob = safetensors_bytes(weights, metadata={"format": "pt", "student": ckpt.student})
    files = [
        atomic_write(out / WEIGHTS_NAME, blob),
        atomic_write(out / CONFIG_NAME, config),
        atomic_write(out / CARD_NAME, card),
    ]
    return Export(files, config)


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(
            f"--out {out} is not empty; choose a new directory, or pass --force to overwrite "
            f"{WEIGHTS_NAME}, {CONFIG_NAME} and {CARD_NAME} there"
        )


def _results_of(path: Path, checkpoint_sha256: str) -> dict[str, Any]:
    """An eval ``results.json`` of exactly this checkpoint (matched by content, not path)."""
    results = load_results(path)
    evaluated = results.get("init_details", {}).get("checkpoint_sha256")
    if evaluated != checkpoint_sha256:
        what = (
            f"a checkpoint with sha256 {evaluated[:12]}..."
            if evaluated
            else f"--init {results.get('init')}"
        )
        raise ConfigError(
            f"--results {path} evaluates {what}, not this checkpoint "
            f"(sha256 {checkpoint_sha256[:12]}...); give the results of its own eval"
        )
    return results


def torchvision_weights(ckpt: FinalCheckpoint) -> dict[str, torch.Tensor]:
    """The backbone's tensors under torchvision's names: the ``backbone.`` prefix dropped, the
    distillation heads left out (they score the teachers' classes, not the user's)."""
    return {
        k.removeprefix(BACKBONE_PREFIX): v.detach().contiguous()
        for k, v in ckpt.state_dict.items()
        if k.startswith(BACKBONE_PREFIX)
    }


def torchvision_fit(
    ckpt: FinalCheckpoint, weights: dict[str, torch.Tensor], source: Path
) -> dict[str, Any]:
    """How ``weights`` fit torchvision's network of the same name, checked against a freshly
    built one: which of its keys they lack (its classifier's, nothing else), which pooling the
    student replaced, and its first convolution (2 input channels for a flow student)."""
    spec = student_spec(ckpt.student)
    net: nn.Module = getattr(tv_video, ckpt.student)(weights=None)
    own = net.state_dict()
    unexpected = sorted(set(weights) - set(own))
    missing = sorted(set(own) - set(weights))
    foreign = [k for k in missing if not k.startswith(f"{spec.torchvision_head}.")]
    _, _, conv = first_conv(net)
    conv_name = next(name for name, module in net.named_modules() if module is conv)
    reshaped = sorted(k for k in set(weights) & set(own) if weights[k].shape != own[k].shape)
    conv_weight = weights.get(f"{conv_name}.weight")
    if (
        unexpected
        or foreign
        or reshaped not in ([], [f"{conv_name}.weight"])
        or conv_weight is None
        or conv_weight.shape[1] != ckpt.in_channels
    ):
        raise CheckpointError(
            f"{source}: its {ckpt.student} backbone does not fit torchvision's (unexpected "
            f"{unexpected[:3]}, missing {foreign[:3]}, other shapes {reshaped[:3]})"
        )
    return {
        "builder": f"torchvision.models.video.{ckpt.student}",
        "classifier": spec.torchvision_head,  # not exported: fit your own
        "missing_keys": missing,  # what load_state_dict(..., strict=False) reports
        "global_pool": spec.torchvision_pool,  # torchvision's fixed pooling, made global
        "first_conv": {
            "module": conv_name,
            "in_channels": int(conv_weight.shape[1]),
            "out_channels": conv.out_channels,
            "kernel_size": list(conv.kernel_size),
            "stride": list(conv.stride),
            "padding": list(conv.padding),
            "bias": conv.bias is not None,
            "replaced": int(conv_weight.shape[1]) != conv.in_channels,
        },
    }
