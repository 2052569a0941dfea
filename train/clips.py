"""Training clips over shards, each with the cached targets of exactly its frames.

Sampling rules (all pure functions of ``(seed, step, position)``, so a resumed run, a run with a
different worker count and a DDP run draw the same clips as one uninterrupted process; the
*position* is the clip's place in the global batch, rank ``r`` taking positions
``r*batch .. (r+1)*batch-1``):

* Videos: every epoch visits the videos in a seeded random order; step ``s`` of an epoch takes
  the next ``global_batch`` videos of that order, wrapping round at the end of the list so every
  batch is full. One epoch = ``ceil(videos / global_batch)`` steps.
* Window, looping of short videos, crop, flip and modality: the clip rules of
  ``pipeline/clip_rules.py`` (shared with evaluation). Short videos are counted
  (:attr:`ClipDataset.short_videos`), never dropped.
* View: with shards that cache their teachers' targets per view (``pipeline/views.py``), the
  clip's crop and flip are those of one uniformly drawn view, the same for all its frames, and
  its targets are that view's: the teacher's output on exactly the pixels the student sees.
  Shards of the teacher's own centre view only (older, or ``--views recipe``) get a random crop
  and flip as before, against targets of another view (a notice says so once).
* Frames: the rows' frames from a :class:`~distinit.pipeline.frame_source.FrameSource` (the
  shards' frame store, or the source videos by stored timestamps), at ``resize``.
* Target per teacher: the mean over the clip's frames of ``softmax(logits / T)`` (a looped frame
  counts once per appearance), or with ``target_frames="random"`` the tempered distribution of
  one uniformly drawn frame of the clip (both of the clip's view). An embedding target (key
  ``name:embedding``) is the mean of the frames' L2-normalised embeddings, normalised again
  (:func:`mean_embedding`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from distinit.pipeline import clip_rules
from distinit.pipeline.clip_rules import clip_input
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.flow import set_flow_threads
from distinit.pipeline.frame_geometry import format_size
from distinit.pipeline.frame_source import FrameSource
from distinit.pipeline.shards import ShardSet, VideoRecord
from distinit.pipeline.views import DEFAULT_POSITIONS, ViewSet

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
    views: ViewSet | None = None  # the shards' views: crops are drawn among them


@dataclass(frozen=True)
class ClipPlan:
    """Everything random about one clip, decided before any decoding."""

    video: int  # index into the dataset's video list
    rows: tuple[int, ...]  # shard rows of the clip's frames, in clip order
    crop_x: int
    crop_y: int
    flip: bool
    target_frame: int  # clip frame whose target is used with target_frames="random"
    view: int = 0  # the shards' view whose crop and targets the clip has (0 without views)


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
    start = clip_rules.random_start(rng, rows_available, spec.clip_len, spec.frame_stride)
    view = 0
    if spec.views is not None:
        view = clip_rules.draw_view(rng, spec.views) if spec.augment else centre_view(spec.views)
        chosen = spec.views.views[view]
        crop_x, crop_y, flip = chosen.x, chosen.y, chosen.flip
    elif spec.augment:
        crop_x, crop_y, flip = clip_rules.draw_crop(rng, spec.resize, spec.crop)
    else:
        crop_x, crop_y, flip = clip_rules.centre_crop(spec.resize, spec.crop)
    rows = clip_rules.window_rows(rows_available, spec.clip_len, spec.frame_stride, start)
    target_frame = int(rng.integers(0, spec.clip_len))
    return ClipPlan(video, tuple(int(r) for r in rows), crop_x, crop_y, flip, target_frame, view)


def centre_view(views: ViewSet) -> int:
    """The unflipped view nearest the centre crop (the view of an unaugmented clip)."""
    cx, cy = ((s - views.crop) / 2 for s in views.size)
    candidates = [i for i, v in enumerate(views.views) if not v.flip]
    return min(
        candidates, key=lambda i: (views.views[i].x - cx) ** 2 + (views.views[i].y - cy) ** 2
    )


def check_views(shards: ShardSet, resize: tuple[int, int], crop: int) -> bool:
    """Whether clips of ``resize`` and ``crop`` can be cut as the shards' views are. When not
    (shards without views, or views cut for another geometry), say once per directory that the
    targets will not be of the student's crops."""
    views = shards.views
    if views is None:
        if shards.teachers and shards.directory not in _NOTICED:
            _NOTICED.add(shards.directory)
            log.warning(
                "%s: the targets are the teacher's own centre view, not the student's crops "
                "(shards made before views, or with --views recipe): on the sample clips that "
                "is a mean KL of %.2f nats between the teacher on the crop and the target; "
                "distinit inspect --consistency measures it, distinit extract --views %d fixes it",
                shards.directory,
                NO_VIEW_KL,
                DEFAULT_POSITIONS,
            )
        return False
    if (views.size, views.crop) != (tuple(resize), crop):
        if (shards.directory, "geometry") not in _NOTICED:
            _NOTICED.add((shards.directory, "geometry"))
            log.warning(
                "%s: the targets are of %dx%d crops of %s frames, the clips are %dx%d crops of "
                "%s: random crops against the most central view's targets, which do not match "
                "them; train with --resize %s --crop %d (or extract again with --store-size %s "
                "--crop %d)",
                shards.directory, views.crop, views.crop, format_size(views.size), crop, crop,
                format_size(resize), format_size(views.size), views.crop, format_size(resize),
                crop,
            )  # fmt: skip
        return False
    return True


