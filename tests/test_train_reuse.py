"""Reusing runs: extending a finished run, warm-starting from a final.pt, checking --targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from distinit.pipeline.errors import CheckpointError, ConfigError
from distinit.train.checkpoint import load_final, load_init_weights
from distinit.train.command import train
from distinit.train.config import TrainConfig
from distinit.train.loop import lr_factor
from distinit.train.students import Student
from tests.test_train_support import index_dataset

COMMON = [
    "--student", "mc3_18", "--clip-len", "4", "--frame-stride", "2", "--resize", "40x32",
    "--crop", "32", "--lr", "0.05", "--warmup-steps", "1", "--seed", "1", "--device", "cpu",
    "--batch-size", "2", "--workers", "0",
]  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return index_dataset(tmp_path_factory.mktemp("reuse"))


def _train(shards: Path, out: Path, *extra: str) -> Result:
    torch.set_num_threads(1)
    args = ["--targets", str(shards), "--out", str(out), *COMMON, *extra]
    return CliRunner().invoke(train, args)


def _log(out: Path) -> list[dict[str, float]]:
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


def test_a_finished_run_extends_to_more_steps(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = _train(dataset[1], out, "--max-steps", "2")
    assert first.exit_code == 0, first.output
    first_loss = _log(out)[0]["loss"]
    longer = _train(dataset[1], out, "--max-steps", "4")
    assert longer.exit_code == 0, longer.output
    assert "steps 2 -> 4 of 4" in longer.output
    # The whole run's first loss, not that of the segment this invocation trained.
    assert f"loss of the run: first {first_loss:.4f}" in longer.output
    log = _log(out)
    assert [e["step"] for e in log] == [1, 2, 3, 4]
    # The schedule is the 4-step one from step 2 on (before: the 2-step one, ending at 0).
    for entry in log[2:]:
        expected = 0.05 * lr_factor(entry["step"] - 1, 4, 1, "cosine")
        assert entry["lr"] == pytest.approx(expected)
    assert load_final(out / "final.pt").step == 4
    again = _train(dataset[1], out, "--max-steps", "4")  # re-running a finished run is safe
    assert again.exit_code == 0, again.output
    assert "already complete" in again.output and f"first {first_loss:.4f}" in again.output
    shorter = _train(dataset[1], out, "--max-steps", "3")
    assert isinstance(shorter.exception, CheckpointError)
    assert "already done 4 steps" in str(shorter.exception)


def test_init_from_takes_weights_not_optimizer_or_schedule(
    dataset: tuple[Path, Path], tmp_path: Path
) -> None:
    source = tmp_path / "source"
    assert _train(dataset[1], source, "--max-steps", "2").exit_code == 0
    warm = tmp_path / "warm"
    result = _train(dataset[1], warm, "--max-steps", "2", "--init-from", str(source / "final.pt"))
    assert result.exit_code == 0, result.output
    # A new schedule: the first step is the first warm-up step, not the source run's last lr.
    assert _log(warm)[0]["lr"] == pytest.approx(0.05 / 2)
    config = TrainConfig.from_json(load_final(warm / "final.pt").config)
    assert config.init_from == str(source / "final.pt")
    # The weights are the source's: the loss starts where the source run left off, not where a
    # fresh student starts.
    fresh = tmp_path / "fresh"
    assert _train(dataset[1], fresh, "--max-steps", "1").exit_code == 0
    assert _log(warm)[0]["loss"] != pytest.approx(_log(fresh)[0]["loss"])


def test_load_init_weights_keeps_fitting_heads_and_refuses_other_networks(
    dataset: tuple[Path, Path], tmp_path: Path
) -> None:
    source = tmp_path / "source"
    assert _train(dataset[1], source, "--max-steps", "1").exit_code == 0
    saved = load_final(source / "final.pt").state_dict
    torch.manual_seed(5)
    student = Student("mc3_18", {"objects": 10, "places": 3})  # one head fits, one does not
    fresh_places = student.heads["places"].weight.clone()
    assert load_init_weights(student, source / "final.pt") == ["objects"]
    own = student.state_dict()
    assert all(torch.equal(own[k], saved[k]) for k in saved if not k.startswith("heads.scenes"))
    assert torch.equal(student.heads["places"].weight, fresh_places)
    with pytest.raises(CheckpointError, match="same --student and --modality"):
        load_init_weights(Student("r3d_18", {"objects": 10}), source / "final.pt")


def test_videos_as_targets_says_extract_comes_first(dataset: tuple[Path, Path]) -> None:
    videos, _ = dataset
    result = _train(videos, videos.parent / "run_e", "--max-steps", "1")
    assert isinstance(result.exception, ConfigError)
    assert "distinit extract --videos" in str(result.exception)
    assert "training" not in result.output  # nothing announced before the inputs are checked
    assert not (videos.parent / "run_e").exists()


def test_loss_curve_smoothing_is_a_trailing_mean() -> None:
    from distinit.train.runlog import smooth, smoothing_window

    assert smooth([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    assert smoothing_window(10) == 1 and smoothing_window(400) == 20
