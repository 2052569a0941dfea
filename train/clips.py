"""Clips decoded from the extracted videos, each with the cached targets of exactly its frames.

Sampling rules (all pure functions of ``(seed, step, position)``, so a resumed run, a run with a
different worker count and a DDP run draw the same clips as one uninterrupted process; the
*position* is the clip's place in the global batch, rank ``r`` taking positions
``r*batch .. (r+1)*batch-1``):

* Videos: every epoch visits the videos in a seeded random order; step ``s`` of an epoch takes
  the next ``global_batch`` videos of that order, wrapping round at the end of the list so every
  batch is full. One epoch = ``ceil(videos / global_batch)`` steps.
* Window: ``clip_len`` shard rows ``start, start+stride, ...`` with a uniformly random start.
* Short videos (fewer rows than the window spans): the window starts at row 0 and *loops* the
  video, row ``(i * stride) mod rows`` for clip frame ``i`` — the clip replays the video rather
  than freezing on a padded frame. They are counted (:attr:`ClipDataset.short_videos`), never
  dropped.
* Frames: decoded by the timestamps stage one stored for those rows (the shared selection rule),
  stretched to ``resize``, then a random ``crop`` square and a coin-flip horizontal flip when
  augmenting, the centre square otherwise.
* Flow (``modality="flow"``, see :func:`clip_input`): computed by
  :func:`~distinit.train.flow.clip_to_flow` on the whole resized frames of the clip, *then*
  cropped and flipped like RGB, a flip also negating dx. Field t is the motion from clip frame t
  to t+1, so it spans ``frame_stride`` rows; at the seam of a looped short video it is the jump
  from the video's last sampled frame back to its first, as at a cut in real video.
* Target per teacher: the mean over the clip's frames of ``softmax(logits / T)`` (a looped frame
  counts once per appearance), or with ``target_frames="random"`` the tempered distribution of
  one uniformly drawn frame of the clip. An embedding target (key ``name:embedding``) is the mean
  of the frames' L2-normalised embeddings, normalised again (:func:`mean_embedding`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from distinit.pipeline.errors import ConfigError
from distinit.pipeline.shards import ShardSet, VideoRecord
from distinit.pipeline.video import FrameGeometry, decode_at_times
from distinit.train.flow import FLOW_CHANNELS, clip_to_flow, set_flow_threads

log = logging.getLogger(__name__)

# Separate streams of the seeded generator, so video order and per-clip draws never share bits.
_ORDER_STREAM = 1
_CLIP_STREAM = 2


@dataclass(frozen=True)
class ClipSpec:
    clip_len: int
    frame_stride: int
    resize: tuple[int, int]  # (width, height)
    crop: int
    temperature: float
    target_frames: str  # "mean" or "random"
    augment: bool = True
    modality: str = "rgb"  # "rgb" or "flow": what clip_input makes of the decoded frames


@dataclass(frozen=True)
class ClipPlan:
    """Everything random about one clip, decided before any decoding."""

    video: int  # index into the dataset's video list
    rows: tuple[int, ...]  # shard rows of the clip's frames, in clip order
    crop_x: int
    crop_y: int
    flip: bool
    target_frame: int  # clip frame whose target is used with target_frames="random"


def window_rows(row_count: int, clip_len: int, stride: int, start: int) -> np.ndarray:
    """Rows of a window; a video too short for the window loops (see the module docstring)."""
    if row_count < 1:
        raise ValueError("a video without frames has no window")
    rows = start + stride * np.arange(clip_len)
    return rows % row_count


def is_short(row_count: int, spec: ClipSpec) -> bool:
    return row_count < (spec.clip_len - 1) * spec.frame_stride + 1


def video_order(seed: int, epoch: int, num_videos: int) -> np.ndarray:
    return np.random.default_rng([seed, _ORDER_STREAM, epoch]).permutation(num_videos)


def plan_clip(
    row_counts: list[int], spec: ClipSpec, seed: int, step: int, position: int, global_batch: int
) -> ClipPlan:
    n = len(row_counts)
    per_epoch = math.ceil(n / global_batch)
    epoch, within = divmod(step, per_epoch)
    video = int(video_order(seed, epoch, n)[(within * global_batch + position) % n])
    rng = np.random.default_rng([seed, _CLIP_STREAM, step, position])
    rows_available = row_counts[video]
    span = (spec.clip_len - 1) * spec.frame_stride + 1
    start = int(rng.integers(0, rows_available - span + 1)) if rows_available >= span else 0
    width, height = spec.resize
    if spec.augment:
        crop_x = int(rng.integers(0, width - spec.crop + 1))
        crop_y = int(rng.integers(0, height - spec.crop + 1))
        flip = bool(rng.random() < 0.5)
    else:
        crop_x, crop_y, flip = (width - spec.crop) // 2, (height - spec.crop) // 2, False
    rows = window_rows(rows_available, spec.clip_len, spec.frame_stride, start)
    target_frame = int(rng.integers(0, spec.clip_len))
    return ClipPlan(video, tuple(int(r) for r in rows), crop_x, crop_y, flip, target_frame)


def input_channels(modality: str) -> int:
    """Channels of the student's input for ``modality`` (its first convolution's in_channels)."""
    if modality == "rgb":
        return 3
    if modality == "flow":
        return FLOW_CHANNELS
    raise ValueError(f"modality must be rgb or flow, got {modality!r}")


def clip_input(
    frames: np.ndarray, modality: str, crop_x: int, crop_y: int, crop: int, flip: bool
) -> np.ndarray:
    """What the student sees of a clip: the one path from decoded frames to a clip array.

    ``frames`` is ``(T, H, W, 3)`` uint8 at the resize resolution (the whole frame, uncropped).
    Returns the ``crop`` square at ``(crop_x, crop_y)``, mirrored left-right when ``flip``:

    * ``"rgb"``: ``(T, crop, crop, 3)`` uint8, as decoded (the student normalises it).
    * ``"flow"``: ``(T, crop, crop, 2)`` float32 (dx, dy) in [-1, 1], already the student's input.

    Flow is computed on the whole resized frames and cropped afterwards, not on the crop: a
    pixel's flow then does not depend on where the crop fell (the crop's edges keep the context
    DIS needs, so train's random crops and eval's centre crop see the same field there), at
    ~1.7x the DIS pixels of a 112 crop of 171x128 frames. A flip mirrors the field and negates
    dx, exactly what the flow of the mirrored frames is, without relying on DIS being mirror-
    symmetric (it is not, to the last bit).
    """
    if modality == "flow":
        x: np.ndarray = clip_to_flow(frames)  # (T, H, W, 2) float32
    elif modality == "rgb":
        x = frames  # (T, H, W, 3) uint8
    else:
        raise ValueError(f"modality must be rgb or flow, got {modality!r}")
    x = x[:, crop_y : crop_y + crop, crop_x : crop_x + crop]
    if flip:
        x = x[:, :, ::-1]
        if modality == "flow":
            x = x * np.array([-1.0, 1.0], dtype=np.float32)  # mirrored motion: dx -> -dx
    return np.ascontiguousarray(x)


def tempered(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Row-wise ``softmax(logits / T)`` in float64 for an exact mean, returned as float32."""
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def mean_embedding(embeddings: np.ndarray) -> np.ndarray:
    """A clip's embedding target: the mean of its frames' L2-normalised embeddings, normalised
    again (a direction, as the cosine loss compares)."""
    e = embeddings.astype(np.float64)
    e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    m = e.mean(axis=0)
    return (m / max(float(np.linalg.norm(m)), 1e-12)).astype(np.float32)


