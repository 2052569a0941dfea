"""``distinit export``: the model card's own loading code, run where only torch, torchvision and
safetensors are imported, gives distinit's features; bad inputs are refused in one line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from distinit.export.command import export
from distinit.pipeline.cli import main
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.flow import FLOW_CHANNELS
from distinit.pipeline.weights import file_sha256
from distinit.train.checkpoint import FinalCheckpoint, load_final, save_final
from distinit.train.config import TrainConfig
from distinit.train.resume import save_last
from distinit.train.students import Student

CLIP_LEN, SIDE = 8, 32
TEACHERS = {"objects": 10, "scenes": 5}
SHARD_SET = {"digest": "ab" * 32, "videos": 3, "rows": 120, "files": 1}

# What the subprocess runs around the card's code: the clip built as config.json's recipe says
# (so the recipe is tested too), and the features written back; no distinit module may load.
PRELUDE = """
import json, sys
import torch
from safetensors.torch import load_file, save_file
recipe = json.load(open("config.json"))["input"]
raw = load_file(sys.argv[1])["clip"]  # (T, H, W, C): uint8 RGB frames or float flow
x = raw.permute(3, 0, 1, 2)[None].float()  # (1, C, T, H, W)
if recipe["mean"] is None:
    clip = x
else:
    mean = torch.tensor(recipe["mean"]).view(1, -1, 1, 1, 1)
    std = torch.tensor(recipe["std"]).view(1, -1, 1, 1, 1)
    clip = (x / 255 - mean) / std
"""
EPILOGUE = """
save_file({"features": features.detach().contiguous()}, sys.argv[2])
assert not [m for m in sys.modules if m.startswith("distinit")], "distinit was imported"
"""


def make_final(path: Path, student: str, modality: str, seed: int = 0) -> Path:
    """A final.pt as train writes it, with random weights and BatchNorm statistics (so a
    running mean or variance left behind by the export would change the features)."""
    cfg = TrainConfig(
        targets="shards", out="run", student=student, modality=modality,
        clip_len=CLIP_LEN, resize=(40, SIDE), crop=SIDE,
    )  # fmt: skip
    torch.manual_seed(seed)
    in_channels = FLOW_CHANNELS if modality == "flow" else 3
    net = Student(student, TEACHERS, in_channels=in_channels)
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    save_final(
        path,
        FinalCheckpoint(
            student=student,
            heads=TEACHERS,
            state_dict=net.state_dict(),
            config=cfg.to_json(),
            teachers=[{"name": n, "kind": "logits", "num_classes": c} for n, c in TEACHERS.items()],
            modality=modality,
            in_channels=in_channels,
            step=12,
            shard_set=SHARD_SET,
            code_version="0.1.0",
        ),
    )
    return path


def _clip(modality: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    if modality == "flow":
        return torch.rand(CLIP_LEN, SIDE, SIDE, FLOW_CHANNELS, generator=g) * 2 - 1
    return torch.randint(0, 256, (CLIP_LEN, SIDE, SIDE, 3), generator=g, dtype=torch.uint8)


def _export(*args: str) -> None:
    result = CliRunner().invoke(export, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output


# One RGB ResNet, one flow ResNet (a 2-channel first convolution), and S3D (whose fixed pooling
# the student replaces by global pooling): every line the card can hold is run.
CASES = [("r2plus1d_18", "rgb"), ("mc3_18", "flow"), ("s3d", "rgb")]

# Runs each export's card script in its folder, one interpreter for all (importing torch and
# torchvision is most of a run's time): argv holds (folder, script, clip, features) groups.
DRIVER = """
import os, runpy, sys
args = sys.argv[1:]
for folder, script, clip, features in zip(args[::4], args[1::4], args[2::4], args[3::4]):
    os.chdir(folder)
    sys.argv = [script, clip, features]
    runpy.run_path(script, run_name="__main__")
