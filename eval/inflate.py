"""The ImageNet-inflated baseline: I3D-style inflation of 2D ResNet-18 weights into a 3D ResNet.

Every 2D kernel ``(O, I, kh, kw)`` becomes ``(O, I, kt, kh, kw)`` by repeating it ``kt`` times over
time and dividing by ``kt``, so on a clip whose frames are all the same ("boring video") each 3D
convolution answers exactly what the 2D one answers on that frame. BatchNorm statistics and
affine parameters are copied. torchvision's ``r3d_18`` and ``mc3_18`` have ResNet-18's layer
structure, except that their stem has no max-pool: the inflated net is therefore the 3D version of
ResNet-18 *without its stem max-pool* (the architecture of the student is kept, so that scratch,
inflated and distilled runs differ only in their initial weights).

Exactness on a static clip holds wherever a temporal receptive field does not reach the zero
padding at the clip's ends; the test checks it at the centre of a long clip.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from distinit.pipeline.errors import WeightsError
from distinit.pipeline.weights import (
    file_sha256,
    load_weights_only,
    torchvision_weights_file,
    unwrap_state_dict,
)

log = logging.getLogger(__name__)

INFLATABLE = ("r3d_18", "mc3_18")

# 3D (torchvision video ResNet) name fragment -> 2D ResNet name fragment.
_RENAMES = (
    ("stem.0.", "conv1."),
    ("stem.1.", "bn1."),
    (".conv1.0.", ".conv1."),
    (".conv1.1.", ".bn1."),
    (".conv2.0.", ".conv2."),
    (".conv2.1.", ".bn2."),
)


def _name_2d(name_3d: str) -> str:
    for old, new in _RENAMES:
        if old in name_3d:
            return name_3d.replace(old, new)
    return name_3d  # downsample.{0,1}.* and BatchNorm buffers keep their names


def _resnet18_state(payload: object, source: str) -> dict[str, torch.Tensor]:
    state = unwrap_state_dict(payload, source)
    conv1 = state.get("conv1.weight")
    if conv1 is None or tuple(conv1.shape) != (64, 3, 7, 7) or "layer4.1.conv2.weight" not in state:
        raise WeightsError(f"{source}: not a 2D ResNet-18 state dict (conv1 64x3x7x7, layer4.1)")
    return state


def load_resnet18_weights(path: Path | None) -> tuple[dict[str, torch.Tensor], str]:
    """ResNet-18 ImageNet weights and their identity (file hash or torchvision weights name).

    With ``path``: a local file (``torch.load(weights_only=True)``; ``state_dict``/``module.``
    wrappers accepted). Without: torchvision's ``IMAGENET1K_V1`` weights from the torch hub cache
    (never downloaded). There is no fallback to random weights.
    """
    if path is not None:
        state = _resnet18_state(load_weights_only(path), str(path))
        return state, f"file:{path} sha256:{file_sha256(path)[:16]}"
    from torchvision.models import ResNet18_Weights

    weights = ResNet18_Weights.IMAGENET1K_V1
    cached = torchvision_weights_file(weights.url, "--inflate-weights PATH (that file)")
    state = _resnet18_state(load_weights_only(cached), str(cached))
    return state, f"torchvision:ResNet18_Weights.IMAGENET1K_V1 {weights.url}"


def inflate_into(backbone: nn.Module, state_2d: dict[str, torch.Tensor]) -> None:
    """Load I3D-inflated ``state_2d`` into a torchvision 3D ResNet backbone (fc not touched)."""
    target = backbone.state_dict()
    inflated: dict[str, torch.Tensor] = {}
    for name, tensor in target.items():
        source = state_2d.get(_name_2d(name))
        if source is None:
            raise WeightsError(f"2D weights lack {_name_2d(name)} (for {name})")
        if tensor.dim() == 5:
            kt = tensor.shape[2]
            if tuple(source.shape) != (tensor.shape[0], tensor.shape[1], *tensor.shape[3:]):
                raise WeightsError(f"{name}: 2D kernel {tuple(source.shape)} does not fit")
            # Repeat over time and divide by kt: a static input gives the 2D response.
            inflated[name] = source.unsqueeze(2).repeat(1, 1, kt, 1, 1) / kt
        else:
            if source.shape != tensor.shape:
                raise WeightsError(f"{name}: shape {tuple(source.shape)} does not fit")
            inflated[name] = source.clone()
    backbone.load_state_dict(inflated, strict=True)
    log.info("inflated %d tensors from 2D ResNet-18 weights", len(inflated))
