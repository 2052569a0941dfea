"""What a shard directory was made with: its provenance, and the rule that the shards of one
directory agree (teachers, frame rate, frame store, views)."""

from __future__ import annotations

import os
from importlib.metadata import version
from typing import Any

from distinit.extract.config import ExtractConfig
from distinit.extract.inference import TeacherRunner
from distinit.extract.teachers import target_keys
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.ffmpeg_binary import ffmpeg_version
from distinit.pipeline.frame_geometry import FrameGeometry, format_size
from distinit.pipeline.framestore import StoreFormat
from distinit.pipeline.shards import ShardHeader, TeacherInfo
from distinit.pipeline.views import ViewSet


def check_same_recipe(cfg: ExtractConfig, shard: ShardHeader) -> None:
    """Shards of one directory must agree: refuse to add frames made another way."""
    before = shard.provenance.get("config", {})
    store = format_size(cfg.store_size) if cfg.frames == "store" else None
    views = cfg.view_set()
    asked = (target_keys(cfg.teacher_names), cfg.fps, store, _views_text(views))
    had_store = format_size((shard.store.width, shard.store.height)) if shard.store else None
    had_views = _views_text(shard.views) if shard.teachers else _views_text(None)
    if not cfg.teacher_names:  # a frames-only store has no views to agree on
        asked = (*asked[:3], had_views)
    had = ([t.key for t in shard.teachers], before.get("fps"), had_store, had_views)
    if asked != had:
        # Only what differs, as the user would set it: a whole recipe hides a changed --fps.
        pairs = zip(_recipe_parts(*had), _recipe_parts(*asked), strict=True)
        changes = [f"{name}: {old} -> {new}" for (name, old), (_, new) in pairs if old != new]
        raise ConfigError(
            f"{cfg.out} holds shards made another way ({'; '.join(changes)}). Use a new --out "
            "(the shards of one directory must agree)."
        )


def _recipe_parts(
    teachers: list[str], fps: float | None, store: str | None, views: str
) -> list[tuple[str, str]]:
    """A shard directory's recipe, part by part, as a mismatch names it."""
    return [
        ("--teacher", ", ".join(teachers) or "none"),
        ("--fps", "every frame" if fps is None else f"{fps:g}"),
        ("frame store", store or "none"),
        ("views", views),
    ]


def _views_text(views: ViewSet | None) -> str:
    return views.describe() if views is not None else "the teacher's own view"


def check_same_teachers(teachers: list[TeacherInfo], shard: ShardHeader) -> None:
    for new, old in zip(teachers, shard.teachers, strict=True):
        if new.to_json() != old.to_json():
            raise ConfigError(
                f"{shard.path.parent}: teacher {new.name} now has other weights or preprocessing "
                f"(sha256 {new.weights_sha256[:12]} vs {old.weights_sha256[:12]} in "
                f"{shard.path.name}); use a new --out"
            )


def shard_provenance(
    cfg: ExtractConfig, runner: TeacherRunner | None, batch_size: int, store: StoreFormat | None
) -> dict[str, Any]:
    return {
        "videos_root": os.path.abspath(cfg.videos),
        "decoder": "distinit.pipeline.video: ffmpeg rawvideo pipe, showinfo timestamps",
        "ffmpeg_version": ffmpeg_version(),
        "frame_geometry": runner.geometry.describe() if runner is not None else None,
        "teacher_inputs": (
            {i.key: i.preprocessing for i in runner.infos()} if runner is not None else {}
        ),
        "frame_store": (
            f"{store.describe()}; frames {FrameGeometry(*store.size).describe()} from the "
            "same decode as the teachers', then coded with PyAV's libx264"
            if store is not None
            else None
        ),
        "frame_selection": (
            "every native frame"
            if cfg.fps is None
            else f"first native frame at or after n/{cfg.fps}"
        ),
        "fps": cfg.fps,
        "views": (
            runner.views.describe()
            if runner is not None and runner.views is not None
            else "one view per frame: the teacher's own recipe (centre crop)"
            if runner is not None
            else None
        ),
        "precision": runner.precision if runner is not None else None,
        "compiled": runner.compiled if runner is not None else None,
        "batch_size": batch_size,
        "device": str(runner.device) if runner is not None else None,
        "code_version": version("distinit"),
        "config": cfg.to_json(),
    }
