"""Clips from labelled videos: the sampling protocol of training and testing.

Protocol (stated in every results.json through :meth:`ClipProtocol.describe`):

* Frames: every native frame, stretched to ``resize`` (video-ResNet convention 171x128), read
  from the source video by seeking to the clip's frames (``eval/sources.py``) — or, with
  ``store`` (``eval --store DIR``, made by ``distinit extract --teacher none``), read by row
  from that frame store, so no epoch touches the source videos. Clips are ``clip_len`` native
  frames ``frame_step`` apart (consecutive by default; a distilled checkpoint's own step, see
  ``eval/recipe.py``).
* Window, looping, crop, flip and modality: the clip rules of ``pipeline/clip_rules.py``, the ones
  training uses. Training: one clip per video per epoch at a random start, random crop, random
  horizontal flip. Testing: ``clips_per_video`` (K) uniformly spaced clips, centre crop, one crop
  per clip. Short videos (many HMDB51 clips are 10-20 frames) loop, so their K test clips are
  identical. Flow is computed on each clip's whole resized frames, then cropped (``clip_len >= 2``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from distinit.eval.sources import FramesOf, source_frames
from distinit.eval.splits import VideoItem
from distinit.pipeline import clip_rules
from distinit.pipeline.clip_rules import clip_input, input_channels
from distinit.pipeline.errors import DatasetError, ShardError
from distinit.pipeline.shards import ShardSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipProtocol:
    clip_len: int = 16
    clips_per_video: int = 10
    resize: tuple[int, int] = (171, 128)  # (width, height)
    crop: int = 112
    modality: str = "rgb"  # "rgb" or "flow": what clip_input makes of the decoded frames
    store: str | None = None  # a frame store directory (extract --teacher none) to read from
    frame_step: int = 1  # native frames between consecutive clip frames

    def __post_init__(self) -> None:
        if min(self.clip_len, self.clips_per_video, self.frame_step) < 1:
            raise ValueError("clip_len, clips_per_video and frame_step must be positive")
        if self.crop > min(self.resize):
            raise ValueError(f"crop {self.crop} does not fit in resize {self.resize}")
        input_channels(self.modality)  # raises on an unknown modality
        if self.modality == "flow" and self.clip_len < 2:
            raise ValueError("flow needs clip_len >= 2: one frame has no motion")

    def describe(self) -> dict[str, object]:
        return {
            **asdict(self),
            "train_sampling": "1 random clip per video per epoch, random crop, random h-flip",
            "test_sampling": "K uniformly spaced clips per video, centre crop, 1 crop per clip",
            "crops_per_clip": 1,
            "short_video_rule": "loop: clip frame i is frame (start + i * frame_step) mod N",
            "video_score": "softmax averaged over the K clips",
            "frames": (
                f"frame store {self.store} (H.264 of every native frame at the resize)"
                if self.store
                else "decoded from the source videos"
            ),
            "input": (
                "uint8 RGB crop"
                if self.modality == "rgb"
                else "DIS optical flow of consecutive frames of the whole resized clip, "
                "clipped to +-20 px/frame and scaled to [-1, 1], then cropped (flip negates dx)"
            ),
        }


_STORES: dict[tuple[str, int], ShardSet] = {}  # opened once per process (handles never fork)


def _store(directory: str) -> ShardSet:
    key = (directory, os.getpid())
    if key not in _STORES:
        _STORES[key] = ShardSet(directory)
    return _STORES[key]


def check_store(directory: Path, resize: tuple[int, int], items: list[VideoItem]) -> None:
    """Refuse a frame store that cannot serve the protocol: wrong size, a frame rate other than
    every native frame, or videos of the split missing from it."""
    try:
        shards = ShardSet(directory)
    except ShardError as exc:
        raise DatasetError(f"--store: {exc}") from exc
    if shards.store is None:
        raise DatasetError(f"--store {directory}: the shards hold no frame store")
    if shards.store.size != resize:
        w, h = shards.store.size
        raise DatasetError(
            f"--store {directory}: frames are {w}x{h}, the protocol resizes to "
            f"{resize[0]}x{resize[1]} (extract --store-size)"
        )
    if shards.provenance.get("fps") is not None:
        raise DatasetError(
            f"--store {directory}: made with --fps {shards.provenance['fps']}; evaluation clips "
            "are consecutive native frames, so the store must hold every frame"
        )
    stored = {r.id for r in shards.ok_videos()}  # once: a set per item made this quadratic
    missing = [item.rel for item in items if item.rel not in stored]
    if missing:
        raise DatasetError(
            f"--store {directory}: {len(missing)} videos of the split are not in it "
            f"(e.g. {missing[0]!r}); extract them with --videos ROOT --teacher none"
        )


def video_frames(item: VideoItem, protocol: ClipProtocol) -> tuple[int, FramesOf]:
    """A video's frame count and a function from rows to ``(k, H, W, 3)`` frames at the resize:
    by row from the frame store when the protocol has one, else by seeking in the source video
    to those rows (``eval/sources.py``: only the frames asked for are decoded)."""
    if protocol.store is not None:
        shards = _store(protocol.store)
        record = shards.records.get(item.rel)
        if record is None or record.status != "ok":
            raise DatasetError(f"{item.rel}: not in the frame store {protocol.store}")
        return record.row_count, lambda rows: shards.frames(item.rel, rows)
    return source_frames(item, protocol.resize)


class TrainClips(Dataset[tuple[torch.Tensor, int]]):
    """One random clip per video; randomness keyed by (seed, epoch, index) so resume is exact."""

    def __init__(self, items: list[VideoItem], protocol: ClipProtocol, seed: int = 0) -> None:
        self.items, self.protocol, self.seed = items, protocol, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        item, p = self.items[index], self.protocol
        rng = np.random.default_rng((self.seed, self.epoch, index))
        count, take = video_frames(item, p)
        start = clip_rules.random_start(rng, count, p.clip_len, p.frame_step)
        x, y, flip = clip_rules.draw_crop(rng, p.resize, p.crop)
        frames = take(clip_rules.window_rows(count, p.clip_len, p.frame_step, start))  # (T,H,W,3)
        # (T, c, c, 3) uint8 for rgb, (T, c, c, 2) float32 in [-1, 1] for flow
        return torch.from_numpy(clip_input(frames, p.modality, x, y, p.crop, flip)), item.label


class EvalClips(Dataset[tuple[torch.Tensor, int, int]]):
    """The K centre-cropped test clips of each video: ``(K, T, crop, crop, 3)`` uint8 for RGB,
    ``(K, T, crop, crop, 2)`` float32 for flow (each clip's flow computed on its own)."""

    def __init__(self, items: list[VideoItem], protocol: ClipProtocol) -> None:
        self.items, self.protocol = items, protocol

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        item, p = self.items[index], self.protocol
        count, take = video_frames(item, p)
        step = p.frame_step
        if clip_rules.is_short(count, p.clip_len, step):
            log.debug("%s: %d frames < one clip's span, looped", item.rel, count)
        x, y, flip = clip_rules.centre_crop(p.resize, p.crop)
        clips = [
            clip_input(
                take(clip_rules.window_rows(count, p.clip_len, step, int(s))), p.modality, x, y,
                p.crop, flip,
            )
            for s in clip_rules.uniform_starts(count, p.clip_len, step, p.clips_per_video)
        ]  # fmt: skip
        return torch.from_numpy(np.stack(clips)), item.label, index
