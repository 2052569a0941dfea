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

import hashlib
import logging
from pathlib import Path

import torch
from torch import nn

from distinit.pipeline.errors import WeightsError

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


def _unwrap(payload: object, source: str) -> dict[str, torch.Tensor]:
    state = payload
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{source}: not a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    conv1 = state.get("conv1.weight")
    if conv1 is None or tuple(conv1.shape) != (64, 3, 7, 7) or "layer4.1.conv2.weight" not in state:
        raise WeightsError(f"{source}: not a 2D ResNet-18 state dict (conv1 64x3x7x7, layer4.1)")
    return state


def load_resnet18_weights(path: Path | None) -> tuple[dict[str, torch.Tensor], str]:
    """ResNet-18 ImageNet weights and their identity (file hash or torchvision weights name).

    With ``path``: a local file (``torch.load(weights_only=True)``; ``state_dict``/``module.``
    wrappers accepted). Without: torchvision's ``IMAGENET1K_V1`` weights from the torch hub cache,
    downloaded there if the machine is online. There is no fallback to random weights.
    """
    if path is not None:
        if not path.is_file():
            raise WeightsError(f"{path}: no such weights file")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for bad or unsafe pickles
            raise WeightsError(f"{path}: not a loadable weights-only file ({exc})") from exc
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        return _unwrap(payload, str(path)), f"file:{path} sha256:{digest}"
    from torchvision.models import ResNet18_Weights

    weights = ResNet18_Weights.IMAGENET1K_V1
    try:
        state = weights.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise WeightsError(
            f"torchvision ResNet-18 ImageNet weights are not in {cache} and could not be "
            f"downloaded ({type(exc).__name__}); pass --inflate-weights PATH to a local "
            "resnet18 state dict (e.g. resnet18-f37072fd.pth)"
        ) from exc
    return _unwrap(state, weights.url), f"torchvision:ResNet18_Weights.IMAGENET1K_V1 {weights.url}"


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
