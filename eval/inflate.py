"""The ImageNet-inflated baseline: I3D-style inflation of 2D ResNet-18 weights into a 3D ResNet.

Every 2D kernel ``(O, I, kh, kw)`` becomes ``(O, I, kt, kh, kw)`` by repeating it ``kt`` times over
time and dividing by ``kt``, so on a clip whose frames are all the same ("boring video") each 3D
convolution answers exactly what the 2D one answers on that frame. BatchNorm statistics and
affine parameters are copied. torchvision's ``r3d_18``, ``mc3_18`` and ``r2plus1d_18`` have
ResNet-18's layer structure, except that their stem has no max-pool: the inflated net is therefore
the 3D version of ResNet-18 *without its stem max-pool* (the architecture of the student is kept,
so that scratch, inflated and distilled runs differ only in their initial weights).

``r2plus1d_18`` factors each 3D convolution into a spatial ``1 x k x k`` one with ``mid`` outputs,
BatchNorm and ReLU, then a temporal ``t x 1 x 1`` one (:func:`factor_2plus1d`). The 2D kernel,
flattened to ``W (O, I*k*k)``, is written as ``A @ B`` with ``r`` inner channels; the spatial conv
holds ``B`` and ``-B`` and the temporal conv ``A`` and ``-A`` (over ``kt`` taps, divided by ``kt``),
so that ``relu(Bx) - relu(-Bx) = Bx`` passes the ReLU between them, with the BatchNorm between them
the identity. That needs ``2r <= mid``. torchvision's mid-channel counts allow ``r = O`` (then
``A = I``, ``B = W``: exact) in the second block of each layer and in layer1, but not in the
stem (mid 45 for 64 outputs: ``r = 22``) nor in the first block of layers 2-4 (``r`` = 115 of
128, 230 of 256, 460 of 512); there ``A B`` is the best rank-``r`` approximation of ``W`` (its
truncated SVD). So on a static clip the inflated R(2+1)D computes exactly the 2D ResNet-18 whose
kernels are those approximations, not ResNet-18 itself (logged when inflating). Mid channels
beyond ``2r`` keep the builder's random spatial filters and get zero temporal weights: they add
nothing at the start but can learn.

Exactness on a static clip holds wherever a temporal receptive field does not reach the zero
padding at the clip's ends; the tests check it at the centre of a long clip.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torchvision.models.video.resnet import Conv2Plus1D, R2Plus1dStem

from distinit.pipeline.errors import WeightsError
from distinit.pipeline.flow import FLOW_CHANNELS
from distinit.pipeline.weights import (
    file_sha256,
    load_weights_only,
    torchvision_weights_file,
    unwrap_state_dict,
)

log = logging.getLogger(__name__)

INFLATABLE = ("r3d_18", "mc3_18", "r2plus1d_18")

# 3D (torchvision video ResNet) name fragment -> 2D ResNet name fragment.
_RENAMES = (
    ("stem.0.", "conv1."),
    ("stem.1.", "bn1."),
    ("stem.4.", "bn1."),  # r2plus1d_18's stem: stem.1 is its mid BatchNorm, set by factoring
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
    """Load I3D-inflated ``state_2d`` into a torchvision 3D ResNet backbone (fc not touched);
    an R(2+1)D's factored convolutions are set by :func:`factor_2plus1d`."""
    target = backbone.state_dict()
    inflated = _factored_state(backbone, state_2d)
    for name, tensor in target.items():
        if name in inflated:
            continue
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


def _factorisations(backbone: nn.Module) -> list[tuple[str, str, nn.Sequential]]:
    """``(prefix, 2D conv name, module)`` of every (2+1)D factorisation in ``backbone``: the
    stem (``conv1``) and each block convolution (``layerX.Y.convZ``). Its children 0, 1 and 3
    are the spatial conv, the mid BatchNorm and the temporal conv."""
    found = []
    for name, module in backbone.named_modules():
        if isinstance(module, R2Plus1dStem):
            found.append((name, "conv1", module))
        elif isinstance(module, Conv2Plus1D):
            found.append((name, name.removesuffix(".0"), module))
    return found


def _parts(module: nn.Sequential) -> tuple[nn.Conv3d, nn.BatchNorm3d, nn.Conv3d]:
    """A factorisation's spatial conv, mid BatchNorm and temporal conv (torchvision's layout)."""
    spatial, mid_bn, temporal = module[0], module[1], module[3]
    if not (
        isinstance(spatial, nn.Conv3d)
        and isinstance(mid_bn, nn.BatchNorm3d)
        and isinstance(temporal, nn.Conv3d)
    ):
        raise TypeError(f"not torchvision's (2+1)D layout (conv, BN, ReLU, conv): {module}")
    return spatial, mid_bn, temporal


