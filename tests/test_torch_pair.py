"""A torchvision that does not match torch: one line naming both versions, not a traceback."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path


def test_a_torchvision_built_for_another_torch_is_one_line(tmp_path: Path) -> None:
    # What a torchvision wheel of another torch release raises while registering its operators.
    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "raise RuntimeError('operator torchvision::nms does not exist')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()])}
    done = subprocess.run(
        [sys.executable, "-m", "distinit.pipeline.cli", "teachers"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert f"torch {importlib.metadata.version('torch')}" in line
    assert f"torchvision {importlib.metadata.version('torchvision')}" in line
    assert "torchvision::nms does not exist" in line and "Traceback" not in done.stderr


def test_other_errors_inside_torchvision_are_not_called_a_mismatch() -> None:
    from distinit.pipeline.torch_pair import mismatch_message

    try:
        import torchvision.models as tvm

        tvm.resnet18(num_classes=-1)
    except Exception as exc:  # a bad argument raised by torchvision code, not its import
        assert mismatch_message(exc) is None
    else:
        raise AssertionError("torchvision accepted num_classes=-1")
