"""One rank meets a fault, the job ends together: two gloo ranks (as srun starts them) where only
rank 1 fails must both exit within seconds, non-zero, with the same one-line error."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.eval_support import TINY, make_eval_data
from tests.test_train_launch import slurm_envs
from tests.test_train_run import COMMON

# Starts the CLI after planting a fault in rank 1 only (a test cannot reach inside the job any
# other way); the fault is Python source run before the CLI imports anything else.
LAUNCHER = """
import os, sys
if os.environ["SLURM_PROCID"] == "1":
    exec(os.environ["RANK_FAULT"])
from distinit.pipeline.cli import main
sys.argv = ["distinit", *sys.argv[1:]]
main()
"""

# A shard that turns unreadable under rank 1 from its third clip on.
SHARD_FAULT = """
from distinit.pipeline.errors import ShardError
from distinit.train import clips
real = clips.ClipDataset.__getitem__
def broken(self, index):
    if index >= 4:
        raise ShardError("v.h5: chunk 3 of logits/objects is unreadable")
    return real(self, index)
clips.ClipDataset.__getitem__ = broken
"""

NAN_LOSS = """
import torch
real = torch.nn.functional.cross_entropy
torch.nn.functional.cross_entropy = lambda *a, **k: real(*a, **k) * float("nan")
"""


def _job(argv: list[str], fault: str) -> list[subprocess.CompletedProcess[str]]:
    """Run ``argv`` (CLI arguments) as two Slurm tasks; each task's result, with how long the
    job ran after its first task ended in ``.args``."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, *argv],
            env={**env, "RANK_FAULT": fault},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for env in slurm_envs(2)
    ]
    results, ended = [], []
    try:
        for p in procs:
            out, err = p.communicate(timeout=240)
            ended.append(time.monotonic())
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert max(ended) - min(ended) < 20, "one rank went on waiting after the other ended"
    return results


def _assert_ended_together(results: list[subprocess.CompletedProcess[str]], says: str) -> None:
    last_lines = [r.stderr.strip().splitlines()[-1] for r in results]
    for r in results:
        assert r.returncode == 2, r.stderr[-3000:]
        assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert last_lines[0] == last_lines[1], last_lines
    assert last_lines[0].startswith("Error: rank 1 of 2: ") and says in last_lines[0]


def test_a_shard_fault_on_one_training_rank_ends_every_rank(
    index_data: tuple[Path, Path], tmp_path: Path
) -> None:
    argv = ["train", "--targets", str(index_data[1]), "--out", str(tmp_path / "run"), *COMMON,
            "--batch-size", "2", "--max-steps", "6", "--workers", "0"]  # fmt: skip
    results = _job(argv, SHARD_FAULT)
    _assert_ended_together(results, "v.h5: chunk 3 of logits/objects is unreadable")
    # rank 0 alone announces the run
    assert sum("training mc3_18" in r.stderr for r in results) == 1


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_eval_data(tmp_path_factory.mktemp("rankfault"), seed=1)


def test_a_non_finite_loss_on_one_fine_tuning_rank_ends_every_rank(
    eval_data: dict[str, Path], tmp_path: Path
) -> None:
    argv = ["eval", "--dataset", str(eval_data["manifest"]), "--root", str(eval_data["root"]),
            "--splits", str(eval_data["root"] / "splits"), "--mode", "finetune",
            "--out", str(tmp_path / "out"), "--checkpoint", str(eval_data["checkpoint"]), *TINY,
            "--epochs", "1", "--lr", "0.005"]  # fmt: skip
    results = _job(argv, NAN_LOSS)
    _assert_ended_together(results, "fine-tuning loss is nan at epoch 1")
