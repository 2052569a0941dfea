"""``inspect --consistency``: is each training clip's target the teacher's output on what the
student sees?

It draws training clips with the real loader (train's :class:`~distinit.train.clips.ClipDataset`
over the shards, with its clip rules and the shards' views) and recomputes every teacher from
the source video on exactly the region the clip's student input covers: the loader's crop box
of the student's frame (whatever view it came from), cut from a canvas decoded from the source
(the whole frame stretched, as the student's frame is), mirrored when the clip is. The fresh
clip target (the mean over the clip's frames of ``softmax(logits)``, at T = 1, or the normalised
mean embedding) is compared with the loader's: KL(fresh || loaded) for logits, cosine for
embeddings. With views this is the noise floor of the int8 cache; with the teacher's own centre
view (older shards, ``--views recipe``) it measures how far the targets are from the crops.

Like the demo, this is an application over both stages: it needs train's loader and extract's
teachers, which never import each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distinit.pipeline.errors import ConfigError
from distinit.pipeline.shards import ShardSet
from distinit.pipeline.views import DEFAULT_CROP, View, ViewSet

CONSISTENCY_CLIP_LEN = 16  # train's --clip-len default
CONSISTENCY_BATCH = 8  # train's --batch-size default: clips are drawn as a run's first steps
DEFAULT_RESIZE = (171, 128)  # train's --resize default, for shards without a store or views
# Shards with views must be at the noise floor of the int8 cache and the decoder.
MAX_KL_MEAN = 1e-3
MIN_COSINE = 0.999


@dataclass
class ConsistencyReport:
    clips: int = 0
    kl: list[float] = field(default_factory=list)  # per clip and logits target
    same_top1: list[bool] = field(default_factory=list)
    cosine: list[float] = field(default_factory=list)  # per clip and embedding target
    per_video: dict[str, list[float]] = field(default_factory=dict)  # id -> KL per clip
    views: str = ""

    def line(self) -> str:
        parts = []
        if self.kl:
            parts.append(f"KL mean {np.mean(self.kl):.2e} max {np.max(self.kl):.2e}")
        if self.cosine:
            parts.append(f"cosine mean {np.mean(self.cosine):.4f}")
        return f"consistency: {', '.join(parts) or 'no targets'} over {self.clips} clips"

    def consistent(self) -> bool:
        """Whether the loader's targets are the teacher's output on the loader's crops."""
        kl_ok = not self.kl or float(np.mean(self.kl)) <= MAX_KL_MEAN
        return kl_ok and (not self.cosine or float(np.mean(self.cosine)) >= MIN_COSINE)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"clips": self.clips, "views": self.views, "line": self.line()}
        if self.kl:
            d.update(
                kl_mean=float(np.mean(self.kl)),
                kl_max=float(np.max(self.kl)),
                kl_p90=float(np.percentile(self.kl, 90)),
                same_top1=float(np.mean(self.same_top1)),
            )
        if self.cosine:
            d.update(cosine_mean=float(np.mean(self.cosine)), cosine_min=float(np.min(self.cosine)))
        d["per_video"] = {
            vid: {
                "clips": len(k),
                "kl_mean": float(np.mean(k)),
                "kl_p90": float(np.percentile(k, 90)),
            }
            for vid, k in sorted(self.per_video.items())
        }
        return d


def check_consistency(
    shards: ShardSet,
    clips: int,
    *,
    videos: str | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> ConsistencyReport:
    """Recompute the teachers on the student inputs of ``clips`` training clips (see the module
    docstring). Needs the source videos (``videos`` if they moved)."""
    from distinit.extract.verification import recorded_teachers
    from distinit.pipeline.frame_source import open_frame_source, resolve_videos_root
    from distinit.pipeline.timestamp_match import decode_at_times
    from distinit.train.clips import ClipDataset, ClipSpec

    if not shards.teachers:
        raise ConfigError(f"{shards.directory}: a frames-only store has no targets to check")
    if clips < 1:
        raise ConfigError(f"--consistency {clips}: give at least 1 clip")
    root = resolve_videos_root(shards, videos)
    views = shards.views
    if views is not None:
        size, crop = views.size, views.crop
    else:
        size = shards.store.size if shards.store is not None else DEFAULT_RESIZE
        crop = DEFAULT_CROP
    spec = ClipSpec(
        clip_len=CONSISTENCY_CLIP_LEN, frame_stride=1, resize=size, crop=crop,
        temperature=1.0, target_frames="mean", views=views,
    )  # fmt: skip
    frames = open_frame_source(shards, size, videos=videos)
    dataset = ClipDataset(shards, frames, spec, seed=seed, global_batch=CONSISTENCY_BATCH)
    # The canvas of a one-box view set: any crop box of the student's frame can be cut from it.
    canvas = ViewSet(size, crop, (View(0, 0, False),))
    problems: list[str] = []
    runner = recorded_teachers(shards, problems, canvas)
    if runner is None:
        raise ConfigError("; ".join(problems))
    report = ConsistencyReport(
        views=views.describe() if views is not None else "the teacher's own centre view"
    )
    for index in range(clips):
        plan = dataset.plan(index)
        item = dataset[index]  # the loader's clip and targets
        record = dataset.videos[plan.video]
        times = shards.times(record.id)[np.asarray(plan.rows)]
        source = decode_at_times(root / record.id, runner.geometry, times)  # (T, H*, W*, 3)
        box = View(plan.crop_x, plan.crop_y, plan.flip)
        fresh = runner.run_views(source, (box,))
        _compare(report, record.id, {k: v[0] for k, v in fresh.items()}, item["targets"], shards)
        report.clips += 1
        if progress is not None:
            progress(f"clips recomputed {report.clips}/{clips}")
    return report


def _compare(
    report: ConsistencyReport,
    video_id: str,
    fresh: dict[str, np.ndarray],
    loaded: dict[str, Any],
    shards: ShardSet,
) -> None:
    """Add one clip's comparison to ``report``: per target, the teacher's fresh ``(T, C)`` values
    on the clip's own crop against the loader's clip target."""
    from distinit.extract.divergence import kl_of_distributions
    from distinit.train.clips import mean_embedding, tempered

    logits_keys = set(shards.logits_keys())
    for key, target in loaded.items():
        values = fresh[key]
        if key in logits_keys:
            p = tempered(values, 1.0).mean(axis=0)
            q = target.numpy()
            kl = float(kl_of_distributions(p[None], q[None])[0])
            report.kl.append(kl)
            report.same_top1.append(int(p.argmax()) == int(q.argmax()))
            report.per_video.setdefault(video_id, []).append(kl)
        else:
            e = mean_embedding(values).astype(np.float64)
            report.cosine.append(float(e @ target.numpy().astype(np.float64)))


def format_consistency(report: ConsistencyReport) -> str:
    lines = [report.line(), f"views: {report.views}"]
    d = report.to_json()
    if "same_top1" in d:
        lines.append(
            f"KL p90 {d['kl_p90']:.2e}; same top-1 class in {100 * d['same_top1']:.0f}% of clips"
        )
    for vid, v in d["per_video"].items():
        lines.append(
            f"  {vid}: KL mean {v['kl_mean']:.2e}, p90 {v['kl_p90']:.2e} ({v['clips']} clips)"
        )
    return "\n".join(lines)
