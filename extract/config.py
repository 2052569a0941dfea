"""Configuration of ``distinit extract``: one frozen dataclass, validated on construction."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import click

from distinit.pipeline.device import check_device
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.frame_geometry import format_size
from distinit.pipeline.options import DEVICE, FRAME_SIZE, opt
from distinit.pipeline.views import DEFAULT_POSITIONS, ViewSet, default_crop

FRAME_MODES = ("store", "none")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
COMPILE_MODES = ("auto", "on", "off")
RECIPE_VIEW = "recipe"  # --views recipe: one view, the teacher's own crop
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


class ViewsType(click.ParamType):
    """``--views``: a number of crop positions, or ``recipe`` (None)."""

    name = "N|recipe"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int | None:
        if value is None or isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text == RECIPE_VIEW:
            return None
        if text.isdigit() and int(text) >= 1:
            return int(text)
        self.fail(f"{value!r}: give a number of crop positions (1 or more) or 'recipe'", param, ctx)

    def show(self, value: int | None) -> str:
        return RECIPE_VIEW if value is None else str(value)


def _env_world_size(given: int | None, _: object) -> int:
    from distinit.pipeline.runtime import process_from_environment

    return process_from_environment().world_size if given is None else given


def _env_rank(given: int | None, _: object) -> int:
    from distinit.pipeline.runtime import process_from_environment

    return process_from_environment().rank if given is None else given


def _teacher_weights(given: tuple[str, ...], fields: Mapping[str, Any]) -> dict[str, str]:
    return parse_teacher_weights(given, fields["teachers"])


@dataclass(frozen=True)
class ExtractConfig:
    """Every field is an option of ``distinit extract`` (see :mod:`distinit.pipeline.options`)."""

    videos: str = opt(
        flag="Directory searched recursively for videos.", type=click.Path(file_okay=False)
    )
    out: str = opt(
        flag="Shard directory (created; re-running resumes).", type=click.Path(file_okay=False)
    )
    teachers: tuple[str, ...] = opt(
        ("efficientnet_lite0",),
        "Teacher NAME or NAME:embedding (its pooled image embedding instead of its logits; "
        "give both NAME and NAME:embedding for both from one pass). NAME: efficientnet_lite0, "
        "places365_resnet50, timm/<model>[.<tag>], or a torchvision classifier. Repeat for "
        "several (frames are decoded once for all). 'none': only the frame store (e.g. of an "
        "evaluation dataset, for eval --store).",
        name="--teacher",
    )
    teacher_weights: dict[str, str] = opt(
        {},
        "Local weights file for a teacher (default: the teacher's offline source).",
        metavar="[NAME=]PATH",
        parse=_teacher_weights,
    )
    fps: float | None = opt(
        None,
        "Keep the first native frame at or after each 1/FPS s; frames are never duplicated, "
        "so an FPS above the video's own rate keeps every native frame [default: every frame].",
    )
    # None: CPU_CALL_FRAMES on CPU, calibrated at start-up on CUDA.
    batch_size: int | None = opt(
        None,
        "Frames per teacher batch [default: on CPU 8; on CUDA measured at start-up on the "
        "first frames: the largest that fits and still speeds up]. On CPU the teacher runs 8 "
        "frames a call whatever this is (padded), so the targets do not depend on it.",
    )
    workers: int = opt(2, "Videos decoded at once (ffmpeg processes).")
    decoder_threads: int = opt(1, "Threads inside each ffmpeg (0 = ffmpeg decides).")
    device: str = opt("auto", DEVICE)
    precision: str = opt(
        "auto", "Teacher arithmetic; auto = fp16/bf16 on CUDA, fp32 on CPU.", choices=PRECISIONS
    )
    compile: str = opt(  # torch.compile the teachers: auto = when there are many videos
        "auto",
        "torch.compile the teachers (a one-off compile at start-up, faster calls after; "
        "`distinit bench extract` measures both); "
        f"auto = on from {COMPILE_AUTO_MIN_VIDEOS} videos.",
        choices=COMPILE_MODES,
    )
    num_shards: int = opt(
        1,
        "Total ranks [default: $WORLD_SIZE or $SLURM_NTASKS, else 1].",
        cli_default=None,
        parse=_env_world_size,
        replay=False,
    )
    shard_index: int = opt(
        0,
        "This rank [default: $RANK or $SLURM_PROCID, else 0].",
        cli_default=None,
        parse=_env_rank,
        replay=False,
    )
    videos_per_shard: int = opt(
        200, "Videos per shard file (a crash loses at most one unfinished shard)."
    )
    frames: str = opt(  # "store": also keep the student's frames; "none": targets only
        "store",
        "store: also keep every cached frame at --store-size in the shards (H.264, ~1.8 KB "
        "per frame), so training reads clips by row and never needs the source videos; "
        "none: targets only (training then decodes the source videos).",
        choices=FRAME_MODES,
    )
    store_size: tuple[int, int] = opt(  # (width, height): train's --resize
        (171, 128),
        "Size of the stored frames: the student's frame size (train's --resize), stretched.",
        type=FRAME_SIZE,
    )
    # Crop positions per frame the teachers run on (None: the teacher's own recipe, one view
    # that matches no student crop), in the store_size frame with train's --crop, and mirrored.
    views: int | None = opt(
        DEFAULT_POSITIONS,
        "Crop positions of every frame the teachers run on, spanning the frame on each axis "
        "(each also mirrored unless --no-mirror-views): train draws its crop among them, so "
        "each target is the teacher on exactly what the student sees. N times the teacher time "
        "and target bytes. 'recipe': one view, the teacher's own centre crop (matches no "
        "student crop).",
        type=ViewsType(),
    )
    crop: int | None = opt(  # None: 7/8 of the store's shorter side (112 for 171x128)
        None,
        "Side of the student's square crop of the --store-size frame (train's --crop) "
        "[default: 7/8 of its shorter side, 112 for 171x128].",
    )
    mirror_views: bool = opt(
        True,
        "Also run the teachers on each view mirrored (train then flips; without, it does not).",
    )
    retry_failed: bool = opt(False, "Try again the videos an earlier run recorded as failed.")
    strict: bool = opt(
        False, "Exit with status 1 if any video failed (in this run or an earlier one)."
    )

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
        check_device(self.device)
        if self.compile not in COMPILE_MODES:
            raise ConfigError(f"--compile must be auto, on or off, got {self.compile!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
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


@dataclass(frozen=True)
class InspectConfig:
    """What ``distinit inspect SHARDS`` is asked; every field but ``shards`` is an option."""

    shards: str
    as_json: bool = opt(False, "Print one JSON object instead of text.", name="--json")
    video_id: str | None = opt(
        None,
        "A video id: its path relative to the directory given to extract --videos.",
        name="--video",
    )
    teacher: str | None = opt(None, "Teacher for --video [default: the first].")
    rows: str | None = opt(
        None,
        "With --video and --save: rows A, A+S, ... < B (S defaults to 1), as a strided clip "
        "reads them.",
        metavar="A:B[:S]",
    )
    save_dir: str | None = opt(
        None,
        "With --video --rows: write the frames stage two decodes as DIR/<row>.png (the "
        "store's size, uncropped).",
        name="--save",
        type=click.Path(file_okay=False),
    )
    frames_from: str = opt(
        "auto",
        "For --save: the frame store when present, or force the store / the source videos.",
        name="--from",
        choices=("auto", "store", "source"),
    )
    top: int = opt(5, "Classes shown for --video.")
    plot: str | None = opt(
        None,
        "With --video: write a PNG timeline of the teacher's top classes.",
        type=click.Path(dir_okay=False),
    )
    verify: int | None = opt(
        None,
        "Check every checksum and the store's GOP tables, then decode N distinct random rows "
        "(all rows if fewer) from the store, compare them with the source videos (PSNR) and "
        "re-run the teachers on them; exit 1 on damage or a mismatch. Source videos not found: "
        "those two are skipped (see --videos).",
        metavar="N",
    )
    consistency: int | None = opt(
        None,
        "Draw N training clips with the real loader and re-run the teachers from the source "
        "videos on exactly the crop each clip's student input covers; print how far the "
        "loader's targets are (KL, cosine). Exit 1 if shards with views miss the cache's noise "
        "floor.",
        metavar="N",
    )
    tolerance: float = opt(
        0.05, "Largest allowed KL (nats) between cached and recomputed predictions for --verify."
    )
    seed: int = opt(0, "Seed choosing the --verify frames.")
    videos_dir: str | None = opt(
        None,
        "Where the source videos are now, if they moved since extract [default: the "
        "directory extract read]. Used by --verify (store PSNR, teacher recompute) and by "
        "--save when the frames come from the source.",
        name="--videos",
        type=click.Path(file_okay=False),
    )

    def __post_init__(self) -> None:
        for flag, value in (("--verify", self.verify), ("--consistency", self.consistency)):
            if value is not None and value < 0:
                raise ConfigError(f"{flag} must be 0 or more, got {value}")
        if self.tolerance < 0:
            raise ConfigError(f"--tolerance must not be negative, got {self.tolerance}")
