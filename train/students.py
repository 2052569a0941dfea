"""3D student networks: torchvision's video models, with one linear head per teacher target.

The registry maps a name to a builder of the backbone (the network without its final classifier),
the size of its feature vector and the clip sizes it can take. Distillation puts one linear head
per teacher target on top (class scores for logits, a projection to the teacher's dimension for
an embedding); fine-tuning puts a fresh head for the action classes.

The video transformers ``mvit_v2_s`` (fixed 16x224x224 input: its positional embeddings are
learnt for that grid) and ``swin3d_t`` (any size: it pads to its 2x4x4 patches and 8x7x7
windows) sit beside the 3D ResNets and S3D; their input-size rules
(:mod:`distinit.train.student_inputs`) are checked up front by :meth:`StudentSpec.check_input`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models import video as tv_video

from distinit.pipeline.errors import UnknownNameError
from distinit.train.student_inputs import student_input

# torchvision's video models expect Kinetics-normalised RGB in [0, 1].
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
S3D_MEAN = (0.43216, 0.394666, 0.37645)
S3D_STD = (0.22803, 0.22145, 0.216989)


@dataclass(frozen=True)
class StudentSpec:
    name: str
    build: Callable[[], nn.Module]
    feature_dim: int
    mean: tuple[float, float, float] = KINETICS_MEAN
    std: tuple[float, float, float] = KINETICS_STD
    # How the backbone differs from torchvision's network of the same name (what `distinit
    # export` tells a user who loads the weights into plain torchvision): the attribute of
    # torchvision's classifier, which the backbone lacks, and the attribute of a fixed-size
    # pooling the backbone replaces by global average pooling (None: it keeps torchvision's).
    torchvision_head: str = "fc"
    torchvision_pool: str | None = None

    def check_input(self, clip_len: int, crop: int) -> None:
        """Refuse, in one line, a clip size this network cannot take."""
        student_input(self.name).check(self.name, clip_len, crop)


def _resnet3d(builder: Callable[..., nn.Module]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        net = builder(weights=None)
        net.fc = nn.Identity()  # (B, 512) pooled features
        return net

    return build


def _s3d() -> nn.Module:
    net = tv_video.s3d(weights=None)
    return _S3DFeatures(net)


class _S3DFeatures(nn.Module):
    features: nn.Module  # declared: nn.Module's __getattr__ is typed as Tensor | Module

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        features = net.features
        assert isinstance(features, nn.Module)  # torchvision's S3D.features is a Sequential
        self.features = features
        # Global pooling instead of S3D's fixed (2, 7, 7) window, which only fits 224px input.
        self.pool = nn.AdaptiveAvgPool3d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, T, H, W) -> (B, 1024)
        return torch.flatten(self.pool(self.features(x)), 1)


def _video_transformer(builder: Callable[..., nn.Module]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        net = builder(weights=None)
        net.head = nn.Identity()  # (B, 768): MViT's class token / Swin's pooled features
        return net

    return build


STUDENTS: dict[str, StudentSpec] = {
    "r3d_18": StudentSpec("r3d_18", _resnet3d(tv_video.r3d_18), 512),
    "mc3_18": StudentSpec("mc3_18", _resnet3d(tv_video.mc3_18), 512),
    "r2plus1d_18": StudentSpec("r2plus1d_18", _resnet3d(tv_video.r2plus1d_18), 512),
    "s3d": StudentSpec(
        "s3d",
        _s3d,
        1024,
        S3D_MEAN,
        S3D_STD,
        torchvision_head="classifier",
        torchvision_pool="avgpool",
    ),
    "mvit_v2_s": StudentSpec(
        "mvit_v2_s",
        _video_transformer(tv_video.mvit_v2_s),
        768,
        torchvision_head="head",
    ),
    "swin3d_t": StudentSpec(
        "swin3d_t",
        _video_transformer(tv_video.swin3d_t),
        768,
        torchvision_head="head",
    ),
}


def student_spec(name: str) -> StudentSpec:
    if name not in STUDENTS:
        raise UnknownNameError("student", name, list(STUDENTS))
    return STUDENTS[name]


def first_conv(backbone: nn.Module) -> tuple[nn.Module, str, nn.Conv3d]:
    """The parent module, attribute name and the first 3D convolution of a backbone."""
    for parent in backbone.modules():
        for attr, child in parent.named_children():
            if isinstance(child, nn.Conv3d):
                return parent, attr, child
    raise TypeError("backbone has no Conv3d")


def replace_first_conv(backbone: nn.Module, in_channels: int) -> None:
    """Give the backbone a first convolution taking ``in_channels`` (e.g. 2 for optical flow)."""
    parent, attr, conv = first_conv(backbone)
    new = nn.Conv3d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        bias=conv.bias is not None,
    )
    setattr(parent, attr, new)


class Student(nn.Module):
    """A video backbone with named linear heads (one per teacher, or one for action classes)."""

    mean: torch.Tensor  # buffers, declared for the type checker: (1, 3, 1, 1, 1)
    std: torch.Tensor

    def __init__(self, name: str, heads: dict[str, int], in_channels: int = 3) -> None:
        super().__init__()
        spec = student_spec(name)
        self.name = name
        self.in_channels = in_channels
        self.backbone = spec.build()
        if in_channels != 3:
            replace_first_conv(self.backbone, in_channels)
        # Module names cannot hold '.', which timm teacher names do: heads are stored under a
        # safe name, and looked up and returned under the target's own.
        self.head_names = {h: head_module_name(h) for h in heads}
        self.heads = nn.ModuleDict(
            {self.head_names[h]: nn.Linear(spec.feature_dim, n) for h, n in heads.items()}
        )
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1, 1), persistent=False)

    def normalize(self, clips: torch.Tensor) -> torch.Tensor:
        """A batch of clip arrays (``distinit.train.clips.clip_input``) -> the network's input.

        * RGB student (3 input channels): ``(B, T, H, W, 3)`` uint8 -> ``(B, 3, T, H, W)`` float,
          scaled to [0, 1] and normalised by the student's mean and std.
        * Flow student (2): ``(B, T, H, W, 2)`` float (dx, dy) already in [-1, 1] ->
          ``(B, 2, T, H, W)``; no RGB statistics apply, so the values pass through unchanged.

        Anything else (e.g. RGB frames handed to a flow student) raises ``ValueError`` rather
        than being reinterpreted.
        """
        if clips.ndim != 5 or clips.shape[-1] != self.in_channels:
            raise ValueError(
                f"{self.name} takes (B, T, H, W, {self.in_channels}) clips, "
                f"got shape {tuple(clips.shape)}"
            )
        if self.in_channels == 3:
            if clips.dtype != torch.uint8:
                raise ValueError(f"RGB clips must be uint8, got {clips.dtype}")
            x = clips.permute(0, 4, 1, 2, 3).float().div_(255.0)  # (B, 3, T, H, W)
            return (x - self.mean) / self.std
        if not clips.is_floating_point():
            raise ValueError(f"flow clips must be float in [-1, 1], got {clips.dtype}")
        return clips.permute(0, 4, 1, 2, 3).float()  # (B, C, T, H, W)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)  # (B, in_channels, T, H, W) -> (B, D)

    def has_head(self, name: str) -> bool:
        return name in self.head_names

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.features(x)
        return {h: self.heads[m](feats) for h, m in self.head_names.items()}


def head_module_name(target: str) -> str:
    return target.replace(".", "\N{MIDDLE DOT}")
