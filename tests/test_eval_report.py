"""Metrics by hand, clip sampling rules, config validation, reports and --compare."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from distinit.eval.config import EvalConfig
from distinit.eval.metrics import save_video_probs, score_clips, topk_accuracy
from distinit.eval.report import compare_table, load_results
from distinit.pipeline.clip_rules import uniform_starts, window_rows
from distinit.pipeline.errors import ConfigError, DatasetError


def test_topk_by_hand() -> None:
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    labels = torch.tensor([2, 0, 0])
    assert topk_accuracy(scores, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(scores, labels, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(scores, labels, 5) == 1.0  # k capped at the number of classes


def test_video_score_averages_softmax_over_clips() -> None:
    # Video 0: one confident wrong clip, two mildly right clips -> softmax mean picks class 0.
    logits = torch.tensor(
        [
            [[0.0, 3.0], [1.0, 0.0], [1.0, 0.0]],
            [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]],
        ]
    )
    labels = torch.tensor([0, 1])
    scores = score_clips(logits, labels)
    assert scores.clip_top1 == pytest.approx(5 / 6)
    probs = logits.softmax(2).mean(1)
    expected = float((probs.argmax(1) == labels).float().mean())
    assert scores.video_top1 == pytest.approx(expected)
    assert scores.num_test_videos == 2 and scores.num_test_clips == 6
    assert scores.confusion.sum() == 2


def test_clip_rules() -> None:
    frames = np.arange(5)[:, None, None, None] * np.ones((1, 2, 2, 3), dtype=np.uint8)
    looped = frames[window_rows(len(frames), 8, 1, 0)]  # short video: loop
    assert [int(f[0, 0, 0]) for f in looped] == [0, 1, 2, 3, 4, 0, 1, 2]
    assert uniform_starts(100, 16, 1, 3).tolist() == [0, 42, 84]
    assert uniform_starts(10, 16, 1, 3).tolist() == [0, 0, 0]
    assert uniform_starts(100, 16, 2, 2).tolist() == [0, 69]  # a stride-2 window spans 31 rows


def test_config_validation(tmp_path: Path) -> None:
    base = {"dataset": "hmdb51", "root": tmp_path, "out": tmp_path / "o"}
    with pytest.raises(ConfigError, match="either --checkpoint"):
        EvalConfig(**base, init="checkpoint")
    with pytest.raises(ConfigError, match="ResNet-18 layers"):
        EvalConfig(**base, init="inflated", student="s3d")
    with pytest.raises(ConfigError, match="--crop"):
        EvalConfig(**base, init="scratch", crop=200)
    cfg = EvalConfig(**base, init="scratch", split="all", mode="linear")
    assert cfg.splits == [1, 2, 3] and cfg.effective_epochs == 300


def _fake(
    out: Path, init: str, top1: float, clip_len: int = 16, classes: int = 51, root: str = "HMDB51",
    test_videos: int = 1530,
) -> Path:  # fmt: skip
    out.mkdir()
    (out / "results.json").write_text(
        json.dumps(
            {
                "dataset": "hmdb51", "init": init, "mode": "finetune", "student": "r3d_18",
                "modality": "rgb", "clip_top1": top1, "clip_top5": 0.9, "video_top1": top1 + 0.05,
                "video_top5": 0.95, "per_split": [{"split": 1}],
                "protocol": {"clip_len": clip_len, "clips_per_video": 10},
                "allow_partial": False, "classes": [f"c{i}" for i in range(classes)],
                "num_test_videos": test_videos, "config": {"root": root},
            }
        )
    )  # fmt: skip
    return out


def test_compare_table(tmp_path: Path) -> None:
    runs = [
        _fake(tmp_path / "scratch", "scratch", 0.254),
        _fake(tmp_path / "inflated", "inflated", 0.358),
        _fake(tmp_path / "distinit", "checkpoint", 0.40),
    ]
    table = compare_table(runs)
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
    assert [r.split("|")[7].strip() for r in rows] == ["scratch", "inflated", "checkpoint"]
    assert [r.split("|")[3:6] for r in rows] == [[" HMDB51 ", " 51 ", " 1530 "]] * 3
    assert "25.4" in rows[0] and "40.0" in rows[2] and "Note" not in table
    odd = _fake(tmp_path / "odd", "scratch", 0.3, clip_len=8)
    assert "protocol clip_len differs" in compare_table([*runs, odd])
    with pytest.raises(DatasetError, match="no results.json"):
        load_results(tmp_path / "missing")


def _probs_run(out: Path, modality: str, ids: list[str], probs: list[list[float]]) -> Path:
    """A results.json and split1/video_probs.npz as one eval run writes them."""
    labels = {"a.avi": 0, "b.avi": 1, "c.avi": 0, "d.avi": 1}
    save_video_probs(
        out / "split1", ids=ids, labels=torch.tensor([labels[v] for v in ids]),
        probs=torch.tensor(probs), classes=["x", "y"],
    )  # fmt: skip
    correct = [p.index(max(p)) == labels[v] for v, p in zip(ids, probs, strict=True)]
    top1 = sum(correct) / len(ids)
    (out / "results.json").write_text(
        json.dumps(
            {
                "dataset": "hmdb51", "init": "checkpoint", "mode": "finetune", "modality": modality,
                "student": "r3d_18", "clip_top1": top1, "clip_top5": 1.0, "video_top1": top1,
                "video_top5": 1.0,
                "per_split": [
                    {"split": 1, "video_top1": top1, "video_probs": "split1/video_probs.npz"}
                ],
                "protocol": {"clip_len": 16, "clips_per_video": 10}, "allow_partial": False,
            }
        )
    )  # fmt: skip
    return out


def test_late_fusion_pairs_videos_by_id_not_by_position(tmp_path: Path) -> None:
    """The flow run lists its test videos in another order than the RGB run: fusion must pair
    each video's two softmaxes by its id. By id: RGB 50%, flow 100%, fused 100%; paired by
    position the flow and fused columns would read 0% and 50%."""
    rgb = _probs_run(
        tmp_path / "rgb", "rgb", ["a.avi", "b.avi", "c.avi", "d.avi"],
        [[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]],
    )  # fmt: skip
    # The same videos in reverse order; by id, flow is sure where RGB is wrong.
    flow = _probs_run(
        tmp_path / "flow", "flow", ["d.avi", "c.avi", "b.avi", "a.avi"],
        [[0.45, 0.55], [0.9, 0.1], [0.05, 0.95], [0.55, 0.45]],
    )  # fmt: skip
    table = compare_table([rgb, flow])
    fused = next(line for line in table.splitlines() if line.startswith("| 1 |"))
    rgb_acc, flow_acc, fused_acc = (float(c) for c in fused.split("|")[2:5])
    assert (rgb_acc, flow_acc, fused_acc) == (50.0, 100.0, 100.0), fused


def test_compare_notes_runs_on_other_data_and_top5_of_few_classes_is_trivial(
    tmp_path: Path,
) -> None:
    two = _fake(tmp_path / "two", "scratch", 0.5, classes=2, root="mini", test_videos=4)
    six = _fake(tmp_path / "six", "scratch", 0.3, classes=6, root="mini", test_videos=12)
    table = compare_table([two, six])
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
    assert rows[0].rstrip(" |").endswith("trivial (2 classes)")
    assert rows[1].rstrip(" |").endswith("95.0")
    assert "Note: number of classes differs between runs: ['2', '6']" in table
    assert "Note: number of test videos differs between runs: ['12', '4']" in table
    assert "dataset root differs" not in table
