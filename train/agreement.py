"""How often a student's top-1 class equals its teacher's, on clips of given videos.

The fidelity figure of distillation: measured on videos the student never trained on, it says
whether the student learned to see what the teacher sees rather than memorising clips. Clips are
``clips_per_video`` windows uniformly spaced over each video, centre-cropped, no flip; the
teacher's class of a clip is the argmax of its mean per-frame distribution (T = 1), the same
target the student was trained towards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distinit.pipeline.shards import ShardSet
from distinit.pipeline.video import FrameGeometry, decode_at_times
from distinit.train.clips import tempered, window_rows
from distinit.train.students import Student


@dataclass(frozen=True)
class Agreement:
    teacher: str
    clips: int
    top1_agreement: float  # fraction of clips where student top-1 == teacher top-1
    top5_hit: float  # fraction of clips where the teacher's top-1 is in the student's top 5


def clip_starts(row_count: int, span: int, clips: int) -> list[int]:
    """``clips`` window starts spread evenly over a video (all 0 when it is shorter)."""
    if row_count <= span:
        return [0] * clips
    return [int(s) for s in np.linspace(0, row_count - span, clips).round()]


@torch.no_grad()
def top1_agreement(
    student: Student,
    shards: ShardSet,
    videos_root: Path,
    *,
    clip_len: int,
    frame_stride: int = 1,
    resize: tuple[int, int] = (171, 128),
    crop: int = 112,
    clips_per_video: int = 4,
) -> list[Agreement]:
    """Per teacher head of ``student``: agreement over every ok video of ``shards``."""
    student.eval()
    geometry = FrameGeometry(*resize)
    span = (clip_len - 1) * frame_stride + 1
    heads = [t.name for t in shards.teachers if t.kind == "logits" and student.has_head(t.name)]
    hits = {h: 0 for h in heads}
    top5 = {h: 0 for h in heads}
    total = 0
    x0, y0 = (resize[0] - crop) // 2, (resize[1] - crop) // 2
    for record in shards.ok_videos():
        times = shards.times(record.id)
        for start in clip_starts(record.row_count, span, clips_per_video):
            rows = window_rows(record.row_count, clip_len, frame_stride, start)
            frames = decode_at_times(os.fspath(videos_root / record.id), geometry, times[rows])
            clip = np.ascontiguousarray(frames[:, y0 : y0 + crop, x0 : x0 + crop])
            outputs = student(student.normalize(torch.from_numpy(clip)[None]))  # (1, C) per head
            logits = shards.logits(record.id, rows)
            for h in heads:
                teacher_top1 = int(tempered(logits[h], 1.0).mean(axis=0).argmax())
                ranked = outputs[h][0].topk(5).indices.tolist()
                hits[h] += int(ranked[0] == teacher_top1)
                top5[h] += int(teacher_top1 in ranked)
            total += 1
    return [Agreement(h, total, hits[h] / max(total, 1), top5[h] / max(total, 1)) for h in heads]
