"""Running teachers on batches of decoded frames, as fast as the device allows.

Frames arrive as one ``(B, H, W, 3)`` uint8 array; permuting it to NCHW gives a channels-last
tensor for free, which is the layout the convolutions run fastest in. Teachers run under
``torch.inference_mode`` and, when asked, autocast to bf16/fp16; logits come back as float32.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distinit.extract.teachers import Teacher
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.video import FrameGeometry

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


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


def default_batch_size(device: torch.device, compiled: bool) -> int:
    """Frames per teacher batch. GPUs want large batches; on CPU small ones stay in cache:
    ``distinit bench extract`` on 2 cores measured EfficientNet-Lite0 compiled at 213/139 and
    209/236 frames/s for batch 4/8 in two runs (noise), and uncompiled fastest at 8 (124 vs 50
    at 64)."""
    if device.type == "cuda":
        return 256
    return 4 if compiled else 8


def decode_geometry(teachers: Sequence[Teacher]) -> FrameGeometry:
    """Frames are decoded once, for the largest crop any teacher needs; others are resized."""
    largest = max(teachers, key=lambda t: t.crop_size)
    return FrameGeometry(largest.crop_size, largest.crop_size, resize_shorter=largest.resize_size)


class _TeacherOnFrames(nn.Module):
    """One teacher including its input transform: (B, 3, H, W) uint8 -> (B, C) logits."""

    def __init__(self, teacher: Teacher) -> None:
        super().__init__()
        self.model = teacher.model
        self.crop = teacher.crop_size
        self.mean: torch.Tensor
        self.inv_std: torch.Tensor
        self.register_buffer("mean", torch.tensor(teacher.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer(
            "inv_std", 1.0 / torch.tensor(teacher.std).view(1, 3, 1, 1), persistent=False
        )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.float()
        if self.crop != x.shape[-1]:
            x = F.interpolate(x, size=(self.crop, self.crop), mode="bilinear", antialias=True)
        x = ((x - self.mean) * self.inv_std).contiguous(memory_format=torch.channels_last)
        return self.model(x)


class TeacherRunner:
    """Holds teachers on a device and maps uint8 frame batches to float32 logits.

    With ``compile=True`` each teacher (with its input transform) goes through
    ``torch.compile``: a one-off cost of tens of seconds that roughly doubles the CPU frame rate
    (see ``distinit bench extract``). Batches are then padded to ``batch_size`` so one compiled
    shape serves the whole run.
    """

    def __init__(
        self,
        teachers: Sequence[Teacher],
        device: torch.device,
        precision: str,
        *,
        compile: bool = False,
        batch_size: int | None = None,
        eager_if_compile_fails: bool = False,
    ) -> None:
        if compile and batch_size is None:
            raise ValueError("a compiled teacher needs the batch size it will be run at")
        self.teachers = list(teachers)
        self.device = device
        self.precision = precision
        self.compiled = compile
        self.batch_size = batch_size
        self.eager_if_compile_fails = eager_if_compile_fails
        self.geometry = decode_geometry(teachers)
        self._eager: dict[str, nn.Module] = {}
        for t in self.teachers:
            t.model.eval()
            module = _TeacherOnFrames(t).to(device)
            self._eager[t.name] = module.to(memory_format=torch.channels_last)
        if compile and device.type == "cpu":
            # Inductor warns on every CPU compile of a CUDA build that no CUDA runtime is found;
            # that is expected here and says nothing a user can act on.
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        self._forward: dict[str, nn.Module] = (
            {name: torch.compile(m) for name, m in self._eager.items()}  # type: ignore[misc]
            if compile
            else dict(self._eager)
        )

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
        n = len(frames)
        if self.compiled and self.batch_size is not None and n < self.batch_size:
            padding = np.zeros((self.batch_size - n, *frames.shape[1:]), dtype=frames.dtype)
            frames = np.concatenate([frames, padding])
        x8 = self.to_device(frames)
        out: dict[str, np.ndarray] = {}
        for name, forward in self._forward.items():
            with self._autocast():
                try:
                    logits = forward(x8)
                except Exception as exc:  # compilation errors surface on the first call
                    if not (self.compiled and self.eager_if_compile_fails):
                        raise
                    log.warning(
                        "torch.compile failed for %s (%s); running it uncompiled: same results, "
                        "slower. --compile off skips the attempt.",
                        name,
                        str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__,
                    )
                    self._forward[name] = self._eager[name]
                    logits = self._eager[name](x8)
            out[name] = logits[:n].float().cpu().numpy()
        return out