"""


def test_the_cards_torchvision_code_gives_distinits_features(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", DRIVER]
    for student, modality in CASES:
        case = tmp_path / f"{student}_{modality}"
        case.mkdir()
        final = make_final(case / "final.pt", student, modality)
        _export(str(final), "--out", str(case / "export"))
        save_file({"clip": _clip(modality)}, case / "clip.safetensors")
        code = re.search(r"```python\n(.*?)```", (case / "export" / "README.md").read_text(), re.S)
        assert code is not None
        (case / "load.py").write_text(PRELUDE + code.group(1) + EPILOGUE)
        argv += [str(case / "export"), str(case / "load.py"), str(case / "clip.safetensors")]
        argv.append(str(case / "features.safetensors"))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    for student, modality in CASES:
        case = tmp_path / f"{student}_{modality}"
        ours = load_final(case / "final.pt").build_student().eval()
        with torch.no_grad():
            expected = ours.features(ours.normalize(_clip(modality)[None]))  # (1, D)
        got = load_file(case / "features.safetensors")["features"]
        assert got.shape == expected.shape, student
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5, msg=student)


def test_weights_use_torchvision_names_and_config_records_recipe(tmp_path: Path) -> None:
    out = tmp_path / "rgb"
    _export(str(make_final(tmp_path / "rgb.pt", "r2plus1d_18", "rgb")), "--out", str(out))
    weights = load_file(out / "model.safetensors")
    missing, unexpected = torchvision.models.video.r2plus1d_18().load_state_dict(
        weights, strict=False
    )
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    config = json.loads((out / "config.json").read_text())
    assert config["torchvision"]["missing_keys"] == ["fc.bias", "fc.weight"]
    recipe = config["input"]
    assert (recipe["clip_len"], recipe["crop"], recipe["frame_stride"]) == (CLIP_LEN, SIDE, 1)
    assert recipe["resize"] == {"width": 40, "height": SIDE, "keep_aspect": False}
    assert recipe["modality"] == "rgb" and len(recipe["mean"]) == 3
    origin = config["provenance"]
    assert [t["name"] for t in origin["teachers"]] == list(TEACHERS)
    assert origin["shard_set"] == SHARD_SET and origin["steps"] == 12
    assert origin["checkpoint_sha256"] == file_sha256(tmp_path / "rgb.pt")

    flow = tmp_path / "flow"
    _export(str(make_final(tmp_path / "flow.pt", "mc3_18", "flow")), "--out", str(flow))
    conv = json.loads((flow / "config.json").read_text())["torchvision"]["first_conv"]
    assert conv["in_channels"] == FLOW_CHANNELS and conv["replaced"]
    assert load_file(flow / "model.safetensors")[f"{conv['module']}.weight"].shape[1] == 2


def _results(tmp_path: Path, sha256: str | None) -> Path:
    details = {"checkpoint_sha256": sha256} if sha256 else {}
    results = {
        "dataset": "hmdb51", "init": "checkpoint" if sha256 else "scratch", "mode": "finetune",
        "modality": "rgb", "clip_top1": 0.25, "clip_top5": 0.5, "video_top1": 0.375,
        "video_top5": 0.625, "per_split": [{"split": 1}], "protocol": {"epochs": 3},
        "init_details": details,
    }  # fmt: skip
    path = tmp_path / f"results_{sha256 is not None}.json"
    path.write_text(json.dumps(results))
    return path


def test_results_of_this_checkpoint_go_into_the_card(tmp_path: Path) -> None:
    final = make_final(tmp_path / "final.pt", "mc3_18", "rgb")
    out = tmp_path / "export"
    _export(str(final), "--out", str(out), "--results", str(_results(tmp_path, file_sha256(final))))
    card = (out / "README.md").read_text()
    assert "## Results" in card and "37.5%" in card and "hmdb51" in card


def _one_line_error(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys) -> str:
    monkeypatch.setattr(sys, "argv", ["distinit", "export", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_bad_inputs_are_refused_in_one_line_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    final = make_final(tmp_path / "final.pt", "mc3_18", "rgb")
    last = tmp_path / "last.pt"
    save_last(last, {"step": 1})
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    fresh = tmp_path / "fresh"
    cases = {
        "resume state (last.pt)": [str(last), "--out", str(fresh)],
        "not a PyTorch weights file": [str(text), "--out", str(fresh)],
        "evaluates --init scratch": [
            str(final), "--out", str(fresh), "--results", str(_results(tmp_path, None))
        ],
        "evaluates a checkpoint with sha256": [
            str(final), "--out", str(fresh), "--results", str(_results(tmp_path, "cd" * 32))
        ],
    }  # fmt: skip
    for expected, argv in cases.items():
        assert expected in _one_line_error(argv, monkeypatch, capsys)
        assert not fresh.exists(), expected

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep")
    message = _one_line_error([str(final), "--out", str(taken)], monkeypatch, capsys)
    assert "is not empty" in message and "--force" in message
    assert sorted(p.name for p in taken.iterdir()) == ["mine.txt"]
    _export(str(final), "--out", str(taken), "--force")
    assert (taken / "model.safetensors").is_file() and (taken / "mine.txt").read_text() == "keep"


def test_a_final_pt_without_an_input_recipe_is_refused(tmp_path: Path) -> None:
    from distinit.export.bundle import export_checkpoint
    from distinit.pipeline.errors import CheckpointError

    path = make_final(tmp_path / "final.pt", "mc3_18", "rgb")
    ckpt = load_final(path)
    ckpt.config = {"note": "no recipe"}
    save_final(path, ckpt)
    with pytest.raises(CheckpointError, match="records no clip_len"):
        export_checkpoint(path, tmp_path / "out")
    with pytest.raises(ConfigError, match="is a file"):
        export_checkpoint(path, path)
