from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from distinit.pipeline.clip_rules import is_short, window_rows
from distinit.pipeline.errors import ConfigError, ShardError
from distinit.pipeline.frame_source import open_frame_source, resolve_videos_root
from distinit.pipeline.shards import ShardSet
from distinit.train.clips import ClipDataset, ClipSpec, StepSampler, plan_clip
from tests.test_train_support import (
    OBJECTS_CLASSES,
    SCENES_CLASSES,
    TEACHERS,
    index_dataset,
    teacher,
    write_shards,
)
from tests.videogen import read_index


@pytest.fixture(scope="module")
def dataset_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return index_dataset(tmp_path_factory.mktemp("train_clips"))


def _spec(target_frames: str = "mean", stride: int = 2) -> ClipSpec:
    # The crop keeps the whole 64px frame: read_index needs every cell of the index grid.
    return ClipSpec(
        clip_len=4,
        frame_stride=stride,
        resize=(64, 64),
        crop=64,
        temperature=1.0,
        target_frames=target_frames,
    )


def test_window_rows_and_the_loop_rule_for_short_videos() -> None:
    assert window_rows(40, 4, 2, 5).tolist() == [5, 7, 9, 11]
    # 5 rows, window spans 7: start at 0 and loop.
    assert window_rows(5, 4, 2, 0).tolist() == [0, 2, 4, 1]
    assert is_short(5, 4, 2) and not is_short(7, 4, 2)


@pytest.mark.parametrize(("target_frames", "source"), [("mean", "store"), ("random", "source")])
def test_clip_frames_are_the_rows_whose_targets_are_used(
    dataset_dirs: tuple[Path, Path], target_frames: str, source: str
) -> None:
    videos, shard_dir = dataset_dirs
    shards = ShardSet(shard_dir)
    frames = open_frame_source(shards, (64, 64), prefer=source)
    ds = ClipDataset(shards, frames, _spec(target_frames), seed=3, global_batch=2)
    assert ds.short_videos == 1
    seen_short = seen_flip = 0
    for index in range(12):
        item = ds[index]
        plan = ds.plan(index)
        clip = item["clip"].numpy()  # (T, 64, 64, 3)
        if plan.flip:
            clip = clip[:, :, ::-1]
            seen_flip += 1
        shown = [read_index(f) for f in clip]  # what the student actually sees
        record = ds.videos[plan.video]
        native = shards.frame_indices(record.id)[item["rows"].numpy()]
        assert shown == native.tolist()
        seen_short += record.row_count == 5
        # Expected targets from the decoded indices alone (logit peak = index % C, PEAK=12 is
        # nearly one-hot at T=1).
        for name, classes, mult in (("objects", OBJECTS_CLASSES, 1), ("scenes", SCENES_CLASSES, 3)):
            expected = np.zeros(classes)
            frames = shown if target_frames == "mean" else [shown[plan.target_frame]]
            for i in frames:
                expected[(mult * i) % classes] += 1 / len(frames)
            got = item["targets"][name].numpy()
            np.testing.assert_allclose(got, expected, atol=2e-4)
            assert got.sum() == pytest.approx(1.0, abs=1e-5)
    assert seen_short and seen_flip  # both rules were exercised


def test_sampling_is_a_function_of_seed_step_and_position() -> None:
    spec = _spec()
    counts = [40, 5, 17]
    a = [plan_clip(counts, spec, 7, s, p, 2) for s in range(6) for p in range(2)]
    b = [plan_clip(counts, spec, 7, s, p, 2) for s in range(6) for p in range(2)]
    c = [plan_clip(counts, spec, 8, s, p, 2) for s in range(6) for p in range(2)]
    assert a == b and a != c
    # Every epoch (2 steps x 2 clips, 3 videos, wrapping) visits every video.
    for epoch in range(3):
        assert {p.video for p in a[4 * epoch : 4 * epoch + 3]} == {0, 1, 2}


def test_step_sampler_splits_the_global_batch_between_ranks() -> None:
    one = list(StepSampler(1, 3, 4, 0, 1))
    r0, r1 = list(StepSampler(1, 3, 2, 0, 2)), list(StepSampler(1, 3, 2, 1, 2))
    assert one == [4, 5, 6, 7, 8, 9, 10, 11]
    assert sorted(r0 + r1) == one and r0 == [4, 5, 8, 9]


def test_refuses_a_directory_without_shards(tmp_path: Path) -> None:
    with pytest.raises(ShardError, match="no shard files"):
        ShardSet(tmp_path)


def test_refuses_shards_that_disagree_on_teachers(
    tmp_path: Path, dataset_dirs: tuple[Path, Path]
) -> None:
    videos, _ = dataset_dirs
    write_shards(tmp_path, videos, ["a/clip.mp4"], TEACHERS, name="s0.h5")
    write_shards(tmp_path, videos, ["b/clip.mp4"], [teacher("objects", 10)], name="s1.h5")
    with pytest.raises(ShardError, match="differ"):
        ShardSet(tmp_path)


def test_videos_root_from_provenance_override_and_missing(
    tmp_path: Path, dataset_dirs: tuple[Path, Path]
) -> None:
    videos, shard_dir = dataset_dirs
    assert resolve_videos_root(ShardSet(shard_dir), None) == videos
    unrecorded = write_shards(tmp_path / "s", videos, ["a/clip.mp4"], record_root=False)
    with pytest.raises(ConfigError, match="pass --videos"):
        resolve_videos_root(ShardSet(unrecorded), None)
    assert resolve_videos_root(ShardSet(unrecorded), str(videos)) == videos
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="1 extracted videos are missing"):
        resolve_videos_root(ShardSet(unrecorded), str(tmp_path / "empty"))
