"""`distinit eval` of optical-flow students: a flow checkpoint end to end (linear probe and a
short fine-tune), the inflated flow initialisation, refused contradictions, and the RGB + flow
late fusion of `--compare`, on the generated three-class HMDB51-layout dataset, on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from distinit.eval.command import eval_command
from distinit.eval.config import EvalConfig
from distinit.eval.datasets import ClipProtocol, EvalClips, TrainClips
from distinit.eval.inflate import flow_init_from_rgb, inflate_into, load_resnet18_weights
from distinit.eval.initialise import HEAD, build_student
from distinit.eval.metrics import load_video_probs
from distinit.eval.splits import VideoItem
from distinit.pipeline.errors import ConfigError
from distinit.train.students import Student, first_conv
from tests.eval_support import STUDENT, TINY, make_eval_data

RESIZE = (40, 32)  # the checkpoint's training resize: flow is in pixels per frame at this size


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    config = {"resize": list(RESIZE), "frame_stride": 1, "modality": "flow"}
    return make_eval_data(
        tmp_path_factory.mktemp("evalflow"), seed=2, modality="flow", config=config
    )


def _base(data: dict[str, Path], out: Path, mode: str) -> list[str]:
    args = ["--dataset", str(data["manifest"]), "--root", str(data["root"])]
    return args + ["--splits", str(data["root"] / "splits"), "--mode", mode, "--out", str(out)]


def _run(args: list[str]) -> str:
    result = CliRunner().invoke(eval_command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def flow_linear(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("flow_linear")
    _run(_base(data, out, "linear") + ["--checkpoint", str(data["checkpoint"])] + TINY)
    return out


def test_flow_clips_are_train_clip_input(data: dict[str, Path]) -> None:
    """Eval's flow clips have the student's flow shape and range, and match RGB's sampling."""
    video = sorted((data["root"] / "brush_hair").glob("*.avi"))[0]
    items = [VideoItem(rel=f"brush_hair/{video.name}", path=video, label=0)]
    flow = ClipProtocol(4, 2, RESIZE, 32, "flow")
    clips, _, _ = EvalClips(items, flow)[0]
    assert clips.shape == (2, 4, 32, 32, 2) and clips.dtype == torch.float32
    assert float(clips.abs().max()) <= 1.0
    train_clip, _ = TrainClips(items, flow, seed=3)[0]
    assert train_clip.shape == (4, 32, 32, 2) and train_clip.dtype == torch.float32
    rgb_clip, _ = TrainClips(items, ClipProtocol(4, 2, RESIZE, 32, "rgb"), seed=3)[0]
    assert rgb_clip.shape == (4, 32, 32, 3) and rgb_clip.dtype == torch.uint8
    with pytest.raises(ValueError, match="clip_len >= 2"):
        ClipProtocol(1, 2, RESIZE, 32, "flow")


def test_flow_checkpoint_linear_probe(flow_linear: Path, data: dict[str, Path]) -> None:
    results = json.loads((flow_linear / "results.json").read_text())
    assert results["modality"] == "flow" and results["init"] == "checkpoint"
    assert results["init_details"]["modality"] == "flow"
    assert "flow" in results["protocol"]["input"] and results["num_test_videos"] == 6
    assert "modality flow" in (flow_linear / "results.md").read_text()
    probs = load_video_probs(flow_linear / "split1" / "video_probs.npz")
    assert probs.probs.shape == (6, 3) and np.allclose(probs.probs.sum(axis=1), 1, atol=1e-5)
    video_top1 = float((probs.probs.argmax(axis=1) == probs.labels).mean())
    assert video_top1 == pytest.approx(results["video_top1"])


def test_flow_checkpoint_short_finetune(data: dict[str, Path], tmp_path: Path) -> None:
    args = _base(data, tmp_path / "ft", "finetune") + ["--checkpoint", str(data["checkpoint"])]
    # One worker process: OpenCV already ran multi-threaded in this process (earlier tests),
    # the case where a forked worker computing flow hangs unless prepare_workers ran first.
    tiny = [*TINY[:-4], "--workers", "1", *TINY[-2:]]
    output = _run(args + ["--epochs", "1", "--lr", "0.005", "--no-precise-bn"] + tiny)
    assert "epoch 1/1" in output and "flow" in output
    results = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert results["modality"] == "flow" and results["protocol"]["epochs"] == 1


