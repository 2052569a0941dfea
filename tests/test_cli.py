"""The command line as a user meets it: help, one-line errors (import direction:
``test_import_direction.py``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from distinit.pipeline.cli import COMMANDS


def _run(*code_or_args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *code_or_args], capture_output=True, text=True, timeout=120
    )


def test_top_level_help_lists_commands_without_importing_torch() -> None:
    code = (
        "import sys\n"
        "from distinit.pipeline.cli import cli\n"
        "try:\n    cli.main(['--help'], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)\n"
    )
    result = _run("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("False")
    for name in COMMANDS:
        assert name in result.stdout


# Each command's help must be its own: its usage line and options only it has.
HELP = {
    "extract": ("extract [OPTIONS]", ["--videos", "--out", "--fps", "--teacher", "--num-shards"]),
    "inspect": ("inspect [OPTIONS] SHARDS", ["--verify", "--video", "--top", "--json"]),
    "train": ("train [OPTIONS]", ["--targets", "--student", "--clip-len", "--save-every"]),
    "eval": ("eval [OPTIONS] [RUNS]...", ["--dataset", "--checkpoint", "--mode", "--compare"]),
    "demo": ("demo [OPTIONS]", ["--quick", "--holdout", "--steps"]),
    "bench": ("bench [OPTIONS] COMMAND", ["extract", "train"]),
}


@pytest.mark.parametrize("command", sorted(HELP))
def test_every_command_has_help(command: str) -> None:
    result = _run("-m", "distinit.pipeline.cli", command, "--help")
    assert result.returncode == 0, result.stderr
    usage, options = HELP[command]
    assert result.stdout.startswith("Usage: ") and f" {usage}" in result.stdout.splitlines()[0]
    missing = [o for o in options if o not in result.stdout.split()]
    assert not missing, f"{command} --help lacks {missing}"


def test_missing_shard_directory_is_one_line(tmp_path: Path) -> None:
    targets = tmp_path / "no" / "such" / "dir"
    result = _run(
        "-m",
        "distinit.pipeline.cli",
        "train",
        "--targets",
        str(targets),
        "--out",
        str(tmp_path / "run"),
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"Error: --targets: {targets}: no such"), (
        result.stderr
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["extract", "train"])
def test_unknown_or_unavailable_device_is_one_line(command: str, tmp_path: Path) -> None:
    args = {
        "extract": ["--videos", str(tmp_path), "--out", str(tmp_path / "o")],
        "train": ["--targets", str(tmp_path), "--out", str(tmp_path / "o")],
    }[command]
    result = _run("-m", "distinit.pipeline.cli", command, *args, "--device", "tpu")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "tpu" in result.stderr
