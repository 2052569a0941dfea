"""A checkpoint carries its input recipe, and eval feeds the student what it was distilled on:
train records it in final.pt; eval takes it by default, says and records what a flag changes,
refuses what cannot change, states what it assumes of an older checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from distinit.eval.config import BASELINE_INPUT, EvalConfig
from distinit.eval.datasets import ClipProtocol, EvalClips, TrainClips
from distinit.eval.recipe import resolve_input
from distinit.eval.splits import VideoItem
from distinit.pipeline.errors import CheckpointError, ConfigError
from distinit.pipeline.shards import ShardSet
from distinit.train.checkpoint import InputRecipe, load_final
from distinit.train.command import train
from distinit.train.resume import shard_set_fingerprint
from distinit.train.students import KINETICS_MEAN, KINETICS_STD
from tests.eval_support import STUDENT, make_eval_data
from tests.videogen import read_index

RECIPE = InputRecipe(
    modality="rgb", clip_len=4, frame_stride=2, resize=(40, 32), crop=32,
    mean=KINETICS_MEAN, std=KINETICS_STD, shard_fps=None,
)  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_eval_data(tmp_path_factory.mktemp("evalrecipe"), seed=4, recipe=RECIPE)


def test_final_pt_records_the_input_recipe_and_the_shard_set(
    index_data: tuple[Path, Path], tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "run"
    args = [
        "--targets", str(index_data[1]), "--out", str(out), "--student", STUDENT,
        "--clip-len", "4", "--frame-stride", "2", "--resize", "40x32", "--crop", "32",
        "--device", "cpu", "--batch-size", "2", "--workers", "0", "--max-steps", "1",
    ]  # fmt: skip
    result = CliRunner().invoke(train, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    ckpt = load_final(out / "final.pt")
    assert ckpt.recipe == RECIPE  # the index shards hold every native frame: no --fps
    assert ckpt.recipe.native_frame_step == 2
    assert ckpt.shard_set == shard_set_fingerprint(ShardSet(index_data[1]))


def test_eval_takes_the_checkpoints_recipe_and_says_what_a_flag_changes(
    data: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    args = [
        "eval", "--dataset", str(data["manifest"]), "--root", str(data["root"]), "--splits",
        str(data["root"] / "splits"), "--mode", "linear", "--out", str(out), "--checkpoint",
        str(data["checkpoint"]), "--clip-len", "6", "--clips-per-video", "2", "--workers", "0",
        "--batch-size", "4", "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "distinit.pipeline.cli", *args],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if "recipe" in line]
    assert notes == [
        f"WARNING: eval input differs from {data['checkpoint']}'s recipe: --clip-len 6 (its own: 4)"
    ], proc.stderr
    protocol = json.loads((out / "results.json").read_text())["protocol"]
    # Taken from the checkpoint: frame step, resize, crop; the flag's clip length.
    assert (protocol["clip_len"], protocol["frame_step"]) == (6, 2)
    assert (protocol["resize"], protocol["crop"]) == ([40, 32], 32)
    recipe = protocol["input_recipe"]
    assert recipe["source"] == "checkpoint"
    assert recipe["checkpoint"] == {"clip_len": 4, "frame_step": 2, "resize": [40, 32], "crop": 32}
    assert recipe["overridden"] == {"clip_len": {"used": 6, "checkpoint": 4}}


def _cfg(data: dict[str, Path], **flags: object) -> EvalConfig:
    return EvalConfig(
        dataset="x", root=data["root"], out=data["root"], checkpoint=data["checkpoint"], **flags
    )  # type: ignore[arg-type]


def test_what_the_weights_cannot_take_differently_is_refused(data: dict[str, Path]) -> None:
    ckpt = load_final(data["checkpoint"])
    with pytest.raises(ConfigError, match="--modality flow contradicts"):
        resolve_input(_cfg(data, modality="flow"), ckpt)
    other = replace(ckpt, recipe=replace(RECIPE, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
    with pytest.raises(CheckpointError, match="distilled on RGB normalised by mean"):
        resolve_input(_cfg(data), other)
    flow = replace(
        ckpt, modality="flow", in_channels=2, recipe=replace(RECIPE, modality="flow", mean=None,
                                                                std=None),
    )  # fmt: skip
    assert resolve_input(_cfg(data), flow).frame_step == 2  # its own spacing, by default
    with pytest.raises(ConfigError, match="flow between frames 2 apart; pass --frame-step 2"):
        resolve_input(_cfg(data, frame_step=1), flow)
    sampled = replace(flow, recipe=replace(flow.recipe, shard_fps=5.0))
    with pytest.raises(ConfigError, match="shards sampled at --fps"):
        resolve_input(_cfg(data), sampled)


def test_a_checkpoint_of_fps_shards_says_its_frame_step_is_eval_s(data: dict[str, Path]) -> None:
    ckpt = load_final(data["checkpoint"])
    sampled = replace(ckpt, recipe=replace(RECIPE, shard_fps=5.0))
    resolved = resolve_input(_cfg(data), sampled)
    assert resolved.frame_step == 1 and resolved.clip_len == 4
    (note,) = resolved.notes
    assert "2 shard row(s) apart, in shards sampled at 5 fps" in note and "\n" not in note


def test_an_older_checkpoint_says_what_is_assumed_and_baselines_keep_evals_defaults(
    data: dict[str, Path],
) -> None:
    old = replace(load_final(data["checkpoint"]), recipe=None, config={"clip_len": 8})
    resolved = resolve_input(_cfg(data), old)
    assert resolved.values() == {**BASELINE_INPUT, "clip_len": 8}
    (note,) = resolved.notes
    assert "records no input recipe" in note and "clips of 8 frames" in note
    assert resolved.record["source"] == "assumed"
    scratch = EvalConfig(dataset="x", root=data["root"], out=data["root"], init="scratch")
    baseline = resolve_input(scratch, None)
    assert baseline.values() == BASELINE_INPUT and not baseline.notes


def test_eval_clips_take_frames_frame_step_apart(index_video: Path) -> None:
    item = VideoItem(rel="index.mp4", path=index_video, label=0)  # 60 frames, frame i shows i
    protocol = ClipProtocol(4, 2, (64, 64), 64, "rgb", frame_step=3)
    clips, _, _ = EvalClips([item], protocol)[0]  # (K, T, H, W, 3)
    shown = [[read_index(f) for f in clip.numpy()] for clip in clips]
    assert shown == [[0, 3, 6, 9], [50, 53, 56, 59]]  # the last start whose 10-frame span fits
    train_clip = TrainClips([item], protocol, seed=0)[0][0].numpy()  # perhaps mirrored
    readings = [[read_index(f[:, ::m]) for f in train_clip] for m in (1, -1)]
    assert any(r[1:] == [r[0] + 3, r[0] + 6, r[0] + 9] for r in readings), readings
