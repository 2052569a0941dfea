"""Interruptions and hostile environments: repeated kill -9, SIGTERM, unwritable and full disks."""

from __future__ import annotations

import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from distinit.pipeline.shards import ShardSet, read_shard_header
from distinit.train.checkpoint import load_final
from tests.test_train_support import index_dataset
from tests.videogen import make_index_video

KILLS = 5
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
CLI = [sys.executable, "-m", "distinit.pipeline.cli"]


def _kill_at_random_moments(argv: list[str], done: Path, rng: random.Random) -> int:
    """Start ``argv`` and SIGKILL it KILLS times at random moments; returns the kills that landed
    on a live process (the run must not have finished in between)."""
    landed = 0
    for _ in range(KILLS):
        proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 6.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            landed += 1
        proc.wait()
        if done.exists():
            break
    return landed


def test_extract_survives_repeated_kill_9(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(12):
        make_index_video(videos / f"v{i:02d}.mp4", 30)
    out = tmp_path / "shards"
    argv = [*CLI, "extract", "--videos", str(videos), "--out", str(out), "--videos-per-shard", "2",
            "--workers", "1", "--batch-size", "4"]  # fmt: skip
    landed = _kill_at_random_moments(argv, out / "manifest.json", random.Random(7))
    final = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    ids = [r.id for p in sorted(out.glob("*.h5")) for r in read_shard_header(p).records]
    assert sorted(ids) == [f"v{i:02d}.mp4" for i in range(12)], "each video exactly once"
    assert all(r.row_count == 30 for r in ShardSet(out).ok_videos())
    assert not list(out.glob("*.tmp"))
    verify = subprocess.run([*CLI, "inspect", str(out), "--verify", "3"], env=ENV,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    with capsys.disabled():
        print(f"\nextract: survived {landed} kill -9 at random moments; 12 videos, each once")
    assert landed >= 3


TRAIN = ["--student", "mc3_18", "--clip-len", "4", "--frame-stride", "2", "--resize", "40x32",
         "--crop", "32", "--lr", "0.05", "--warmup-steps", "2", "--seed", "3", "--device", "cpu",
         "--batch-size", "2", "--max-steps", "60", "--workers", "0"]  # fmt: skip


def test_train_survives_repeated_kill_9(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, shards = index_dataset(tmp_path / "data")
    reference = tmp_path / "reference"
    ref = subprocess.run([*CLI, "train", "--targets", str(shards), "--out", str(reference), *TRAIN],
                         env=ENV, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "killed"
    argv = [*CLI, "train", "--targets", str(shards), "--out", str(out), *TRAIN, "--save-every", "1"]
    landed = _kill_at_random_moments(argv, out / "final.pt", random.Random(11))
    final = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-2000:]
    a, b = load_final(reference / "final.pt").state_dict, load_final(out / "final.pt").state_dict
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    with capsys.disabled():
        print(f"\ntrain: survived {landed} kill -9 at random moments; final weights identical")
    assert landed >= 3


def test_sigterm_stops_extract_cleanly_and_it_resumes(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(10):
        make_index_video(videos / f"v{i}.mp4", 40)
    out = tmp_path / "shards"
    argv = [*CLI, "extract", "--videos", str(videos), "--out", str(out), "--videos-per-shard", "1",
            "--workers", "1"]  # fmt: skip
    proc = subprocess.Popen(
        argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(out.glob("*.h5")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Run the same command again to resume" in stderr
    assert "Traceback" not in stderr
    kept = len(ShardSet(out).ok_videos())
    assert 1 <= kept < 10
    # The summary counts the frames saved, not those decoded for videos left unfinished.
    saved = sum(r.row_count for r in ShardSet(out).ok_videos())
    assert f"; {saved} frames saved in " in stdout
    again = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0
    assert len(ShardSet(out).ok_videos()) == 10


def test_unwritable_out_is_a_one_line_error(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    make_index_video(videos / "v.mp4", 3)
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")
    r = subprocess.run([*CLI, "extract", "--videos", str(videos), "--out", str(blocker / "shards")],
                       env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "not writable" in r.stderr


def _limit_file_size() -> None:
    # Files may not grow past 16 KiB; the kernel then fails the write (EFBIG) instead of
    # signalling, as a full disk fails it with ENOSPC.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024))


def test_out_of_space_mid_shard_keeps_earlier_shards(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    make_index_video(videos / "a.mp4", 2)
    out = tmp_path / "shards"
    argv = [*CLI, "extract", "--videos", str(videos), "--out", str(out)]
    assert subprocess.run(argv, env=ENV, capture_output=True, timeout=300).returncode == 0
    before = {p.name: p.read_bytes() for p in out.glob("*.h5")}
    make_index_video(videos / "b.mp4", 60)  # 60 KB of logits: cannot fit under the limit
    r = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=300,
                       preexec_fn=_limit_file_size)  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "write failed" in r.stderr and "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if not ln.startswith("videos ")]
    assert len(errors) == 1 and errors[0].startswith("Error: "), r.stderr
    assert {p.name: p.read_bytes() for p in out.glob("*.h5")} == before
    assert not list(out.glob("*.tmp"))
    again = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert [r.id for r in ShardSet(out).ok_videos()] == ["a.mp4", "b.mp4"]
