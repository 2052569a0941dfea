"""The teachers of a run on their device, with the frames per batch and how that was chosen."""

from __future__ import annotations

import logging
import os

import numpy as np

from distinit.extract.config import COMPILE_AUTO_MIN_VIDEOS, ExtractConfig
from distinit.extract.inference import (
    CPU_CALL_FRAMES,
    Calibration,
    TeacherRunner,
    calibrate_batch_size,
    resolve_precision,
)
from distinit.extract.recipe import check_same_teachers
from distinit.extract.teachers import group_specs, load_teacher
from distinit.pipeline.device import resolve_device
from distinit.pipeline.errors import VideoDecodeError
from distinit.pipeline.frame_geometry import FrameGeometry
from distinit.pipeline.shards import ShardHeader
from distinit.pipeline.video import VideoReader

log = logging.getLogger(__name__)


def teacher_runner(
    cfg: ExtractConfig, todo: list[str], headers: list[ShardHeader]
) -> tuple[TeacherRunner | None, int, str | None]:
    """The teachers on their device, the frames per batch and how that was chosen (no runner
    for --teacher none)."""
    if not cfg.teacher_names:
        return None, 0, None
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    kinds = group_specs(cfg.teacher_names)
    teachers = [load_teacher(n, cfg.teacher_weights.get(n)) for n in kinds]
    compile_teachers = cfg.compile == "on" or (
        cfg.compile == "auto" and len(todo) >= COMPILE_AUTO_MIN_VIDEOS
    )
    runner = TeacherRunner(
        teachers,
        device,
        precision,
        eager_if_compile_fails=cfg.compile == "auto",
        kinds=kinds,
        views=cfg.view_set(),
    )
    if headers:
        check_same_teachers(runner.infos(), headers[0])
    batch_size, choice = _choose_batch_size(cfg, runner, todo)
    log.info("teacher batch size: %s", choice)
    runner.set_batch_size(batch_size)
    if compile_teachers:
        log.info("compiling the teachers (a one-off cost of tens of seconds)")
        runner.compile(batch_size)
    return runner, batch_size, choice


CALIBRATION_FRAMES = 16
CALIBRATION_VIDEOS = 5  # videos tried for frames to calibrate the teacher batch size on
UNMEASURED_CUDA_BATCH_SIZE = 256  # when none of the first videos decodes


def _choose_batch_size(
    cfg: ExtractConfig, runner: TeacherRunner, todo: list[str]
) -> tuple[int, str]:
    """``--batch-size`` if given; else on CPU the fixed teacher call, on CUDA the size
    :func:`calibrate_batch_size` measures on the first frames of the first videos. Returns the
    size and a line saying how it was chosen (and, on CPU, that the teacher runs in calls of
    :data:`CPU_CALL_FRAMES` frames whatever it is)."""
    cuda = runner.device.type == "cuda"
    calls = "" if cuda else f"; the teacher runs {CPU_CALL_FRAMES} frames a call on CPU"
    if cfg.batch_size is not None:
        return cfg.batch_size, f"{cfg.batch_size} (--batch-size){calls}"
    if not cuda:
        return CPU_CALL_FRAMES, f"{CPU_CALL_FRAMES} (fixed on CPU, so the targets are repeatable)"
    frames = _first_frames(cfg, runner.geometry, todo)
    if frames is None:
        # Rare (the first videos all broken), and said so in the log and the provenance.
        size = UNMEASURED_CUDA_BATCH_SIZE
        return size, f"{size} (not measured: none of the first {CALIBRATION_VIDEOS} videos decoded)"
    calibration: Calibration = calibrate_batch_size(runner, frames)
    return calibration.batch_size, calibration.describe()


def _first_frames(
    cfg: ExtractConfig, geometry: FrameGeometry, todo: list[str]
) -> np.ndarray | None:
    """The first frames of the first video that decodes, to calibrate on."""
    for video_id in todo[:CALIBRATION_VIDEOS]:
        try:
            with VideoReader(
                os.path.join(cfg.videos, video_id), geometry, fps=cfg.fps,
                chunk_size=CALIBRATION_FRAMES, threads=cfg.decoder_threads,
            ) as reader:  # fmt: skip
                for chunk in reader:
                    return chunk.frames
        except VideoDecodeError:
            continue
    return None