# The consistency figure of centre-view targets (inspect --consistency 64 over the four sample
# clips at every frame: KL mean 0.45, p90 0.93), quoted by the notice; see the README's views table.
NO_VIEW_KL = 0.45
_NOTICED: set[object] = set()


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


class ClipDataset(Dataset[dict[str, Any]]):
    """Item ``step * global_batch + position`` is the clip of :func:`plan_clip`, with targets."""

    def __init__(
        self,
        shards: ShardSet,
        frames: FrameSource,
        spec: ClipSpec,
        *,
        seed: int,
        global_batch: int,
    ) -> None:
        if frames.size != spec.resize:
            raise ConfigError(f"frames of {frames.size} given for clips of {spec.resize}")
        if spec.views != shards.views:
            raise ValueError("the clip spec's views are not the shards' (pass shards.views)")
        # Without usable views: random crops, against the targets of the most central view.
        self.target_view = 0
        if not check_views(shards, spec.resize, spec.crop):
            if spec.views is not None:
                self.target_view = centre_view(spec.views)
            spec = dataclasses.replace(spec, views=None)
        self.shards = shards
        self.frames = frames
        self.spec = spec
        self.seed = seed
        self.global_batch = global_batch
        self.videos: list[VideoRecord] = shards.ok_videos()
        if not self.videos:
            raise ConfigError(f"{shards.directory}: the shards hold no successfully read video")
        self.row_counts = [r.row_count for r in self.videos]
        self.short_videos = sum(
            clip_rules.is_short(n, spec.clip_len, spec.frame_stride) for n in self.row_counts
        )

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
        frames = self.frames(record.id, rows)  # (T, H, W, 3) uint8 at spec.resize
        clip = clip_input(
            frames, self.spec.modality, plan.crop_x, plan.crop_y, self.spec.crop, plan.flip
        )
        view = plan.view if self.spec.views is not None else self.target_view
        logits = self.shards.logits(record.id, rows, view)
        targets: dict[str, torch.Tensor] = {}
        for name, x in logits.items():
            if self.spec.target_frames == "random":
                x = x[plan.target_frame : plan.target_frame + 1]
            targets[name] = torch.from_numpy(tempered(x, self.spec.temperature).mean(axis=0))
        for key, e in self.shards.embeddings(record.id, rows, view).items():
            if self.spec.target_frames == "random":
                e = e[plan.target_frame : plan.target_frame + 1]
            targets[key] = torch.from_numpy(mean_embedding(e))
        return {
            # (T, c, c, 3) uint8 for rgb, (T, c, c, 2) float32 in [-1, 1] for flow
            "clip": torch.from_numpy(clip),
            "targets": targets,  # target -> (C,) float32 summing to 1, or (D,) unit embedding
            "rows": torch.from_numpy(rows),  # (T,) for alignment checks
            "view": view,
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