def _factored_state(
    backbone: nn.Module, state_2d: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The spatial conv, mid BatchNorm and temporal conv tensors of every factorisation."""
    out: dict[str, torch.Tensor] = {}
    limited: list[str] = []
    factorisations = _factorisations(backbone)
    for prefix, name_2d, module in factorisations:
        spatial, mid_bn, temporal = _parts(module)
        source = state_2d.get(f"{name_2d}.weight")
        if source is None:
            raise WeightsError(f"2D weights lack {name_2d}.weight (for {prefix})")
        if tuple(source.shape) != (
            temporal.out_channels,
            spatial.in_channels,
            *spatial.kernel_size[1:],
        ):
            raise WeightsError(f"{prefix}: 2D kernel {tuple(source.shape)} does not fit")
        w_spatial, w_temporal, rank = factor_2plus1d(
            source, spatial.weight.detach(), temporal.kernel_size[0]
        )
        out[f"{prefix}.0.weight"] = w_spatial
        out[f"{prefix}.3.weight"] = w_temporal
        # The identity in eval mode: (x - 0) / sqrt(var + eps) * 1 + 0 with var + eps = 1.
        n = mid_bn.num_features
        out[f"{prefix}.1.weight"] = torch.ones(n)
        out[f"{prefix}.1.bias"] = torch.zeros(n)
        out[f"{prefix}.1.running_mean"] = torch.zeros(n)
        out[f"{prefix}.1.running_var"] = torch.full((n,), 1.0 - mid_bn.eps)
        out[f"{prefix}.1.num_batches_tracked"] = torch.tensor(0)
        if rank < source.shape[0]:
            limited.append(f"{name_2d} (rank {rank} of {source.shape[0]})")
    if limited:
        log.info(
            "R(2+1)D mid channels pass %d of %d 2D kernels exactly; the best low-rank "
            "approximations of the others: %s",
            len(factorisations) - len(limited),
            len(factorisations),
            ", ".join(limited),
        )
    return out


def factor_2plus1d(
    kernel_2d: torch.Tensor, spatial_init: torch.Tensor, kt: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A 2D kernel ``(O, I, k, k)`` as a (2+1)D pair: spatial ``(mid, I, 1, k, k)`` (``mid``
    from ``spatial_init``, whose filters the unused mid channels keep) and temporal
    ``(O, mid, kt, 1, 1)``, and the rank ``r`` passed through (see the module docstring)."""
    out_ch, in_ch, kh, kw = kernel_2d.shape
    mid = spatial_init.shape[0]
    w = kernel_2d.reshape(out_ch, -1).double()
    a, b = _factors(w, min(out_ch, w.shape[1], mid // 2))  # (O, r), (r, I*k*k)
    r = a.shape[1]
    spatial = spatial_init.reshape(mid, -1).double().clone()
    spatial[:r], spatial[r : 2 * r] = b, -b
    mix = torch.zeros(out_ch, mid, dtype=torch.float64)
    mix[:, :r], mix[:, r : 2 * r] = a, -a  # relu(Bx) - relu(-Bx) = Bx
    temporal = (mix / kt).reshape(out_ch, mid, 1, 1, 1).repeat(1, 1, kt, 1, 1)
    dtype = kernel_2d.dtype
    return spatial.reshape(mid, in_ch, 1, kh, kw).to(dtype), temporal.to(dtype), r


def _factors(w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` with ``A @ B`` = ``w`` when ``rank`` covers its rows (``A`` the identity, ``B``
    the 2D filters themselves), else its best rank-``rank`` approximation: ``A`` the top
    ``rank`` left singular vectors (orthonormal, so ``B = A.T @ w`` keeps the 2D filters' scale),
    from the eigenvectors of the small ``w @ w.T`` (a full SVD of layer4's ``512 x 4608``
    kernels took seconds each)."""
    if rank >= w.shape[0]:
        return torch.eye(w.shape[0], dtype=w.dtype), w
    _, vectors = torch.linalg.eigh(w @ w.T)  # eigenvalues ascending: the top ones last
    a = vectors[:, -rank:]
    return a, a.T @ w


def flow_init_from_rgb(conv_weight: torch.Tensor, in_channels: int = FLOW_CHANNELS) -> torch.Tensor:
    """Cross-modality initialisation of a first convolution for a non-RGB input.

    ``conv_weight`` is an RGB filter bank ``(out, 3, kt, kh, kw)`` (or ``(out, 3, kh, kw)``);
    the result has ``in_channels`` input channels, each the mean of the RGB filters over the
    colour dimension (TSN's rule for flow networks initialised from ImageNet). The mean, not the
    sum, is replicated: so each input channel starts with the RGB filter's average response to
    one colour, whatever ``in_channels`` is. Returns a new tensor of the same dtype and device,
    detached from ``conv_weight``'s graph, ready for ``conv.weight.data.copy_`` in ``no_grad``.
    """
    if conv_weight.ndim < 3 or conv_weight.shape[1] != 3:
        raise ValueError(
            f"expected an RGB filter bank (out, 3, ...), got shape {tuple(conv_weight.shape)}"
        )
    if in_channels < 1:
        raise ValueError(f"in_channels must be at least 1, got {in_channels}")
    mean = conv_weight.detach().mean(dim=1, keepdim=True)  # (out, 1, kt, kh, kw)
    repeats = [1, in_channels] + [1] * (conv_weight.ndim - 2)
    return mean.repeat(*repeats).contiguous()  # (out, in_channels, kt, kh, kw)
