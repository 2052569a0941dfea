"""How decoded frames are sized: ``WxH`` sizes as the CLI writes them, and the geometry (output
size, fit, scaler) a decode produces its frames in."""

from __future__ import annotations

import re
from dataclasses import dataclass

from distinit.pipeline.errors import ConfigError


def format_size(size: tuple[int, ...]) -> str:
    """``(171, 128)`` -> ``171x128``: sizes in messages, as the CLI takes them (a malformed
    size of another length still prints, e.g. ``171``)."""
    return "x".join(map(str, size))


def parse_size(text: str) -> tuple[int, int]:
    """``171x128`` -> ``(171, 128)`` (width, height): how frame sizes are written on the CLI."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise ConfigError(f"size must look like 171x128 (width x height), got {text!r}")
    return int(m.group(1)), int(m.group(2))


# The resampling filters a frame may be resized with, by their ffmpeg and torch name.
INTERPOLATIONS = ("bilinear", "bicubic")


@dataclass(frozen=True)
class FrameGeometry:
    """Output size of decoded frames, and how the source is fitted into it.

    ``resize_shorter=None`` stretches the source to ``width`` x ``height`` (the video-ResNet
    convention of 171x128); otherwise the shorter side is scaled to ``resize_shorter`` keeping the
    aspect ratio and the centre ``width`` x ``height`` is cropped (the ImageNet eval transform).
    ``interpolation`` is ffmpeg's scaler: a teacher's decode uses the teacher's own.
    """

    width: int
    height: int
    resize_shorter: int | None = None
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ValueError(f"frame size must be positive, got {self.width}x{self.height}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                f"got {self.interpolation!r}"
            )
        if self.resize_shorter is not None and self.resize_shorter < max(self.width, self.height):
            raise ValueError("resize_shorter must be at least the crop size")

    @property
    def frame_bytes(self) -> int:
        return self.width * self.height * 3

    def describe(self) -> str:
        if self.resize_shorter is None:
            return f"resize to {self.width}x{self.height} ({self.interpolation})"
        return (
            f"resize shorter side to {self.resize_shorter} ({self.interpolation}), "
            f"centre crop {self.width}x{self.height}"
        )
