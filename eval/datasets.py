"""Clips from labelled videos: the sampling protocol of training and testing.

Protocol (stated in every results.json through :meth:`ClipProtocol.describe`):

* Frames are decoded by the shared decoder, every native frame, stretched to ``resize``
  (video-ResNet convention 171x128), and clips are ``clip_len`` consecutive native frames.
* Training: one clip per video per epoch at a random start, random ``crop`` x ``crop`` crop,
  random horizontal flip.
* Testing: ``clips_per_video`` (K) clips with uniformly spaced starts from the first to the last
  possible one, centre crop, one crop per clip.
* Short videos (fewer frames than ``clip_len``; many HMDB51 clips are 10-20 frames) are looped:
  frame ``i`` of a clip is frame ``(start + i) mod N``. Their K test clips are then identical.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from distinit.eval.splits import VideoItem
from distinit.pipeline.errors import DatasetError, VideoDecodeError
from distinit.pipeline.video import FrameGeometry, iter_video

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipProtocol:
    clip_len: int = 16
    clips_per_video: int = 10
    resize: tuple[int, int] = (171, 128)  # (width, height)
    crop: int = 112

    def __post_init__(self) -> None:
        if self.clip_len < 1 or self.clips_per_video < 1:
            raise ValueError("clip_len and clips_per_video must be positive")
        if self.crop > min(self.resize):
            raise ValueError(f"crop {self.crop} does not fit in resize {self.resize}")

    def describe(self) -> dict[str, object]:
        return {
            **asdict(self),
            "frame_step": 1,
            "train_sampling": "1 random clip per video per epoch, random crop, random h-flip",
            "test_sampling": "K uniformly spaced clips per video, centre crop, 1 crop per clip",
            "crops_per_clip": 1,
            "short_video_rule": "loop: clip frame i is frame (start + i) mod N",
            "video_score": "softmax averaged over the K clips",
        }


def decode_frames(path: Path, resize: tuple[int, int]) -> np.ndarray:
    """All frames of a video, ``(N, H, W, 3)`` uint8; a failure names the video."""
    geometry = FrameGeometry(resize[0], resize[1])
    try:
        chunks = [chunk.frames for chunk in iter_video(path, geometry, chunk_size=64)]
    except VideoDecodeError as exc:
        raise DatasetError(f"cannot decode {exc}") from exc
    return np.concatenate(chunks)


def clip_frames(frames: np.ndarray, start: int, clip_len: int) -> np.ndarray:
    """``clip_len`` frames from ``start``, looping short videos (the stated rule)."""
    idx = (start + np.arange(clip_len)) % len(frames)
    return frames[idx]


def uniform_starts(n_frames: int, clip_len: int, k: int) -> np.ndarray:
    """K uniformly spaced clip starts over the video; all 0 when it is not longer than a clip."""
    last = max(n_frames - clip_len, 0)
    return np.round(np.linspace(0, last, k)).astype(np.int64)


def centre_crop(clip: np.ndarray, crop: int) -> np.ndarray:
    h, w = clip.shape[1:3]
    y, x = (h - crop) // 2, (w - crop) // 2
    return clip[:, y : y + crop, x : x + crop]


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
        frames = decode_frames(item.path, p.resize)
        start = int(rng.integers(0, max(len(frames) - p.clip_len, 0) + 1))
        clip = clip_frames(frames, start, p.clip_len)  # (T, H, W, 3)
        h, w = clip.shape[1:3]
        y, x = int(rng.integers(0, h - p.crop + 1)), int(rng.integers(0, w - p.crop + 1))
        clip = clip[:, y : y + p.crop, x : x + p.crop]
        if rng.random() < 0.5:
            clip = clip[:, :, ::-1]
        return torch.from_numpy(np.ascontiguousarray(clip)), item.label


class EvalClips(Dataset[tuple[torch.Tensor, int, int]]):
    """The K centre-cropped test clips of each video: ``(K, T, crop, crop, 3)`` uint8."""

    def __init__(self, items: list[VideoItem], protocol: ClipProtocol) -> None:
        self.items, self.protocol = items, protocol

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        item, p = self.items[index], self.protocol
        frames = decode_frames(item.path, p.resize)
        if len(frames) < p.clip_len:
            log.debug("%s: %d frames < clip_len %d, looped", item.rel, len(frames), p.clip_len)
        clips = [
            centre_crop(clip_frames(frames, int(s), p.clip_len), p.crop)
            for s in uniform_starts(len(frames), p.clip_len, p.clips_per_video)
        ]
        return torch.from_numpy(np.stack(clips)), item.label, index
