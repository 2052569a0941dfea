"""Running teachers on batches of decoded frames, as fast as the device allows.

Frames arrive as one ``(B, H, W, 3)`` uint8 array; permuting it to NCHW gives a channels-last
tensor for free, which is the layout the convolutions run fastest in. Teachers run under
``torch.inference_mode`` and, when asked, autocast to bf16/fp16; logits come back as float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from distinit.extract.teachers import Teacher
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.video import FrameGeometry

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {device!r}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but CUDA is not available")
    return resolved


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("fp16 on CPU is slow and unsupported by many kernels; use bf16 or fp32")
    return precision


def default_batch_size(device: torch.device) -> int:
    """Frames per teacher batch. On CPU small batches stay in cache (measured by
    ``distinit bench extract``); GPUs want large ones."""
    return 256 if device.type == "cuda" else 8


def decode_geometry(teachers: Sequence[Teacher]) -> FrameGeometry:
    """Frames are decoded once, for the largest crop any teacher needs; others are resized."""
    largest = max(teachers, key=lambda t: t.crop_size)
    return FrameGeometry(largest.crop_size, largest.crop_size, resize_shorter=largest.resize_size)


class TeacherRunner:
    """Holds teachers on a device and maps uint8 frame batches to float32 logits."""

    def __init__(self, teachers: Sequence[Teacher], device: torch.device, precision: str) -> None:
        self.teachers = list(teachers)
        self.device = device
        self.precision = precision
        self.geometry = decode_geometry(teachers)
        for t in self.teachers:
            t.model.eval().to(device, memory_format=torch.channels_last)
            mean = torch.tensor(t.mean, device=device).view(1, 3, 1, 1)
            std = torch.tensor(t.std, device=device).view(1, 3, 1, 1)
            t.model.register_buffer("_distinit_mean", mean, persistent=False)
            t.model.register_buffer("_distinit_inv_std", 1.0 / std, persistent=False)

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def to_device(self, frames: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 numpy -> (B, 3, H, W) uint8 channels-last tensor on the device."""
        x = torch.from_numpy(frames).permute(0, 3, 1, 2)
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        return x

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        x8 = self.to_device(frames)
        out: dict[str, np.ndarray] = {}
        for t in self.teachers:
            x = x8.float()
            if t.crop_size != x.shape[-1]:
                x = F.interpolate(
                    x, size=(t.crop_size, t.crop_size), mode="bilinear", antialias=True
                )
            x = ((x - t.model._distinit_mean) * t.model._distinit_inv_std).contiguous(
                memory_format=torch.channels_last
            )
            with self._autocast():
                logits = t.model(x)
            out[t.name] = logits.float().cpu().numpy()
        return out
