"""kill -9 during work, at the moments that matter, for both stages.

Each kill is triggered by an event, not a timer, and the test asserts where it landed: after the
first shard, in the middle of writing a shard, in the middle of writing the manifest; for
training, after a ``last.pt`` exists, in the middle of saving the next one. Mid-write kills use
tests/killpoint.py, which holds the process inside the write (temporary file complete, not yet
renamed) until it is killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from distinit.pipeline.shards import ShardSet, list_shard_files, read_shard_header
from distinit.train.checkpoint import load_final
from tests.videogen import make_index_video

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
CLI = [sys.executable, "-m", "distinit.pipeline.cli"]
KILLPOINT = [sys.executable, str(Path(__file__).with_name("killpoint.py"))]


def _kill_when(argv: list[str], event: Callable[[], bool], what: str) -> None:
    """Start ``argv``, SIGKILL it as soon as ``event()`` holds; it must still be running then."""
    proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not event():
        if proc.poll() is not None:
            pytest.fail(f"ended ({proc.returncode}) before {what}: {proc.stderr.read()[-2000:]!r}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
    assert proc.poll() is None, f"ended before it could be killed {what}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _at_killpoint(pattern: str, marker: Path, argv: list[str]) -> list[str]:
    return [*KILLPOINT, "pause", pattern, str(marker), *argv[len(CLI) :]]


def _shards(out: Path) -> list[Path]:
    return list_shard_files(out) if out.is_dir() else []


def test_extract_killed_after_a_shard_mid_shard_and_mid_manifest(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    names = [f"v{i}.mp4" for i in range(8)]
    for name in names:
        make_index_video(videos / name, 20)
    out = tmp_path / "shards"
    argv = [*CLI, "extract", "--videos", str(videos), "--out", str(out), "--views", "recipe",
            "--videos-per-shard", "2",
            "--workers", "1", "--batch-size", "4"]  # fmt: skip

    # 1. After the first shard exists: the run is working on the next one.
    _kill_when(argv, lambda: len(_shards(out)) >= 1, "after the first shard")
    first = len(_shards(out))
    assert 1 <= first < 4 and not (out / "manifest.json").exists()

    # 2. While the resumed run writes its first shard: the finished ones are kept.
    marker = tmp_path / "in-shard"
    _kill_when(_at_killpoint(".h5", marker, argv), marker.exists, "mid-shard")
    half = Path(marker.read_text())
    assert half.exists() and half.name.endswith(".tmp"), "killed inside the shard's write"
    assert len(_shards(out)) == first, "the half-written shard never got a final name"

    # 3. While the manifest is written, after every shard is complete.
    marker = tmp_path / "in-manifest"
    _kill_when(_at_killpoint("manifest.json", marker, argv), marker.exists, "mid-manifest")
    assert Path(marker.read_text()).exists(), "killed inside the manifest's write"
    assert not half.exists(), "the resumed run removed the half-written shard"
    assert len(_shards(out)) == 4 and not (out / "manifest.json").exists()

    kept = {p.name: p.read_bytes() for p in _shards(out)}
    final = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert {p.name: p.read_bytes() for p in _shards(out)} == kept, "nothing finished was redone"
    ids = [r.id for p in _shards(out) for r in read_shard_header(p).records]
    assert sorted(ids) == names, "each video exactly once"
    assert all(r.row_count == 20 for r in ShardSet(out).ok_videos())
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(v["id"] for v in manifest["videos"]) == names
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []
    verify = subprocess.run([*CLI, "inspect", str(out), "--verify", "3"], env=ENV,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr


STEPS = 8
SAVE_EVERY = 3  # saves at 3, 6 and 8: a handful of ~90 MB writes, not one per step
TRAIN = ["--student", "mc3_18", "--clip-len", "4", "--frame-stride", "2", "--resize", "40x32",
         "--crop", "32", "--lr", "0.05", "--warmup-steps", "2", "--seed", "3", "--device", "cpu",
         "--batch-size", "2", "--max-steps", str(STEPS), "--workers", "0",
         "--save-every", str(SAVE_EVERY)]  # fmt: skip


def _logged_steps(out: Path) -> int:
    log = out / "log.jsonl"
    return len(log.read_text().splitlines()) if log.is_file() else 0


def _saved_step(out: Path) -> int:
    return int(torch.load(out / "last.pt", weights_only=True)["step"])


def test_train_killed_after_a_save_and_mid_save_ends_bit_identical(
    tmp_path: Path, index_data: tuple[Path, Path]
) -> None:
    _, shards = index_data
    reference = tmp_path / "reference"
    argv = [*CLI, "train", "--targets", str(shards), *TRAIN, "--out"]
    ref = subprocess.run([*argv, str(reference)], env=ENV, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "killed"
    argv.append(str(out))

    # 1. After last.pt exists, while training goes on past it.
    _kill_when(
        argv,
        lambda: (out / "last.pt").exists() and _logged_steps(out) > SAVE_EVERY,
        "after a save",
    )
    assert _saved_step(out) == SAVE_EVERY and not (out / "final.pt").exists()

    # 2. While the resumed run saves its next last.pt: the previous one must stay whole.
    marker = tmp_path / "in-save"
    _kill_when(_at_killpoint("last.pt", marker, argv), marker.exists, "mid-save")
    half = Path(marker.read_text())
    assert torch.load(half, weights_only=True)["step"] == 2 * SAVE_EVERY, "killed saving step 6"
    assert _saved_step(out) == SAVE_EVERY, "the previous last.pt survives a kill mid-save"

    final = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-2000:]
    assert f"steps {SAVE_EVERY} -> {STEPS}" in final.stdout
    a, b = load_final(reference / "final.pt").state_dict, load_final(out / "final.pt").state_dict
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
