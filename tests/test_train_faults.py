"""Training against what clusters and data do to it: a resume on other shards, videos that no
longer decode, a signal to the whole process group, a reader that went away."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from distinit.pipeline.errors import CheckpointError, TooManyBadClipsError
from distinit.train import loop
from distinit.train.command import train
from tests.test_train_launch import _plain_env
from tests.test_train_run import COMMON, STEPS, _argv
from tests.test_train_support import write_shards
from tests.videogen import make_index_video


def _train(shards: Path, out: Path, *extra: str) -> None:
    args = ["--targets", str(shards), "--out", str(out), *COMMON, "--batch-size", "2"]
    args += ["--max-steps", str(STEPS), "--workers", "0", *extra]
    result = CliRunner().invoke(train, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output


def test_a_resume_on_another_shard_set_is_refused_and_moved_shards_are_not(
    index_data: tuple[Path, Path], tmp_path: Path
) -> None:
    videos, shards = index_data
    out = tmp_path / "run"
    _train(shards, out, "--stop-after", "1")
    moved = shutil.copytree(shards, tmp_path / "elsewhere" / "shards")
    _train(moved, out, "--stop-after", "1")  # the same shards in another place: resumed
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 2
    # The same directory, grown by one video (a second extract into it): refused.
    grown = shutil.copytree(shards, tmp_path / "grown")
    videos_copy = shutil.copytree(videos, tmp_path / "videos")
    make_index_video(videos_copy / "c.mp4", 12, size=64)
    write_shards(grown, videos_copy, ["c.mp4"], name="shard-0001.h5")
    with pytest.raises(CheckpointError) as refused:
        _train(grown, out, "--stop-after", "1", "--videos", str(videos_copy))
    message = str(refused.value)
    assert "\n" not in message
    assert "was trained on another shard set (2 videos, 45 rows in 1 files; --targets holds " \
        "3 videos, 57 rows in 2 files)" in message  # fmt: skip
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 2  # untouched


def test_last_pt_is_read_once_per_resumed_run(
    index_data: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    _train(index_data[1], out, "--stop-after", "1")
    reads: list[Path] = []
    real = loop.load_last
    monkeypatch.setattr(loop, "load_last", lambda p: reads.append(p) or real(p))
    _train(index_data[1], out, "--stop-after", "1")
    assert reads == [out / "last.pt"]


@pytest.fixture
def damaged_sources(index_data: tuple[Path, Path], tmp_path: Path) -> Path:
    """A copy of the source videos where b/clip.mp4 no longer decodes (truncated to nothing)."""
    copy = shutil.copytree(index_data[0], tmp_path / "videos")
    (copy / "b" / "clip.mp4").write_bytes(b"")
    return copy


def test_bad_clips_are_replaced_counted_and_reported_up_to_the_bound(
    index_data: tuple[Path, Path], damaged_sources: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = ["--targets", str(index_data[1]), "--out", str(out), *COMMON, "--batch-size", "2"]
    args += ["--max-steps", "3", "--frames", "source", "--videos", str(damaged_sources)]
    args += ["--workers", "1"]  # the error crosses a worker's re-raise
    result = CliRunner().invoke(train, [*args, "--max-bad-clips", "100"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    logged = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    bad = logged[-1]["bad_clips"]
    assert bad >= 1
    assert f"bad clips: {bad} could not be decoded and were replaced by others" in result.output
    with pytest.raises(TooManyBadClipsError) as stopped:
        CliRunner().invoke(
            train, [*args, "--out", str(tmp_path / "strict"), "--max-bad-clips", "0"],
            catch_exceptions=False,
        )  # fmt: skip
    assert "more than --max-bad-clips 0" in str(stopped.value) and "\n" not in str(stopped.value)


def _start(argv: list[str], **kwargs: object) -> subprocess.Popen[str]:
    """The command in a process group of its own, as a shell or a batch system starts it."""
    return subprocess.Popen(argv, env=_plain_env(), text=True, start_new_session=True, **kwargs)  # type: ignore[call-overload, no-any-return]


def _wait_for_steps(out: Path, proc: subprocess.Popen[str], steps: int) -> None:
    log = out / "log.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= steps:
            return
        time.sleep(0.01)
    raise AssertionError("training did not start")


def test_sigterm_to_the_process_group_saves_the_current_step(
    index_data: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    argv = _argv(index_data[1], out, "--save-every", "1000", "--workers", "2")
    proc = _start(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_steps(out, proc, 1)
    os.killpg(proc.pid, signal.SIGTERM)  # the loader workers get it too (kill -TERM -PGID)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    stopped_at = torch.load(out / "last.pt", weights_only=True)["step"]
    assert 1 <= stopped_at < STEPS
    assert err.strip().splitlines()[-1].startswith(f"SIGTERM at step {stopped_at} of {STEPS}")
    assert "Traceback" not in err


def test_ctrl_c_with_the_output_pipe_gone_still_saves(
    index_data: tuple[Path, Path], tmp_path: Path
) -> None:
    """``distinit train ... 2>&1 | tee log`` and Ctrl-C: tee dies with it, and the save must
    still happen with nobody left to read stderr."""
    out = tmp_path / "run"
    argv = _argv(index_data[1], out, "--save-every", "1000", "--workers", "1")
    proc = _start(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _wait_for_steps(out, proc, 1)
    assert proc.stdout is not None
    proc.stdout.close()  # the reader (tee) is gone
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT
    stopped_at = torch.load(out / "last.pt", weights_only=True)["step"]
    logged = [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()]
    assert 1 <= stopped_at < STEPS and logged[-1] == stopped_at


def test_the_student_is_given_a_contiguous_clip_tensor(
    index_data: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The normalised clip is a permuted view; under DDP it would give gradients whose strides
    differ from the bucket's (fine-tuning makes it contiguous too)."""
    seen: list[bool] = []

    class Watched(loop.Student):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            seen.append(x.is_contiguous())
            return super().forward(x)

    monkeypatch.setattr(loop, "Student", Watched)
    _train(index_data[1], tmp_path / "run", "--stop-after", "2")
    assert seen == [True, True]
