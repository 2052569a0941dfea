"""`distinit eval` end to end on a generated dataset in the HMDB51 layout, on CPU, every init."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from distinit.eval.command import eval_command
from distinit.pipeline.cli import main
from tests.eval_support import STUDENT, TINY, make_eval_data

FIELDS = (
    "dataset", "split", "init", "mode", "clip_top1", "clip_top5", "video_top1", "video_top5",
    "num_test_videos", "clips_per_video",
)  # fmt: skip
CHANCE = 1 / 3


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_eval_data(tmp_path_factory.mktemp("evaldata"), seed=1)


def _init_args(init: str, data: dict[str, Path]) -> list[str]:
    if init == "checkpoint":
        return ["--checkpoint", str(data["checkpoint"])]
    args = ["--init", init, "--student", STUDENT]
    return args + (["--inflate-weights", str(data["weights"])] if init == "inflated" else [])


def _run(args: list[str]) -> str:
    result = CliRunner().invoke(eval_command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _check_results(out: Path, init: str, mode: str) -> dict[str, object]:
    results = json.loads((out / "results.json").read_text())
    assert all(field in results for field in FIELDS)
    assert results["init"] == init and results["mode"] == mode and results["student"] == STUDENT
    assert results["num_test_videos"] == 6 and results["clips_per_video"] == 2
    protocol = results["protocol"]
    for key in ("clip_len", "clips_per_video", "crops_per_clip", "epochs", "lr", "batch_size"):
        assert key in protocol
    assert "short_video_rule" in protocol and results["allow_partial"] is False
    assert (out / "results.md").is_file() and (out / "confusion_split1.png").stat().st_size > 1000
    return results


@pytest.mark.parametrize("init", ["scratch", "inflated", "checkpoint"])
def test_linear_probe_each_init(init: str, data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / init
    args = ["--dataset", str(data["manifest"]), "--root", str(data["root"])]
    args += ["--splits", str(data["root"] / "splits"), "--mode", "linear", "--out", str(out)]
    output = _run(args + _init_args(init, data) + TINY)
    results = _check_results(out, init, "linear")
    assert results["video_top1"] > CHANCE + 0.3, output
    assert (out / "features.pt").is_file()
    assert "full batch" in (out / "results.md").read_text()  # the probe has no batch size
    if init == "checkpoint":
        assert results["checkpoint"] == str(data["checkpoint"])
    if init == "inflated":
        assert "sha256" in results["init_details"]["inflated_from"]


@pytest.mark.parametrize("init", ["scratch", "inflated", "checkpoint"])
def test_short_finetune_each_init(init: str, data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / init
    args = ["--dataset", str(data["manifest"]), "--root", str(data["root"])]
    args += ["--splits", str(data["root"] / "splits"), "--mode", "finetune", "--out", str(out)]
    args += ["--epochs", "3", "--lr", "0.005"] + _init_args(init, data) + TINY
    drop = init == "inflated"  # one init drops its fine-tuning state once its results exist
    output = _run(args + (["--drop-resume-state"] if drop else []))
    assert (out / "split1" / "finetune.pt").exists() != drop
    assert "epoch 3/3" in output and "ETA" in output
    # The passes after the last epoch say where they are too.
    assert "precise BN: training clips 12/12" in output and "testing: videos 6/6" in output
    results = _check_results(out, init, "finetune")
    assert results["video_top1"] > CHANCE + 0.3, output
    assert results["protocol"]["epochs"] == 3 and results["protocol"]["lr"] == 0.005
    if init == "scratch":
        # Running it again resumes from the saved state instead of training again.
        again = _run(args)
        assert "resuming fine-tuning" in again and "epoch 1/3" not in again
        assert json.loads((out / "results.json").read_text())["video_top1"] == results["video_top1"]
        # The saved state belongs to these settings: other settings are refused.
        changed = CliRunner().invoke(eval_command, [*args, "--lr", "0.01"])
        assert changed.exit_code != 0 and "other settings" in str(changed.exception)


def test_split_all_and_partial_and_compare(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "all"
    args = ["--dataset", "hmdb51", "--allow-partial", "--root", str(data["root"])]
    args += ["--splits", str(data["root"] / "splits"), "--mode", "linear", "--split", "all"]
    _run(args + ["--out", str(out), "--init", "scratch", "--student", STUDENT] + TINY)
    results = json.loads((out / "results.json").read_text())
    assert results["split"] == "all" and [s["split"] for s in results["per_split"]] == [1, 2, 3]
    mean = sum(s["video_top1"] for s in results["per_split"]) / 3
    assert results["video_top1"] == pytest.approx(mean)
    assert results["allow_partial"] is True
    assert any("48 of 51" in note for note in results["partial_notes"])
    assert "| mean |" in (out / "results.md").read_text()

    other = tmp_path / "other"
    _run(args[:-2] + ["--split", "1", "--out", str(other), "--init", "scratch", "--clip-len", "2"]
         + TINY[2:] + ["--student", STUDENT])  # fmt: skip
    table = _run(["--compare", str(out), str(other)])
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert len(lines) == 4 and str(out) in lines[2] and "1,2,3" in lines[2]
    assert "protocol clip_len differs" in table


def test_cli_errors_are_one_line(
    data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    base = ["distinit", "eval", "--dataset", "hmdb51", "--root", str(data["root"])]
    base += ["--splits", str(data["root"] / "splits"), "--out", str(tmp_path / "o")]
    cases = {
        "split files missing": ["--init", "scratch"],  # the full HMDB51 manifest, 3 classes here
        "no such weights file": ["--init", "inflated", "--inflate-weights", str(tmp_path / "no")],
        "no such checkpoint": ["--checkpoint", str(tmp_path / "final.pt")],
        "either --checkpoint": [],
        "unknown dataset 'hmdb52'": ["--init", "scratch", "--dataset", "hmdb52"],
    }
    for expected, extra in cases.items():
        monkeypatch.setattr(sys, "argv", base + extra)
        with pytest.raises(SystemExit) as exit_info:
            main()
        assert exit_info.value.code == 2, expected
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("Error")]
        assert len(errors) == 1 and expected in errors[0], err
        assert "Traceback" not in err


@pytest.mark.slow
def test_finetune_under_torchrun_two_cpu_ranks(data: dict[str, Path], tmp_path: Path) -> None:
    """DDP on CPU (gloo): both ranks train, rank 0 alone evaluates and writes the results."""
    import subprocess

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "distinit.pipeline.cli", "eval", "--dataset", str(data["manifest"])]
    cmd += ["--root", str(data["root"]), "--splits", str(data["root"] / "splits")]
    cmd += ["--init", "scratch", "--student", STUDENT, "--epochs", "3", "--lr", "0.005"]
    cmd += ["--out", str(out), *TINY]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("epoch 3/3") == 1  # one report, from rank 0
    results = _check_results(out, "scratch", "finetune")
    assert results["video_top1"] > CHANCE + 0.3
