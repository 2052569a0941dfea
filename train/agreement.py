"""How often a student's top-1 class equals its teacher's, on clips of given videos.

The fidelity figure of distillation: measured on videos the student never trained on, it says
whether the student learned to see what the teacher sees rather than memorising clips. Clips are
``clips_per_video`` windows uniformly spaced over each video (the clip rules of
``pipeline/clip_rules.py``). With shards of views, clip ``k`` of a video is cropped as view
``k mod K`` and compared with that view's targets, so student and teacher see the same pixels;
shards of the teacher's own centre view are centre-cropped, no flip. The teacher's class of a
clip is the argmax of its mean per-frame distribution (T = 1), the same target the student was
trained towards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from distinit.pipeline import clip_rules
from distinit.pipeline.frame_source import FrameSource
from distinit.pipeline.shards import ShardSet
from distinit.train.clips import tempered
from distinit.train.students import Student


@dataclass(frozen=True)
class Agreement:
    teacher: str
    clips: int
    top1_agreement: float  # fraction of clips where student top-1 == teacher top-1
    top5_hit: float  # fraction of clips where the teacher's top-1 is in the student's top 5


@torch.no_grad()
def top1_agreement(
    student: Student,
    shards: ShardSet,
    frames: FrameSource,
    *,
    clip_len: int,
    frame_stride: int = 1,
    crop: int = 112,
    clips_per_video: int = 4,
) -> list[Agreement]:
    """Per teacher head of ``student``: agreement over every ok video of ``shards``."""
    student.eval()
    heads = [t.name for t in shards.teachers if t.kind == "logits" and student.has_head(t.name)]
    hits = {h: 0 for h in heads}
    top5 = {h: 0 for h in heads}
    total = 0
    x0, y0, _ = clip_rules.centre_crop(frames.size, crop)
    views = shards.views
    if views is not None and (views.size, views.crop) != (frames.size, crop):
        views = None  # views of another geometry: centre crops, as for shards without views
    for record in shards.ok_videos():
        n = record.row_count
        starts = clip_rules.uniform_starts(n, clip_len, frame_stride, clips_per_video)
        for k, start in enumerate(starts):
            rows = clip_rules.window_rows(record.row_count, clip_len, frame_stride, int(start))
            view = k % len(views) if views is not None else 0
            x, y, flip = (
                (views.views[view].x, views.views[view].y, views.views[view].flip)
                if views is not None
                else (x0, y0, False)
            )
            clip = clip_rules.clip_input(frames(record.id, rows), "rgb", x, y, crop, flip)
            outputs = student(student.normalize(torch.from_numpy(clip)[None]))  # (1, C) per head
            logits = shards.logits(record.id, rows, view)
            for h in heads:
                teacher_top1 = int(tempered(logits[h], 1.0).mean(axis=0).argmax())
                ranked = outputs[h][0].topk(5).indices.tolist()
                hits[h] += int(ranked[0] == teacher_top1)
                top5[h] += int(teacher_top1 in ranked)
            total += 1
    return [Agreement(h, total, hits[h] / max(total, 1), top5[h] / max(total, 1)) for h in heads]
