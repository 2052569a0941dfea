"""Run a network over the K test clips of every video: ``(V, K, X)`` outputs in video order."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader

from distinit.eval.datasets import ClipProtocol, EvalClips
from distinit.eval.splits import VideoItem
from distinit.train.clips import prepare_workers

log = logging.getLogger(__name__)


def clip_outputs(
    fn: Callable[[torch.Tensor], torch.Tensor],
    items: list[VideoItem],
    protocol: ClipProtocol,
    *,
    videos_per_batch: int,
    workers: int,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """``fn`` maps clips (B, T, H, W, C) — uint8 RGB or float flow, as ``protocol.modality``
    makes them — to (B, X); returns (V, K, X) float32 on the CPU."""
    prepare_workers(workers)  # before the workers fork: flow runs OpenCV in them
    loader = DataLoader(
        EvalClips(items, protocol),
        batch_size=videos_per_batch,
        shuffle=False,
        num_workers=workers,
    )
    out: list[torch.Tensor] = []
    done = 0
    with torch.no_grad():
        for clips, _, _ in loader:  # clips: (B, K, T, H, W, C)
            b, k = clips.shape[:2]
            y = fn(clips.flatten(0, 1))  # (B*K, X)
            out.append(y.float().cpu().view(b, k, -1))
            done += b
            if progress is not None:
                progress(done, len(items))
    return torch.cat(out)
