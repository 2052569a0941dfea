"""Views: every target is the teacher's output on exactly the crop the student is shown.

The promise is tested end to end on a real clip with the real teacher: ``inspect --consistency``
recomputes the teacher from the source video on the crop the training loader actually cut, and
must find the cache's noise floor with views, the old gap with the teacher's own centre view, and
a failure when the view table no longer says where the targets were computed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from distinit.apps.consistency import MAX_KL_MEAN, check_consistency
from distinit.extract.config import ExtractConfig
from distinit.extract.runner import run_extract
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.frame_source import open_frame_source
from distinit.pipeline.shards import ShardSet, ShardWriter, TeacherInfo, VideoRecord, quantize
from distinit.pipeline.views import View, ViewSet, nearest_view_iou
from distinit.train.clips import ClipDataset, ClipSpec

CLIP = "bikes.mp4"  # the sample clip whose teacher targets move most with the crop


def test_default_views_span_the_free_range_of_both_axes_and_mirror_each() -> None:
    views = ViewSet.grid((171, 128), 112, 6)
    positions = sorted({(v.x, v.y) for v in views.views})
    assert len(views) == 12 and views.positions == 6
    assert {x for x, _ in positions} == {0, 30, 59} and {y for _, y in positions} == {0, 16}
    assert sum(v.flip for v in views.views) == 6  # every position once unflipped, once mirrored
    assert {(v.x, v.y) for v in views.views if v.flip} == {(v.x, v.y) for v in views.views}
    # An axis without free range keeps one position; the other spans its range.
    wide = ViewSet.grid((200, 112), 112, 4, mirror=False)
    assert [(v.x, v.y) for v in wide.views] == [(0, 0), (29, 0), (59, 0), (88, 0)]
    assert ViewSet.grid((171, 128), 112, 1).views == (View(29, 8, False), View(29, 8, True))


def test_views_that_cannot_span_the_frame_are_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match="--views 7 cannot span both axes"):
        ViewSet.grid((171, 128), 112, 7)
    with pytest.raises(ConfigError, match="--crop 200 does not fit the 171x128 frame"):
        ViewSet.grid((171, 128), 200, 6)


def test_source_boxes_cover_the_region_of_the_stretched_store_box() -> None:
    views = ViewSet.grid((171, 128), 112, 6)
    boxes = views.source_boxes(1280, 720)  # (K, 4) x0, y0, x1, y1
    assert boxes.shape == (12, 4)
    np.testing.assert_allclose(boxes[0], [0, 0, 112 * 1280 / 171, 112 * 720 / 128])
    assert boxes[:, 2].max() == pytest.approx(1280) and boxes[:, 3].max() == pytest.approx(720)


def test_views_keep_most_of_the_crop_diversity() -> None:
    # A random crop's nearest view overlaps it by IoU 0.83 (a centre view alone: 0.72).
    assert nearest_view_iou(ViewSet.grid((171, 128), 112, 6)) > 0.8
    assert nearest_view_iou(ViewSet.grid((171, 128), 112, 1)) < 0.75


def _peaked_view_shards(directory: Path, views: ViewSet, rows: int = 20) -> ShardSet:
    """A shard (no store) whose view k's logits peak on class k: a target names its view."""
    k = len(views)
    info = TeacherInfo("t", k, tuple(f"c{i}" for i in range(k)), "0" * 64, "synthetic", "none")
    writer = ShardWriter(directory / "shard-0000.h5", [info], {"videos_root": "/x"}, None, views)
    logits = np.zeros((k, rows, k), np.float32)
    logits[np.arange(k), :, np.arange(k)] = 12.0
    q, scale, offset = quantize(logits.reshape(k * rows, k))
    writer.add_video(
        VideoRecord("v.mp4", "ok", width=640, height=480),
        np.arange(rows) / 25.0,
        np.arange(rows),
        {"t": (q.reshape(k, rows, k), scale.reshape(k, rows), offset.reshape(k, rows))},
    )
    writer.close()
    return ShardSet(directory)


class _BlankFrames:
    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size

    def __call__(self, video_id: str, rows: np.ndarray) -> np.ndarray:
        width, height = self.size
        # Column x holds the value x: a crop's first column says where it was cut.
        ramp = np.broadcast_to(np.arange(width, dtype=np.uint8)[None, :, None], (height, width, 3))
        return np.broadcast_to(ramp, (len(rows), height, width, 3)).copy()

    def describe(self) -> str:
        return "blank"


