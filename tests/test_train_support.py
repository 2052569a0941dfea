"""Shards for training tests, written with ShardWriter from stage one's decode of index videos.

No teacher runs: teacher ``objects`` puts its logit peak on class ``index % C`` of native frame
``index``, teacher ``scenes`` on ``(3 * index) % C2``, so a target says which frames it came
from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distinit.pipeline.frame_geometry import FrameGeometry
from distinit.pipeline.framestore import StoreFormat, encode_gop
from distinit.pipeline.shards import ShardSet, ShardWriter, TeacherInfo, VideoRecord, quantize
from distinit.pipeline.video import iter_video
from tests.videogen import make_index_video

OBJECTS_CLASSES = 10
SCENES_CLASSES = 7
PEAK = 12.0


def teacher(name: str, classes: int) -> TeacherInfo:
    return TeacherInfo(
        name=name,
        num_classes=classes,
        class_names=tuple(f"{name}{i}" for i in range(classes)),
        weights_sha256="0" * 64,
        weights_source="synthetic",
        preprocessing="none",
    )


TEACHERS = [teacher("objects", OBJECTS_CLASSES), teacher("scenes", SCENES_CLASSES)]


def peaked_logits(indices: np.ndarray, classes: int, multiplier: int) -> np.ndarray:
    logits = np.zeros((len(indices), classes), dtype=np.float32)
    logits[np.arange(len(indices)), (multiplier * indices) % classes] = PEAK
    return logits


def write_shards(
    shard_dir: Path,
    videos_root: Path,
    ids: list[str],
    teachers: list[TeacherInfo] = TEACHERS,
    *,
    record_root: bool = True,
    name: str = "shard-0000.h5",
    store: tuple[int, int] | None = (64, 64),
) -> Path:
    """One shard holding every video of ``ids`` (paths relative to ``videos_root``), with a frame
    store of that size coded from the same decode (stage one's way) unless ``store`` is None."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    provenance = {"videos_root": str(videos_root)} if record_root else {}
    fmt = StoreFormat(*store) if store is not None else None
    writer = ShardWriter(shard_dir / name, teachers, provenance, fmt)
    views = [FrameGeometry(32, 32)] + ([FrameGeometry(*store)] if store is not None else [])
    for vid in ids:
        chunks = list(iter_video(videos_root / vid, views))
        gops = [(len(c), encode_gop(c.views[-1], fmt)) for c in chunks] if fmt else None
        times = np.concatenate([c.times for c in chunks])
        indices = np.concatenate([c.indices for c in chunks])
        logits = {
            t.name: quantize(peaked_logits(indices, t.num_classes, 1 + 2 * k))
            for k, t in enumerate(teachers)
        }
        record = VideoRecord(id=vid, status="ok", native_frames=len(times), fps=25.0)
        writer.add_video(record, times, indices, logits, gops)
    writer.close()
    return shard_dir


def index_dataset(root: Path) -> tuple[Path, Path]:
    """Videos ``a/clip.mp4`` (40 frames) and ``b/clip.mp4`` (5 frames, shorter than a clip):
    same stem in two folders, as real datasets have. Returns (videos_root, shard_dir)."""
    videos = root / "videos"
    for sub, frames in (("a", 40), ("b", 5)):
        (videos / sub).mkdir(parents=True, exist_ok=True)
        make_index_video(videos / sub / "clip.mp4", frames, size=64)
    shards = write_shards(root / "shards", videos, ["a/clip.mp4", "b/clip.mp4"])
    return videos, shards


def test_support_shards_hold_the_peaked_logits(index_data: tuple[Path, Path]) -> None:
    _, shard_dir = index_data
    s = ShardSet(shard_dir)
    assert [r.id for r in s.ok_videos()] == ["a/clip.mp4", "b/clip.mp4"]
    logits = s.logits("a/clip.mp4", [0, 13])
    assert logits["objects"].argmax(1).tolist() == [0, 3]
    assert logits["scenes"].argmax(1).tolist() == [0, (3 * 13) % SCENES_CLASSES]
