"""Hostile environments: SIGTERM, unwritable and full disks (kill -9 is in test_kill.py)."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

from distinit.extract.config import ExtractConfig
from distinit.extract.runner import run_extract
from distinit.pipeline.shards import ShardSet
from tests.videogen import make_index_video

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
CLI = [sys.executable, "-m", "distinit.pipeline.cli"]


def test_sigterm_stops_extract_cleanly_and_it_resumes(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(10):
        make_index_video(videos / f"v{i}.mp4", 40)
    out = tmp_path / "shards"
    argv = [*CLI, "extract", "--videos", str(videos), "--out", str(out), "--views", "recipe",
            "--videos-per-shard", "1",
            "--workers", "1"]  # fmt: skip
    proc = subprocess.Popen(
        argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(out.glob("*.h5")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr  # as for any command (stopping.py)
    assert "SIGTERM: finished videos are saved; run the same command again to resume" in stderr
    assert "Traceback" not in stderr
    kept = len(ShardSet(out).ok_videos())
    assert 1 <= kept < 10
    assert not list(out.glob("*.tmp")), "the unfinished shard and videos' spools are removed"
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
    argv = [*CLI, "extract", "--videos", str(videos), "--out", str(out), "--views", "recipe"]
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


def test_write_probe_leaves_another_hosts_probe_alone(tmp_path: Path) -> None:
    # Ranks on two hosts write one --out; their containers may give both the same pid. The
    # other host's probe, in flight under this process's pid, must neither be written over nor
    # removed (its own removal would then fail, and that rank report --out as not writable).
    videos = tmp_path / "videos"
    videos.mkdir()
    make_index_video(videos / "v.mp4", 3)
    out = tmp_path / "shards"
    out.mkdir()
    theirs = out / f".write-test-{os.getpid()}"
    theirs.write_bytes(b"another host")
    cfg = ExtractConfig(videos=str(videos), out=str(out), teachers=("none",), store_size=(40, 32))
    assert run_extract(cfg).done == 1
    assert theirs.read_bytes() == b"another host"
    assert sorted(p.name for p in out.glob(".write-test-*")) == [theirs.name]  # ours is gone
