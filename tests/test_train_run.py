"""End-to-end training on CPU: CLI, resume after a stop, DDP with gloo (kill -9: test_kill.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from distinit.pipeline import shards as shards_module
from distinit.pipeline.errors import CheckpointError, NonFiniteLossError
from distinit.pipeline.shards import reader as shard_reader
from distinit.train import loop
from distinit.train.checkpoint import load_final
from distinit.train.command import train
from distinit.train.config import TrainConfig
from tests.test_train_support import OBJECTS_CLASSES, SCENES_CLASSES

STEPS = 8
COMMON = [
    "--student", "mc3_18", "--clip-len", "4", "--frame-stride", "2", "--resize", "40x32",
    "--crop", "32", "--lr", "0.05", "--warmup-steps", "2", "--seed", "1", "--device", "cpu",
]  # fmt: skip
# One thread per process: the same arithmetic in every run, and room for two DDP ranks.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def shards(index_data: tuple[Path, Path]) -> Path:
    return index_data[1]


def _argv(shards: Path, out: Path, *extra: str, batch: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "distinit.pipeline.cli", "train", "--targets", str(shards),
        "--out", str(out), *COMMON, "--batch-size", str(batch), "--max-steps", str(STEPS),
        "--workers", "0", *extra,
    ]  # fmt: skip


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_final(run / "final.pt").state_dict


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def reference(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run of STEPS steps."""
    out = tmp_path_factory.mktemp("reference") / "run"
    _run(_argv(shards, out))
    return out


