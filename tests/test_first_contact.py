"""What a new user meets first: errors that say what to do, and no leftovers after a run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distinit.eval.manifests import load_manifest
from distinit.eval.splits import load_split
from distinit.extract import inspection
from distinit.extract.teachers import load_teacher
from distinit.pipeline.errors import DatasetError, ShardError, UnknownNameError, WeightsError
from distinit.pipeline.shards import ShardSet
from tests.test_eval_splits import _touch_videos, make_hmdb_layout
from tests.test_train_support import write_shards
from tests.videogen import make_index_video


def distinit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "distinit.pipeline.cli", *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_no_videos_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "notes.txt").write_text("not a video")
    out = tmp_path / "shards"
    result = distinit("extract", "--videos", str(videos), "--out", str(out))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no videos found" in lines[0]
    assert ".mp4" in lines[0] and ".avi" in lines[0]  # says what it looked for
    assert not out.exists()


def test_a_run_leaves_no_lock_files_and_a_failed_one_no_directory(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    make_index_video(videos / "v.mp4", 3)
    out = tmp_path / "shards"
    ok = distinit("extract", "--videos", str(videos), "--out", str(out), "-vv")  # -v after it
    assert ok.returncode == 0, ok.stderr
    assert "1 videos done" in ok.stdout and "DEBUG" in ok.stderr
    assert not list(out.glob(".lock-*")) and list(out.glob("*.h5"))
    # An error found once --out exists (a teacher without weights) takes the directory back.
    failed_out = tmp_path / "failed"
    bad = distinit(
        "extract", "--videos", str(videos), "--out", str(failed_out),
        "--teacher", "places365_resnet50",
    )  # fmt: skip
    assert bad.returncode == 2 and "--teacher-weights" in bad.stderr
    assert not failed_out.exists()


@pytest.fixture(scope="module")
def same_name_shards(tmp_path_factory: pytest.TempPathFactory) -> ShardSet:
    root = tmp_path_factory.mktemp("same_name")
    for sub in ("a", "b"):
        (root / "videos" / sub).mkdir(parents=True)
        make_index_video(root / "videos" / sub / "bikes.mp4", 3, size=32)
    ids = ["a/bikes.mp4", "b/bikes.mp4"]
    return ShardSet(write_shards(root / "shards", root / "videos", ids))


def test_inspect_suggests_the_ids_with_that_file_name(same_name_shards: ShardSet) -> None:
    with pytest.raises(ShardError, match=r"did you mean 'a/bikes.mp4' or 'b/bikes.mp4'\?"):
        inspection.video_top(same_name_shards, "bikes.mp4", None, 3)
    with pytest.raises(ShardError, match=r"did you mean 'a/bikes.mp4'"):
        inspection.video_top(same_name_shards, "a/bikse.mp4", None, 3)
    with pytest.raises(ShardError, match="relative to the extract --videos"):
        inspection.video_top(same_name_shards, "zzz.avi", None, 3)
    assert inspection.video_top(same_name_shards, "a/bikes.mp4", None, 3)["id"] == "a/bikes.mp4"


def test_teacher_typo_suggests_names_and_where_the_list_is() -> None:
    with pytest.raises(UnknownNameError) as info:
        load_teacher("resnt50")
    message = str(info.value)
    assert "did you mean resnet50" in message and "`distinit teachers`" in message
    assert "convnext_tiny" not in message and len(message) < 200  # no 80-name list
    listed = distinit("teachers")
    assert listed.returncode == 0
    assert {"efficientnet_lite0", "resnet50", "places365_resnet50"} <= set(listed.stdout.split())


def test_the_teacher_list_says_whose_weights_are_on_this_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner
    from torchvision.models import get_model_weights

    from distinit.pipeline.cli import cli

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # torch.hub.get_dir() follows it
    cached = tmp_path / "hub" / "checkpoints" / Path(get_model_weights("resnet18").DEFAULT.url).name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    result = CliRunner().invoke(cli, ["teachers"])
    assert result.exit_code == 0, result.output
    status = dict(line.split(None, 1) for line in result.output.splitlines())
    assert status["efficientnet_lite0"].startswith("ready")
    assert status["resnet18"] == "ready (torchvision's cache)"
    assert status["resnet50"].startswith("missing: https://download.pytorch.org/models/resnet50-")
    assert "--teacher-weights places365_resnet50=PATH" in status["places365_resnet50"]


def test_uncached_torchvision_weights_name_their_file_and_url_and_are_never_downloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distinit.eval.inflate import load_resnet18_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def download(url: str, dst: str, progress: bool = True) -> None:
        raise AssertionError(f"distinit tried to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    for load, instead in (
        (lambda: load_teacher("resnet18"), "--teacher-weights resnet18=PATH"),
        (lambda: load_resnet18_weights(None), "--inflate-weights PATH"),  # --init inflated
    ):
        with pytest.raises(WeightsError) as info:
            load()
        message = str(info.value)
        assert message.startswith("resnet18-f37072fd.pth is not in torchvision's cache")
        assert "download https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
        assert str(tmp_path) in message and instead in message


def test_missing_split_files_point_at_splits_before_allow_partial(tmp_path: Path) -> None:
    root = make_hmdb_layout(tmp_path, videos=False)
    _touch_videos(root)
    with pytest.raises(DatasetError) as info:
        load_split(load_manifest("hmdb51"), root, 1)  # split files are in root/splits
    message = str(info.value)
    assert "--splits DIR" in message and "--allow-partial" in message
    assert message.index("--splits DIR") < message.index("--allow-partial")
