"""Configuration of ``distinit extract``: one frozen dataclass, validated on construction."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from distinit.pipeline.errors import ConfigError
from distinit.pipeline.frame_geometry import format_size
from distinit.pipeline.views import DEFAULT_POSITIONS, ViewSet, default_crop

FRAME_MODES = ("store", "none")
MAX_STORE_SIDE = 1024  # far above any student's input; a typo like 1710x1280 fails up front
NO_TEACHER = "none"  # --teacher none: a frames-only store (e.g. of an evaluation dataset)


# Compiling costs tens of seconds once; below this many videos it rarely pays for itself.
COMPILE_AUTO_MIN_VIDEOS = 20


def parse_teacher_weights(values: tuple[str, ...], teachers: tuple[str, ...]) -> dict[str, str]:
    """``NAME=PATH`` pairs; a bare ``PATH`` is allowed when there is exactly one teacher."""
    from distinit.extract.teachers import group_specs

    teachers = tuple(group_specs(teachers))  # specs -> teacher names
    out: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            if len(teachers) != 1:
                raise ConfigError("with several teachers, give --teacher-weights as NAME=PATH")
            name, path = teachers[0], value
        if name not in teachers:
            raise ConfigError(f"--teacher-weights names {name!r}, which is not a --teacher")
        out[name] = path
    return out


@dataclass(frozen=True)
class ExtractConfig:
    videos: str
    out: str
    teachers: tuple[str, ...] = ("efficientnet_lite0",)
    teacher_weights: dict[str, str] = field(default_factory=dict)
    fps: float | None = None
    batch_size: int | None = None  # None: CPU_CALL_FRAMES on CPU, calibrated at start-up on CUDA
    workers: int = 2  # concurrent ffmpeg decoders
    decoder_threads: int = 1  # threads inside each ffmpeg
    device: str = "auto"
    precision: str = "auto"
    compile: str = "auto"  # torch.compile the teachers: auto = when there are many videos
    num_shards: int = 1
    shard_index: int = 0
    videos_per_shard: int = 200
    strict: bool = False
    retry_failed: bool = False
    frames: str = "store"  # "store": also keep the student's frames; "none": targets only
    store_size: tuple[int, int] = (171, 128)  # (width, height): train's --resize
    # Crop positions per frame the teachers run on (None: the teacher's own recipe, one view
    # that matches no student crop), in the store_size frame with train's --crop, and mirrored.
    views: int | None = DEFAULT_POSITIONS
    crop: int | None = None  # None: 7/8 of the store's shorter side (112 for 171x128)
    mirror_views: bool = True

    def __post_init__(self) -> None:
        if not os.path.isdir(self.videos):
            raise ConfigError(f"--videos {self.videos}: no such directory")
        if not self.teachers:
            raise ConfigError("at least one --teacher is needed (or --teacher none)")
        if NO_TEACHER in self.teachers and len(self.teachers) > 1:
            raise ConfigError("--teacher none cannot be combined with other teachers")
        if self.frames not in FRAME_MODES:
            raise ConfigError(f"--frames must be store or none, got {self.frames!r}")
        if self.frames == "none" and not self.teacher_names:
            raise ConfigError("--teacher none with --frames none would store nothing")
        if not all(16 <= side <= MAX_STORE_SIDE for side in self.store_size):
            raise ConfigError(
                f"--store-size {format_size(self.store_size)}: both sides must be 16 to "
                f"{MAX_STORE_SIDE} pixels (the student's frame size, e.g. 171x128)"
            )
        if len(set(self.teachers)) != len(self.teachers):
            raise ConfigError(f"--teacher given twice: {list(self.teachers)}")
        from distinit.extract.teachers import group_specs

        group_specs(self.teachers)  # a bad NAME:KIND is refused before any work
        if self.fps is not None and not self.fps > 0:
            raise ConfigError(f"--fps must be positive, got {self.fps}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.workers < 1 or self.decoder_threads < 0:
            raise ConfigError("--workers must be >= 1 and --decoder-threads >= 0")
        if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
            raise ConfigError(
                f"--shard-index {self.shard_index} is outside 0..{self.num_shards - 1}"
            )
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"--device {self.device!r}: expected auto, cpu, cuda or cuda:N")
        if self.compile not in ("auto", "on", "off"):
            raise ConfigError(f"--compile must be auto, on or off, got {self.compile!r}")
        if self.videos_per_shard < 1:
            raise ConfigError("--videos-per-shard must be at least 1")
        if os.path.abspath(self.out) == os.path.abspath(self.videos):
            raise ConfigError("--out must not be the --videos directory")
        self.view_set()  # an impossible --views / --crop is refused before any work

    def view_set(self) -> ViewSet | None:
        """The views every teacher runs on (None: the teacher's own recipe, or no teacher)."""
        if self.views is None or not self.teacher_names:
            return None
        crop = self.crop if self.crop is not None else default_crop(self.store_size)
        return ViewSet.grid(self.store_size, crop, self.views, self.mirror_views)

    @property
    def teacher_names(self) -> tuple[str, ...]:
        """The teachers to run: none for a frames-only store."""
        return () if self.teachers == (NO_TEACHER,) else self.teachers

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["store_size"] = list(self.store_size)
        d["teachers"] = list(self.teachers)
        d["videos"], d["out"] = os.path.abspath(self.videos), os.path.abspath(self.out)
        return d
