"""Clip and video accuracy (top-1, top-5) and the confusion matrix, from test-clip logits;
the per-video probabilities saved for late fusion (``OUT/split<N>/video_probs.npz``)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distinit.pipeline.atomic import atomic_write
from distinit.pipeline.errors import DatasetError

VIDEO_PROBS_NAME = "video_probs.npz"


@dataclass(frozen=True)
class VideoProbs:
    """One split's test videos: ids (paths relative to the root), labels, (V, C) probabilities."""

    ids: list[str]
    labels: np.ndarray  # (V,) int64
    probs: np.ndarray  # (V, C) float32, rows sum to 1
    classes: list[str]


def video_probabilities(clip_logits: torch.Tensor) -> torch.Tensor:
    """``(V, K, C)`` clip logits -> ``(V, C)`` video scores: the softmax averaged over K clips."""
    return clip_logits.float().softmax(dim=2).mean(dim=1)


def save_video_probs(
    folder: Path, *, ids: list[str], labels: torch.Tensor, probs: torch.Tensor, classes: list[str]
) -> Path:
    """Write ``folder/video_probs.npz`` atomically (what ``--compare`` fuses); returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        ids=np.asarray(ids, dtype=np.str_),
        labels=labels.numpy().astype(np.int64),
        probs=probs.numpy().astype(np.float32),
        classes=np.asarray(classes, dtype=np.str_),
    )
    return atomic_write(folder / VIDEO_PROBS_NAME, buffer.getvalue())


def load_video_probs(path: Path) -> VideoProbs:
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    with np.load(path, allow_pickle=False) as z:  # plain arrays only: never unpickles
        return VideoProbs(
            ids=[str(i) for i in z["ids"]],
            labels=z["labels"].astype(np.int64),
            probs=z["probs"].astype(np.float32),
            classes=[str(c) for c in z["classes"]],
        )


@dataclass(frozen=True)
class Scores:
    clip_top1: float
    clip_top5: float
    video_top1: float
    video_top5: float
    num_test_videos: int
    num_test_clips: int
    confusion: np.ndarray  # (C, C) video-level counts, rows = true class, columns = predicted

    def summary(self) -> dict[str, float | int]:
        return {
            "clip_top1": self.clip_top1,
            "clip_top5": self.clip_top5,
            "video_top1": self.video_top1,
            "video_top5": self.video_top5,
            "num_test_videos": self.num_test_videos,
            "num_test_clips": self.num_test_clips,
        }


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of rows whose label is among the ``k`` highest scores (k capped at the classes)."""
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices  # (N, k)
    return float((top == labels[:, None]).any(dim=1).float().mean())


def score_clips(clip_logits: torch.Tensor, labels: torch.Tensor) -> Scores:
    """``clip_logits`` (V, K, C) for V videos of K clips; video score = mean softmax over K."""
    v, k, c = clip_logits.shape
    flat = clip_logits.reshape(v * k, c).float()
    clip_labels = labels.repeat_interleave(k)
    video_probs = video_probabilities(clip_logits)  # (V, C)
    confusion = np.zeros((c, c), dtype=np.int64)
    np.add.at(confusion, (labels.numpy(), video_probs.argmax(dim=1).numpy()), 1)
    return Scores(
        clip_top1=topk_accuracy(flat, clip_labels, 1),
        clip_top5=topk_accuracy(flat, clip_labels, 5),
        video_top1=topk_accuracy(video_probs, labels, 1),
        video_top5=topk_accuracy(video_probs, labels, 5),
        num_test_videos=v,
        num_test_clips=v * k,
        confusion=confusion,
    )