def resolve_videos_root(shards: ShardSet, override: str | None) -> Path:
    """The directory the shards' video ids are relative to; every ok video must be there."""
    root_text = override if override is not None else shards.provenance.get("videos_root")
    if not root_text:
        raise ConfigError(
            f"{shards.directory}: the shards do not record where their videos are; "
            "pass --videos DIR"
        )
    root = Path(root_text)
    if not root.is_dir():
        raise ConfigError(f"videos directory {root} does not exist (pass --videos DIR)")
    missing = [r.id for r in shards.ok_videos() if not (root / r.id).is_file()]
    if missing:
        raise ConfigError(
            f"{len(missing)} extracted videos are missing under {root} (e.g. {missing[0]!r}); "
            "pass --videos DIR if they moved"
        )
    return root


class ClipDataset(Dataset[dict[str, Any]]):
    """Item ``step * global_batch + position`` is the clip of :func:`plan_clip`, with targets."""

    def __init__(
        self,
        shards: ShardSet,
        videos_root: Path,
        spec: ClipSpec,
        *,
        seed: int,
        global_batch: int,
    ) -> None:
        self.shards = shards
        self.videos_root = videos_root
        self.spec = spec
        self.seed = seed
        self.global_batch = global_batch
        self.videos: list[VideoRecord] = shards.ok_videos()
        if not self.videos:
            raise ConfigError(f"{shards.directory}: the shards hold no successfully read video")
        self.row_counts = [r.row_count for r in self.videos]
        self.short_videos = sum(is_short(n, spec) for n in self.row_counts)
        self.geometry = FrameGeometry(*spec.resize)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.videos) / self.global_batch)

    def __len__(self) -> int:
        # Items are addressed by step; the sampler bounds them. This is one epoch's worth.
        return self.steps_per_epoch * self.global_batch

    def plan(self, index: int) -> ClipPlan:
        step, position = divmod(index, self.global_batch)
        return plan_clip(self.row_counts, self.spec, self.seed, step, position, self.global_batch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        plan = self.plan(index)
        record = self.videos[plan.video]
        rows = np.asarray(plan.rows)
        times = self.shards.times(record.id)[rows]
        frames = decode_at_times(os.fspath(self.videos_root / record.id), self.geometry, times)
        clip = clip_input(
            frames, self.spec.modality, plan.crop_x, plan.crop_y, self.spec.crop, plan.flip
        )
        logits = self.shards.logits(record.id, rows)
        targets: dict[str, torch.Tensor] = {}
        for name, x in logits.items():
            if self.spec.target_frames == "random":
                x = x[plan.target_frame : plan.target_frame + 1]
            targets[name] = torch.from_numpy(tempered(x, self.spec.temperature).mean(axis=0))
        for key, e in self.shards.embeddings(record.id, rows).items():
            if self.spec.target_frames == "random":
                e = e[plan.target_frame : plan.target_frame + 1]
            targets[key] = torch.from_numpy(mean_embedding(e))
        return {
            # (T, c, c, 3) uint8 for rgb, (T, c, c, 2) float32 in [-1, 1] for flow
            "clip": torch.from_numpy(clip),
            "targets": targets,  # target -> (C,) float32 summing to 1, or (D,) unit embedding
            "rows": torch.from_numpy(rows),  # (T,) for alignment checks
            "index": index,
        }


class StepSampler(Sampler[int]):
    """This rank's item indices for steps ``start_step .. total_steps-1``, in order."""

    def __init__(
        self, start_step: int, total_steps: int, batch_size: int, rank: int, world_size: int
    ) -> None:
        self.start_step, self.total_steps = start_step, total_steps
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size

    def __iter__(self) -> Iterator[int]:
        g = self.batch_size * self.world_size
        for step in range(self.start_step, self.total_steps):
            first = step * g + self.rank * self.batch_size
            yield from range(first, first + self.batch_size)

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step) * self.batch_size


def worker_init(_worker_id: int) -> None:
    # Decoding runs in ffmpeg; the worker itself only crops, averages and (for flow) runs DIS,
    # so one torch thread each keeps N workers from oversubscribing the cores the training step
    # needs. OpenCV's threads are set in the parent instead (see prepare_workers): calling
    # cv2.setNumThreads here, in a forked child, can hang forever.
    torch.set_num_threads(1)


def prepare_workers(workers: int) -> None:
    """Call in the parent before a DataLoader with ``workers`` processes starts them.

    Workers compute flow with OpenCV, which would start one thread per core in every worker.
    Its thread count cannot be lowered inside a forked worker: OpenCV's pthread pool does not
    survive fork, and ``cv2.setNumThreads`` in the child joins the parent's pool threads, which
    do not exist there (measured: the worker hangs for good once the parent has run any
    parallel OpenCV call). So the parent drops to one OpenCV thread, which forked workers
    inherit. The parent does no flow itself while workers load, so this costs it nothing.
    """
    if workers > 0:
        set_flow_threads(1)
