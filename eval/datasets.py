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
* What the student sees of a clip comes from :func:`distinit.train.clips.clip_input`, the one
  path training uses too: RGB is cropped (and flipped) as decoded; flow (``modality="flow"``) is
  computed on the clip's whole resized frames, one clip at a time (field t is frame t -> t+1, the
  last field repeats the one before, a looped clip's seam is a jump), then cropped and flipped
  with dx negated. Flow therefore needs ``clip_len >= 2``.
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
from distinit.train.clips import clip_input, input_channels

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipProtocol:
    clip_len: int = 16
    clips_per_video: int = 10
    resize: tuple[int, int] = (171, 128)  # (width, height)
    crop: int = 112
    modality: str = "rgb"  # "rgb" or "flow": what clip_input makes of the decoded frames

    def __post_init__(self) -> None:
        if self.clip_len < 1 or self.clips_per_video < 1:
            raise ValueError("clip_len and clips_per_video must be positive")
        if self.crop > min(self.resize):
            raise ValueError(f"crop {self.crop} does not fit in resize {self.resize}")
        input_channels(self.modality)  # raises on an unknown modality
        if self.modality == "flow" and self.clip_len < 2:
            raise ValueError("flow needs clip_len >= 2: one frame has no motion")

    def describe(self) -> dict[str, object]:
        return {
            **asdict(self),
            "frame_step": 1,
            "train_sampling": "1 random clip per video per epoch, random crop, random h-flip",
            "test_sampling": "K uniformly spaced clips per video, centre crop, 1 crop per clip",
            "crops_per_clip": 1,
            "short_video_rule": "loop: clip frame i is frame (start + i) mod N",
            "video_score": "softmax averaged over the K clips",
            "input": (
                "uint8 RGB crop"
                if self.modality == "rgb"
                else "DIS optical flow of consecutive frames of the whole resized clip, "
                "clipped to +-20 px/frame and scaled to [-1, 1], then cropped (flip negates dx)"
            ),
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


def centre_input(clip: np.ndarray, modality: str, crop: int) -> np.ndarray:
    """The test-time student input of one clip of whole resized frames: the centre square."""
    h, w = clip.shape[1:3]
    return clip_input(clip, modality, (w - crop) // 2, (h - crop) // 2, crop, False)


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
        clip = clip_frames(frames, start, p.clip_len)  # (T, H, W, 3) uint8, whole frames
        h, w = clip.shape[1:3]
        # Same draw order as before flow existed (y, x, flip), so RGB runs sample the same clips.
        y, x = int(rng.integers(0, h - p.crop + 1)), int(rng.integers(0, w - p.crop + 1))
        flip = bool(rng.random() < 0.5)
        # (T, c, c, 3) uint8 for rgb, (T, c, c, 2) float32 in [-1, 1] for flow
        x_clip = clip_input(clip, p.modality, x, y, p.crop, flip)
        return torch.from_numpy(x_clip), item.label


class EvalClips(Dataset[tuple[torch.Tensor, int, int]]):
    """The K centre-cropped test clips of each video: ``(K, T, crop, crop, 3)`` uint8 for RGB,
    ``(K, T, crop, crop, 2)`` float32 for flow (each clip's flow computed on its own)."""

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
            centre_input(clip_frames(frames, int(s), p.clip_len), p.modality, p.crop)
            for s in uniform_starts(len(frames), p.clip_len, p.clips_per_video)
        ]
        return torch.from_numpy(np.stack(clips)), item.label, index