def test_the_loader_draws_one_view_per_clip_with_its_own_crop_and_targets(tmp_path: Path) -> None:
    views = ViewSet.grid((171, 128), 112, 6)
    shards = _peaked_view_shards(tmp_path, views)
    assert shards.views == views
    with h5py.File(tmp_path / "shard-0000.h5", "r") as f:  # the boxes, as the README documents
        np.testing.assert_array_equal(f["views/store_box"][()], views.store_boxes())
        np.testing.assert_allclose(f["videos/source_box"][0], views.source_boxes(640, 480))
    spec = ClipSpec(4, 1, (171, 128), 112, 1.0, "mean", views=views)
    dataset = ClipDataset(shards, _BlankFrames((171, 128)), spec, seed=3, global_batch=4)
    seen = set()
    for index in range(120):
        plan, item = dataset.plan(index), dataset[index]
        view = views.views[plan.view]
        assert (plan.crop_x, plan.crop_y, plan.flip) == (view.x, view.y, view.flip)
        assert int(item["targets"]["t"].argmax()) == plan.view  # that view's own targets
        first_column = int(item["clip"][0, 0, 0, 0])
        assert first_column == (view.x + 111 if view.flip else view.x)
        seen.add(plan.view)
    assert seen == set(range(len(views)))  # every view is drawn


def test_clips_cut_otherwise_than_the_views_say_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    views = ViewSet.grid((171, 128), 112, 6)
    shards = _peaked_view_shards(tmp_path, views)
    spec = ClipSpec(4, 1, (171, 128), 96, 1.0, "mean", views=views)
    dataset = ClipDataset(shards, _BlankFrames((171, 128)), spec, seed=0, global_batch=1)
    assert "train with --resize 171x128 --crop 112" in caplog.text
    # Random crops, against the targets of the most central unflipped view (x 30, y 0 or 16).
    central = views.views[int(dataset[0]["targets"]["t"].argmax())]
    assert central.x == 30 and not central.flip


@pytest.fixture(scope="module")
def bikes(tmp_path_factory: pytest.TempPathFactory, sample_clips: Path) -> Path:
    videos = tmp_path_factory.mktemp("bikes") / "videos"
    videos.mkdir()
    shutil.copy(sample_clips / CLIP, videos / CLIP)
    return videos


def _extract(videos: Path, out: Path, views: int | None) -> ShardSet:
    cfg = ExtractConfig(
        videos=str(videos), out=str(out), fps=2.0, views=views, device="cpu", compile="off",
        batch_size=4,
    )  # fmt: skip
    assert run_extract(cfg).done == 1
    return ShardSet(out)


@pytest.fixture(scope="module")
def view_shards(bikes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("views") / "shards"
    _extract(bikes, out, 6)
    return out


def test_targets_of_views_are_the_teacher_on_the_loaders_crops(view_shards: Path) -> None:
    report = check_consistency(ShardSet(view_shards), 8)
    assert report.clips == 8 and len(report.kl) == 8
    assert float(np.mean(report.kl)) <= MAX_KL_MEAN and report.consistent()
    assert all(report.same_top1)


def test_targets_of_the_teachers_own_view_are_far_from_the_crops(
    bikes: Path, tmp_path: Path
) -> None:
    report = check_consistency(_extract(bikes, tmp_path / "recipe", None), 8)
    # The gap views close: a KL of tenths of a nat, where views are at 1e-5.
    assert float(np.mean(report.kl)) > 0.05


def test_a_view_table_shifted_by_one_crop_step_fails_the_check(
    view_shards: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(view_shards, broken)
    [shard] = broken.glob("*.h5")
    with h5py.File(shard, "r+") as f:
        boxes = f["views/store_box"][()]
        xs = sorted(set(boxes[:, 0].tolist()))  # 0, 30, 59: each box moves one step right
        shifted = np.array([xs[(xs.index(x) + 1) % len(xs)] for x in boxes[:, 0]])
        boxes[:, 2] += shifted - boxes[:, 0]
        boxes[:, 0] = shifted
        f["views/store_box"][...] = boxes
    assert not check_consistency(ShardSet(broken), 8).consistent()
    result = subprocess.run(
        [sys.executable, "-m", "distinit.pipeline.cli", "inspect", str(broken),
         "--consistency", "4"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith("consistency: KL mean")
    assert "inconsistent: the targets of" in result.stderr
    assert "Traceback" not in result.stderr


def test_centre_view_shards_still_train_with_a_notice(
    view_shards: Path, bikes: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shards = _extract(bikes, tmp_path / "recipe", None)
    assert shards.views is None and shards.num_views == 1
    spec = ClipSpec(4, 1, (171, 128), 112, 1.0, "mean")
    ClipDataset(shards, open_frame_source(shards, (171, 128)), spec, seed=0, global_batch=1)
    assert "not the student's crops" in caplog.text and "--consistency" in caplog.text


def test_a_run_with_other_views_is_refused_in_the_same_directory(
    view_shards: Path, bikes: Path, tmp_path: Path
) -> None:
    out = tmp_path / "again"
    shutil.copytree(view_shards, out)
    with pytest.raises(
        ConfigError, match=r"holds shards made another way \(views: 12 views.* -> 8 views"
    ):
        run_extract(ExtractConfig(videos=str(bikes), out=str(out), fps=2.0, views=4))
