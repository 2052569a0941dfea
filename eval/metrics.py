"""Clip and video accuracy (top-1, top-5) and the confusion matrix, from test-clip logits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


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
    video_probs = clip_logits.float().softmax(dim=2).mean(dim=1)  # (V, C)
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
