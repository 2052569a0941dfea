"""``--tensorboard``: train's log.jsonl entries and eval's per-split accuracies as TensorBoard
scalars, read back with TensorBoard's own reader; refused in one line without the package."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from distinit.eval.command import eval_command
from distinit.pipeline.cli import main
from distinit.train.command import train
from distinit.train.runlog import RunLog
from tests.eval_support import TINY, make_eval_data
from tests.test_train_run import COMMON


def _scalars(directory: Path) -> dict[str, dict[int, float]]:
    """Every scalar tag in ``directory``'s event files -> {step: value}, as TensorBoard shows it
    (events an interrupted invocation wrote past a resumed run's restart are purged)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def test_train_writes_every_logged_number_as_a_scalar(
    index_data: tuple[Path, Path], tmp_path: Path
) -> None:
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    args = ["--targets", str(index_data[1]), "--out", str(out), *COMMON, "--batch-size", "2"]
    args += ["--max-steps", "3", "--workers", "0", "--tensorboard"]
    result = CliRunner().invoke(train, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    logged = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    scalars = _scalars(out)
    for tag in ("loss", "loss_per_teacher/objects", "loss_per_teacher/scenes", "lr"):
        assert tag in scalars, sorted(scalars)
    for tag in ("clips_per_s", "data_s", "compute_s"):
        assert tag in scalars, sorted(scalars)
    for entry in logged:
        step = entry["step"]
        assert scalars["loss"][step] == pytest.approx(entry["loss"], rel=1e-6)
        assert scalars["lr"][step] == pytest.approx(entry["lr"], rel=1e-6)
        per = entry["loss_per_teacher"]["scenes"]
        assert scalars["loss_per_teacher/scenes"][step] == pytest.approx(per, rel=1e-6)
        assert scalars["data_s"][step] == pytest.approx(entry["data_s"], rel=1e-6)
    assert sorted(scalars["loss"]) == [1, 2, 3]


def test_a_resumed_log_hides_the_steps_it_repeats(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    first = RunLog(tmp_path / "log.jsonl", tensorboard=True)
    for step in (1, 2, 3):  # killed after step 3, with last.pt saved at step 2
        first.write({"step": step, "loss": float(step)})
    first.close()
    resumed = RunLog(tmp_path / "log.jsonl", tensorboard=True, keep_until_step=2)
    for step in (3, 4):
        resumed.write({"step": step, "loss": 10.0 * step})
    resumed.close()
    assert _scalars(tmp_path)["loss"] == {1: 1.0, 2: 2.0, 3: 30.0, 4: 40.0}


def test_eval_writes_each_splits_accuracies(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    data = make_eval_data(tmp_path / "data", seed=1)
    out = tmp_path / "out"
    args = ["--dataset", str(data["manifest"]), "--root", str(data["root"])]
    args += ["--splits", str(data["root"] / "splits"), "--mode", "linear", "--epochs", "20"]
    args += ["--checkpoint", str(data["checkpoint"]), "--out", str(out), "--tensorboard", *TINY]
    result = CliRunner().invoke(eval_command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    scalars = _scalars(out)
    for metric in ("clip_top1", "clip_top5", "video_top1", "video_top5"):
        assert scalars[f"accuracy/{metric}"] == {1: pytest.approx(results[metric], rel=1e-6)}


def test_tensorboard_asked_without_the_package_is_one_line(
    index_data: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "tensorboard" else real(name, *a),
    )
    commands = {
        "train": ["--targets", str(index_data[1]), *COMMON, "--max-steps", "1"],
        "eval": ["--dataset", "hmdb51", "--root", str(tmp_path), "--init", "scratch"],
    }
    for command, extra in commands.items():
        out = tmp_path / command
        argv = ["distinit", command, *extra, "--out", str(out), "--tensorboard"]
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as exit_info:
            main()
        assert exit_info.value.code == 2, command
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("Error")]
        assert len(errors) == 1 and "pip install 'distinit[tensorboard]'" in errors[0], err
        assert not out.exists(), command  # refused before the run began
