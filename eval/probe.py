"""Linear probe: frozen backbone, features computed once, a logistic-regression head.

Features of the K test-protocol clips (centre crop) of every video are computed once and cached
in ``OUT/features.pt`` keyed by the video's path, so the three splits of ``--split all`` (which
share their videos) and a re-run reuse them. The classifier is trained full-batch with Adam on the
standardised features of all K clips of every training video (the stated linear protocol: its
training clips are fixed rather than re-sampled, which is what makes the features reusable).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distinit.eval.datasets import ClipProtocol
from distinit.eval.predict import clip_outputs
from distinit.eval.splits import VideoItem
from distinit.pipeline.atomic import atomic_torch_save
from distinit.pipeline.errors import CheckpointError
from distinit.pipeline.weights import load_weights_only
from distinit.train.students import Student

log = logging.getLogger(__name__)

CACHE_NAME = "features.pt"


class FeatureCache:
    """``{video rel: (K, D) features}`` on disk, valid only for one init and one clip protocol.

    ``identity`` names the initial weights by content (a checkpoint's sha256), never by path:
    a checkpoint retrained in place must not reuse the old weights' features.
    """

    def __init__(self, out: Path, identity: dict[str, Any]) -> None:
        self.path = out / CACHE_NAME
        self.identity = repr(sorted((k, v) for k, v in identity.items() if k != "checkpoint"))
        self.features: dict[str, torch.Tensor] = {}
        if self.path.is_file():
            payload = load_weights_only(self.path, CheckpointError)
            if not isinstance(payload, dict) or not isinstance(payload.get("features"), dict):
                raise CheckpointError(f"{self.path}: not a distinit feature cache")
            if payload.get("identity") == self.identity:
                self.features = dict(payload["features"])
                log.info("feature cache %s: %d videos", self.path, len(self.features))
            else:
                log.warning("feature cache %s is for another init/protocol; rebuilt", self.path)

    def save(self) -> None:
        atomic_torch_save(self.path, {"identity": self.identity, "features": self.features})


def compute_features(
    student: Student,
    items: list[VideoItem],
    protocol: ClipProtocol,
    cache: FeatureCache,
    *,
    device: torch.device,
    videos_per_batch: int,
    workers: int,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """(V, K, D) features of ``items``, computing only those not cached yet."""
    todo = [item for item in items if item.rel not in cache.features]
    if todo:
        student.eval().to(device)

        def backbone(clips: torch.Tensor) -> torch.Tensor:
            return student.features(student.normalize(clips.to(device)))

        feats = clip_outputs(
            backbone,
            todo,
            protocol,
            videos_per_batch=videos_per_batch,
            workers=workers,
            progress=progress,
        )
        for item, f in zip(todo, feats, strict=True):
            cache.features[item.rel] = f.clone()
        cache.save()
    return torch.stack([cache.features[item.rel] for item in items])


def train_linear(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    seed: int,
) -> nn.Module:
    """Logistic regression on (N, D) features; returns a module mapping raw features to logits."""
    torch.manual_seed(seed)
    mean = features.mean(dim=0)
    std = features.std(dim=0).clamp_min(1e-6)  # dead (constant) features must not divide by 0
    x = (features - mean) / std
    head = nn.Linear(features.shape[1], num_classes)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    loss = torch.tensor(0.0)
    for _ in range(epochs):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(head(x), labels)
        loss.backward()
        opt.step()
    log.info("linear probe: final training loss %.4f after %d full-batch steps", loss, epochs)
    return nn.Sequential(_Standardise(mean, std), head)


class _Standardise(nn.Module):
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
