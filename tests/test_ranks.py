"""Ranks of ``distinit extract`` running at the same time into one directory.

Every rank takes its share of the videos with no coordination; what must hold when they run
together: each exits 0, every video is written exactly once (by the rank that owns it), and the
manifest left by ranks finishing together (made to call the manifest writer at the same moment)
is complete and valid. Ranks come from torchrun's
variables, Slurm's, or explicit flags; two runs laid out with different ``--num-shards`` must not
both write the same videos.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distinit.extract.discovery import videos_for_rank
from distinit.pipeline.shards import FORMAT_NAME, list_shard_files, read_shard_header
from tests.videogen import make_index_video

VIDEOS = [f"v{i}.mp4" for i in range(8)]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
for _var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"):
    ENV.pop(_var, None)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rank_videos")
    for name in VIDEOS:
        make_index_video(root / name, 6)
    return root


def _together(
    videos: Path,
    out: Path,
    launches: list[tuple[dict[str, str], list[str]]],
    gather: Path | None = None,
) -> list[subprocess.CompletedProcess[str]]:
    """Start one ``distinit extract`` per (environment, extra flags) at once; wait for all.
    With ``gather`` (an empty directory), they also regenerate the manifest at the same moment
    (tests/killpoint.py), as ranks that finish together do."""
    launcher = [sys.executable, "-m", "distinit.pipeline.cli"]
    if gather is not None:
        gather.mkdir()
        hook = str(Path(__file__).with_name("killpoint.py"))
        launcher = [sys.executable, hook, "gather", str(gather), str(len(launches))]
    argv = [*launcher, "extract", "--videos", str(videos), "--out", str(out), "--workers", "1",
            "--batch-size", "4", "--videos-per-shard", "2", "--views", "recipe"]  # fmt: skip
    procs = [
        subprocess.Popen(
            argv + extra,
            env={**ENV, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for env, extra in launches
    ]
    # They overlap: none has finished by the time the last one started (start-up alone, with
    # the teacher loaded, takes seconds).
    assert all(p.poll() is None for p in procs)
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return results


def _assert_each_video_once_by_its_owner(out: Path) -> None:
    written: list[str] = []
    for path in list_shard_files(out):
        ids = [r.id for r in read_shard_header(path).records]
        # shard-r<index>of<num>-<seq>.h5: the rank that wrote it, which must own its videos
        index, num = (int(x) for x in path.name[len("shard-r") :].split("-")[0].split("of"))
        assert set(ids) <= set(videos_for_rank(VIDEOS, num, index)), path.name
        written += ids
    assert sorted(written) == VIDEOS, "every video exactly once"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == FORMAT_NAME
    assert sorted(s["file"] for s in manifest["shards"]) == [
        p.name for p in list_shard_files(out)
    ], "the manifest lists every shard"
    assert sorted(v["id"] for v in manifest["videos"]) == VIDEOS
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []


LAUNCHES = {
    "torchrun": [({"RANK": str(r), "WORLD_SIZE": "3", "LOCAL_RANK": str(r)}, [])
                 for r in range(3)],
    "slurm": [({"SLURM_PROCID": str(r), "SLURM_NTASKS": "2", "SLURM_LOCALID": str(r)}, [])
              for r in range(2)],
    "flags": [({}, ["--num-shards", "2", "--shard-index", str(r)]) for r in range(2)],
}  # fmt: skip


@pytest.mark.parametrize("launcher", sorted(LAUNCHES))
def test_ranks_at_the_same_time_write_every_video_once(
    launcher: str, videos: Path, tmp_path: Path
) -> None:
    out = tmp_path / "shards"
    for r in _together(videos, out, LAUNCHES[launcher], gather=tmp_path / "gather"):
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr
    world = len(LAUNCHES[launcher])
    assert {p.name.split("-")[1] for p in list_shard_files(out)} <= {
        f"r{k:04d}of{world:04d}" for k in range(world)
    }
    _assert_each_video_once_by_its_owner(out)


def test_two_layouts_into_one_directory_never_write_a_video_twice(
    videos: Path, tmp_path: Path
) -> None:
    """A run over 2 ranks and a run over 1 started together into one directory: one layout
    writes, a process of the other is refused in one line while it runs; run again, the rest
    is done and every video is still there exactly once."""
    out = tmp_path / "shards"
    launches = [({}, ["--num-shards", "2", "--shard-index", "0"]),
                ({}, ["--num-shards", "2", "--shard-index", "1"]),
                ({}, ["--num-shards", "1", "--shard-index", "0"])]  # fmt: skip
    results = _together(videos, out, launches)
    refused = []
    for (env, extra), r in zip(launches, results, strict=True):
        assert "Traceback" not in r.stderr
        if r.returncode != 0:
            assert r.returncode == 2 and "--num-shards" in r.stderr, r.stderr
            refused.append((env, extra))
    assert refused, "two layouts wrote into one directory at the same time"
    for r in _together(videos, out, refused):  # now that the other layout has finished
        assert r.returncode == 0, r.stderr
    _assert_each_video_once_by_its_owner(out)
