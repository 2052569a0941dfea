"""Eval as a job and against its own leftovers: srun ranks split the test set, caches follow the
checkpoint's content, untrusted files give one-line errors, the backbone is the checkpoint's."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from distinit.eval.command import eval_command
from distinit.eval.config import EvalConfig
from distinit.eval.initialise import build_student
from distinit.eval.metrics import load_video_probs
from distinit.pipeline.cli import main
from distinit.train.checkpoint import load_final
from tests.eval_support import STUDENT, TINY, make_eval_data
from tests.test_train_launch import run_as_slurm_tasks

METRICS = ("clip_top1", "clip_top5", "video_top1", "video_top5", "num_test_videos")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_eval_data(tmp_path_factory.mktemp("evalrt"), seed=1)


def _args(data: dict[str, Path], out: Path, checkpoint: Path, mode: str) -> list[str]:
    args = ["--dataset", str(data["manifest"]), "--root", str(data["root"])]
    args += ["--splits", str(data["root"] / "splits"), "--mode", mode, "--out", str(out)]
    args += ["--checkpoint", str(checkpoint), *TINY]
    return args + (["--epochs", "1", "--lr", "0.005"] if mode == "finetune" else ["--epochs", "20"])


def _eval(args: list[str]) -> dict[str, object]:
    result = CliRunner().invoke(eval_command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = Path(args[args.index("--out") + 1])
    results: dict[str, object] = json.loads((out / "results.json").read_text())
    return results


def _log_probs(out: Path) -> np.ndarray:
    """Video log-probabilities: a tiny probe separates the classes, so the probabilities
    themselves saturate to 0 and 1 whichever weights made them."""
    probs = load_video_probs(out / "split1" / "video_probs.npz").probs
    return np.log(np.maximum(probs.astype(np.float64), 1e-300))


def test_two_srun_ranks_split_the_test_set_and_match_one(
    data: dict[str, Path], tmp_path: Path
) -> None:
    # lr far below rounding: fine-tuning draws clips differently on 2 ranks, but both runs test
    # the same weights, so any difference would come from splitting and gathering the test set.
    tiny_lr = ["--epochs", "1", "--lr", "1e-12"]
    one = _eval(_args(data, tmp_path / "one", data["checkpoint"], "finetune") + tiny_lr)
    argv = [sys.executable, "-m", "distinit.pipeline.cli", "eval"]
    argv += _args(data, tmp_path / "two", data["checkpoint"], "finetune") + tiny_lr
    tasks = run_as_slurm_tasks(argv, 2)
    assert sum("video top-1" in t.stdout for t in tasks) == 1  # rank 0 alone reports
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert {m: two[m] for m in METRICS} == {m: one[m] for m in METRICS}
    assert one["per_split"][0]["test_videos_per_rank"] == [6]  # type: ignore[index]
    assert two["per_split"][0]["test_videos_per_rank"] == [3, 3]
    a = load_video_probs(tmp_path / "one" / "split1" / "video_probs.npz")
    b = load_video_probs(tmp_path / "two" / "split1" / "video_probs.npz")
    assert a.ids == b.ids and np.array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.probs, b.probs, atol=1e-4)


@pytest.mark.parametrize("mode", ["linear", "finetune"])
def test_a_checkpoint_replaced_in_place_gives_new_results(
    mode: str, data: dict[str, Path], tmp_path: Path
) -> None:
    checkpoint = tmp_path / "run" / "final.pt"
    checkpoint.parent.mkdir()
    shutil.copy(data["checkpoint"], checkpoint)
    out = tmp_path / "out"
    _eval(_args(data, out, checkpoint, mode))
    old = _log_probs(out)
    # Retrain into the same run directory: other weights at the same path.
    other = make_eval_data(tmp_path / "other", seed=2)["checkpoint"]
    shutil.copy(other, checkpoint)
    _eval(_args(data, out, checkpoint, mode))
    fresh = tmp_path / "fresh"
    _eval(_args(data, fresh, other, mode))
    assert not np.allclose(_log_probs(out), old, rtol=1e-2), "the old weights' results came back"
    np.testing.assert_allclose(_log_probs(out), _log_probs(fresh), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
    ("mode", "name"), [("linear", "features.pt"), ("finetune", "split1/finetune.pt")]
)
@pytest.mark.parametrize("content", ["garbage", "tensor"])
def test_corrupt_cache_or_state_is_a_one_line_error(
    mode: str,
    name: str,
    content: str,
    data: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    bad = out / name
    bad.parent.mkdir(parents=True)
    if content == "garbage":
        bad.write_bytes(b"not a torch file at all")
    else:
        torch.save(torch.zeros(3), bad)  # loads safely, but is no cache/state
    argv = ["distinit", "eval", *_args(data, out, data["checkpoint"], mode)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and str(bad) in errors[0], err


def test_evaluated_backbone_is_the_checkpoints_and_not_scratch(
    data: dict[str, Path], tmp_path: Path
) -> None:
    base = {"dataset": str(data["manifest"]), "root": data["root"], "out": tmp_path}
    distilled = load_final(data["checkpoint"]).state_dict
    cfg = EvalConfig(**base, checkpoint=data["checkpoint"])  # type: ignore[arg-type]
    student, info = build_student(cfg, 3)
    scratch, _ = build_student(EvalConfig(**base, init="scratch", student=STUDENT), 3)  # type: ignore[arg-type]
    backbone = student.backbone.state_dict()
    assert backbone, "no backbone weights"
    for key, value in backbone.items():
        assert torch.equal(value, distilled[f"backbone.{key}"]), key
    weights = [k for k, v in backbone.items() if v.is_floating_point() and v.dim() > 1]
    differing = [
        k for k in weights if not torch.equal(backbone[k], scratch.backbone.state_dict()[k])
    ]
    assert differing == weights
    assert info["checkpoint_sha256"] == hashlib.sha256(data["checkpoint"].read_bytes()).hexdigest()
