"""Untrusted inputs stay in their place: shards and results files received from elsewhere never
make distinit reach outside a root, and a planted link never makes a lock truncate a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from distinit.eval.report import compare_table
from distinit.extract.lock import RankLock
from distinit.pipeline.directory_lock import DirectoryLock
from distinit.pipeline.errors import ConfigError, ShardError
from distinit.pipeline.paths import check_relative
from distinit.pipeline.shards import ShardSet
from tests.test_eval_report import _probs_run
from tests.test_train_support import write_shards
from tests.videogen import make_index_video


@pytest.mark.parametrize(
    "relative",
    ["../../x.mp4", "a/../../x.mp4", "/etc/passwd", "C:\\x.mp4", "a\\..\\..\\x", "", "c:x.mp4",
     "//server/share/x.mp4", "\\\\server\\share\\x.mp4", "a/x\0y.mp4", "a/.."],
)  # fmt: skip
def test_a_path_that_leaves_its_root_is_refused_in_one_line(relative: str) -> None:
    with pytest.raises(ShardError, match="is not a path inside its directory") as refused:
        check_relative(relative, "video id", ShardError)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("relative", ["a/clip.mp4", "-dash.mkv", "it's ..odd.mp4", "é/x..y.avi"])
def test_ordinary_relative_paths_pass(relative: str) -> None:
    assert check_relative(relative, "video id", ShardError) == relative


def test_a_shard_whose_video_id_climbs_out_of_the_videos_root_is_refused(tmp_path: Path) -> None:
    videos = tmp_path / "a" / "b" / "videos"
    videos.mkdir(parents=True)
    make_index_video(tmp_path / "a" / "x.mp4", 8, size=64)  # what ../../x.mp4 would reach
    shards = write_shards(tmp_path / "shards", videos, ["../../x.mp4"])
    with pytest.raises(ShardError) as refused:
        ShardSet(shards)
    assert "video id '../../x.mp4' is not a path inside its directory" in str(refused.value)


def test_a_results_file_naming_probabilities_outside_its_run_is_refused(tmp_path: Path) -> None:
    ids = ["a.avi", "b.avi"]
    rgb = _probs_run(tmp_path / "rgb", "rgb", ids, [[0.9, 0.1], [0.2, 0.8]])
    flow = _probs_run(tmp_path / "flow", "flow", ids, [[0.9, 0.1], [0.2, 0.8]])
    results = flow / "results.json"
    results.write_text(results.read_text().replace("split1/video_probs.npz", "../rgb/split1/v"))
    table = compare_table([rgb, flow])  # the pair is not fused, and says why in one line
    assert "'../rgb/split1/v' is not a path inside its directory" in table
    assert not any(line.startswith("| 1 |") for line in table.splitlines())


@pytest.mark.parametrize("kind", ["run", "extract rank"])
def test_a_lock_file_planted_as_a_link_never_truncates_its_target(
    kind: str, tmp_path: Path
) -> None:
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    out = tmp_path / "out"
    out.mkdir()
    lock = DirectoryLock(out, "busy") if kind == "run" else RankLock(out, 0, 1)
    lock.path.symlink_to(victim)
    with pytest.raises(ConfigError, match="is a symbolic link where a lock file belongs"):
        lock.acquire()
    assert victim.read_text() == "keep me\n"