def test_cli_run_writes_final_log_and_curve(shards: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "run"
    args = ["--targets", str(shards), "--out", str(out), *COMMON, "--batch-size", "2"]
    args += ["--max-steps", "4", "--workers", "1", "--teacher-weight", "scenes=0.5"]
    result = CliRunner().invoke(train, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "1 shorter than a clip" in result.output and "wrote" in result.output
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in lines] == [1, 2, 3, 4]
    for e in lines:
        assert set(e) >= {"loss", "loss_per_teacher", "lr", "clips_per_s", "data_s", "compute_s"}
        per = e["loss_per_teacher"]
        assert e["loss"] == pytest.approx(per["objects"] + 0.5 * per["scenes"], rel=1e-5)
    assert lines[0]["lr"] == pytest.approx(0.05 / 3)  # first warm-up step
    assert (out / "loss.png").stat().st_size > 1000
    ckpt = load_final(out / "final.pt")  # weights_only=True
    assert ckpt.heads == {"objects": OBJECTS_CLASSES, "scenes": SCENES_CLASSES}
    assert ckpt.step == 4 and ckpt.modality == "rgb"
    assert [t["name"] for t in ckpt.teachers] == ["objects", "scenes"]
    # Provenance for an export: the shard set the clips came from, the code that trained.
    assert ckpt.shard_set is not None and ckpt.shard_set["videos"] == 2
    assert ckpt.code_version == version("distinit")
    cfg = TrainConfig.from_json(ckpt.config)
    assert cfg.student == "mc3_18" and cfg.weight_of("scenes") == 0.5
    # RUN/config.json, what `train --config` replays, is the config the run recorded.
    assert json.loads((out / "config.json").read_text()) == ckpt.config
    net = ckpt.build_student().eval()
    with torch.no_grad():
        y = net(net.normalize(torch.zeros(1, 4, 32, 32, 3, dtype=torch.uint8)))
    assert y["scenes"].shape == (1, SCENES_CLASSES)


def test_stop_and_resume_equals_an_uninterrupted_run(
    shards: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    first = _run(_argv(shards, out, "--stop-after", "3"))
    assert "run again to continue" in first.stdout
    assert not (out / "final.pt").exists()
    spent = float(torch.load(out / "last.pt", weights_only=True)["elapsed_s"])
    assert spent > 0
    # The resumed half loads clips with a worker process: clip draws do not depend on it.
    second = _run(_argv(shards, out, "--workers", "1"))
    assert f"resuming from step 3 of {STEPS} ({out / 'last.pt'})" in second.stderr
    assert float(torch.load(out / "last.pt", weights_only=True)["elapsed_s"]) > spent
    _assert_same(_weights(out), _weights(reference))
    steps = [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))
    # A different recipe is refused rather than mixed into the run.
    (out / "final.pt").unlink()
    bad = subprocess.run(
        _argv(shards, out, "--lr", "0.1"), env=ENV, capture_output=True, text=True, timeout=300
    )
    assert bad.returncode == 2 and "different config (lr: 0.05 -> 0.1)" in bad.stderr
    assert "training " not in bad.stderr  # refused before the run is announced


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Relative difference ||a - b|| / ||a|| of all parameters and floating-point buffers."""
    keys = [k for k in a if a[k].is_floating_point()]
    num = sum((a[k].double() - b[k].double()).square().sum() for k in keys)
    den = sum(a[k].double().square().sum() for k in keys)
    return float((num / den).sqrt())


def test_two_gloo_processes_equal_one_with_the_global_batch(shards: Path, tmp_path: Path) -> None:
    single, ddp, half = tmp_path / "single", tmp_path / "ddp", tmp_path / "half"
    _run(_argv(shards, single, "--stop-after", "2", batch=4))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    torchrun += ["--nproc_per_node", "2", "-m"]
    _run(torchrun + _argv(shards, ddp, "--stop-after", "2", batch=2)[2:])
    # Control: one process on rank 0's share only. The DDP run must be far closer to `single`.
    _run(_argv(shards, half, "--stop-after", "2", batch=2))
    a, b, c = (torch.load(d / "last.pt", weights_only=True) for d in (single, ddp, half))
    assert a["step"] == b["step"] == 2
    ddp_diff = _max_diff(a["model"], b["model"])
    control_diff = _max_diff(a["model"], c["model"])
    # Same clips and global-batch statistics, but the sums run in another order and batch norm
    # over 4 tiny clips amplifies rounding: one process with 1 vs 2 threads differs by about as
    # much (~2e-4 here), while the control differs by ~1e-2.
    assert ddp_diff < 1e-3, (ddp_diff, control_diff)
    assert control_diff > 20 * ddp_diff, (ddp_diff, control_diff)
    print(f"relative difference: ddp {ddp_diff:.2e}, control {control_diff:.2e}")
    lines = (ddp / "log.jsonl").read_text().splitlines()
    assert len(lines) == 2  # rank 0 alone logs


def test_non_finite_loss_stops_with_a_clear_error(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = loop.distillation_loss

    def poisoned(*args: object, **kw: object):  # type: ignore[no-untyped-def]
        total, per = real(*args, **kw)  # type: ignore[arg-type]
        return total * float("nan"), per

    monkeypatch.setattr(loop, "distillation_loss", poisoned)
    cfg = TrainConfig(
        targets=str(shards), out=str(tmp_path / "run"), student="mc3_18", clip_len=4,
        resize=(40, 32), crop=32, batch_size=1, workers=0, max_steps=2, device="cpu",
    )  # fmt: skip
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 1"):
        loop.run(cfg)
    assert not (tmp_path / "run" / "final.pt").exists()


def test_unreadable_last_checkpoint_is_refused(shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"not a checkpoint")
    cfg = TrainConfig(
        targets=str(shards), out=str(out), student="mc3_18", clip_len=4,
        resize=(40, 32), crop=32, batch_size=1, workers=0, max_steps=1, device="cpu",
    )  # fmt: skip
    with pytest.raises(CheckpointError, match="cannot resume"):
        loop.run(cfg)


def test_drop_resume_state_deletes_last_pt_once_final_pt_exists(
    shards: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = ["--targets", str(shards), "--out", str(out), *COMMON, "--batch-size", "2"]
    args += ["--max-steps", "2", "--save-every", "1", "--workers", "0"]
    result = CliRunner().invoke(train, [*args, "--drop-resume-state"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (out / "final.pt").is_file() and not (out / "last.pt").exists()
    assert "resume state deleted (--drop-resume-state)" in result.output
    # Training it again would start from step 0 over the finished final.pt: refused.
    again = CliRunner().invoke(train, [*args, "--max-steps", "4"])
    assert "cannot be continued or extended; use a new --out" in str(again.exception)
    assert load_final(out / "final.pt").step == 2


def test_a_run_reads_each_shard_header_once(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading the headers costs time linear in the videos: once per run, not once per check."""
    read: list[Path] = []
    real = shards_module.read_shard_header
    monkeypatch.setattr(shard_reader, "read_shard_header", lambda p: read.append(p) or real(p))
    args = ["--targets", str(shards), "--out", str(tmp_path / "run"), *COMMON, "--batch-size", "2"]
    result = CliRunner().invoke(train, [*args, "--max-steps", "1", "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert sorted(read) == shards_module.list_shard_files(shards)