def test_inflated_flow_first_conv_is_colour_average(data: dict[str, Path], tmp_path: Path) -> None:
    common = {"dataset": "x", "root": tmp_path, "out": tmp_path, "init": "inflated"}
    cfg = EvalConfig(**common, student=STUDENT, inflate_weights=data["weights"], modality="flow")
    flow, info = build_student(cfg, 3)
    assert info["modality"] == "flow"
    assert info["first_conv"] == "inflated, colour-averaged first conv"
    rgb = Student(STUDENT, {HEAD: 3})
    inflate_into(rgb.backbone, load_resnet18_weights(data["weights"])[0])
    rgb_w = first_conv(rgb.backbone)[2].weight
    flow_w = first_conv(flow.backbone)[2].weight
    assert flow_w.shape[1] == 2 and flow.in_channels == 2
    assert torch.equal(flow_w, flow_init_from_rgb(rgb_w))
    # Every other backbone tensor is the inflated RGB one.
    rgb_state, flow_state = rgb.backbone.state_dict(), flow.backbone.state_dict()
    different = [
        k
        for k in rgb_state
        if rgb_state[k].shape != flow_state[k].shape or not torch.equal(rgb_state[k], flow_state[k])
    ]
    assert different == ["stem.0.weight"]
    scratch, _ = build_student(
        EvalConfig(dataset="x", root=tmp_path, out=tmp_path, init="scratch", modality="flow"), 3
    )
    assert first_conv(scratch.backbone)[2].in_channels == 2


def test_contradictions_are_refused(data: dict[str, Path], tmp_path: Path) -> None:
    base = _base(data, tmp_path / "o", "linear") + ["--checkpoint", str(data["checkpoint"])]
    cases = {
        "contradicts": ["--modality", "rgb", *TINY],
        "pass --resize 40x32": [*TINY[:4], "--resize", "48x32", "--crop", "32", "--workers", "0"],
        "clip-len >= 2": ["--clip-len", "1", *TINY[2:]],
    }
    for expected, extra in cases.items():
        result = CliRunner().invoke(eval_command, base + extra)
        assert result.exit_code != 0, expected
        assert isinstance(result.exception, ConfigError), (expected, result.exception)
        assert expected in str(result.exception)
    assert not (tmp_path / "o" / "results.json").exists()


def test_compare_fuses_rgb_and_flow(
    flow_linear: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    rgb_out = tmp_path / "rgb"
    _run(_base(data, rgb_out, "linear") + ["--init", "scratch", "--student", STUDENT] + TINY)
    table = _run(["--compare", str(rgb_out), str(flow_linear)])
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    modality = [c.strip() for c in rows[0].split("|")].index("modality")
    assert rows[1].split("|")[modality].strip() == "rgb"
    assert rows[2].split("|")[modality].strip() == "flow"
    assert "Late fusion" in table
    fused_row = next(r for r in rows if r.startswith("| 1 |"))
    rgb_acc, flow_acc, fused_acc = (float(c) for c in fused_row.split("|")[2:5])

    rgb = load_video_probs(rgb_out / "split1" / "video_probs.npz")
    flow = load_video_probs(flow_linear / "split1" / "video_probs.npz")
    assert rgb.ids == flow.ids
    expected = ((rgb.probs + flow.probs) / 2).argmax(axis=1) == rgb.labels
    assert fused_acc == pytest.approx(round(100 * float(expected.mean()), 1))
    rgb_results = json.loads((rgb_out / "results.json").read_text())
    assert rgb_acc == pytest.approx(round(100 * rgb_results["video_top1"], 1))
    flow_results = json.loads((flow_linear / "results.json").read_text())
    assert flow_acc == pytest.approx(round(100 * flow_results["video_top1"], 1))
