"""Torchvision teachers as their weights say: the weights' own interpolation, any classifier
head, and a model that the runner leaves whole. Local weights only (``weights=None`` models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from distinit.extract.inference import TeacherRunner
from distinit.extract.teachers import Teacher, load_teacher
from distinit.pipeline.errors import ConfigError

CPU = torch.device("cpu")


def _local_teacher(tmp_path: Path, name: str) -> Teacher:
    torch.manual_seed(0)
    weights = tmp_path / f"{name}.pth"
    torch.save(torchvision.models.get_model(name, weights=None).state_dict(), weights)
    return load_teacher(name, str(weights))


def _frames(runner: TeacherRunner, n: int = 2) -> np.ndarray:
    g = runner.geometry
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, g.height, g.width, 3), dtype=np.uint8)


def test_a_torchvision_teacher_resizes_with_its_weights_interpolation(tmp_path: Path) -> None:
    bicubic = _local_teacher(tmp_path, "efficientnet_b0")  # its weights' transform: bicubic
    assert bicubic.interpolation == "bicubic"
    runner = TeacherRunner([bicubic], CPU, "fp32")
    assert runner.geometry.interpolation == "bicubic"  # ffmpeg's scaler, for its own recipe
    (info,) = runner.infos()
    assert "(bicubic" in info.preprocessing and "bilinear" not in info.preprocessing
    assert _local_teacher(tmp_path, "resnet18").interpolation == "bilinear"


def test_a_logits_teacher_whose_head_is_not_linear_runs_as_the_network_itself(
    tmp_path: Path,
) -> None:
    teacher = _local_teacher(tmp_path, "squeezenet1_1")  # head: dropout, 1x1 conv, pooling
    runner = TeacherRunner([teacher], CPU, "fp32")
    frames = _frames(runner)
    logits = runner(frames)["squeezenet1_1"]
    module = runner._eager["squeezenet1_1"]
    with torch.inference_mode():
        x = module.prepare(runner.to_device(frames), module.plan.boxes[0])
        expected = teacher.model(x).numpy()
    assert logits.shape == (2, 1000)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="squeezenet1_1: its classifier is not a final linear"):
        TeacherRunner([teacher], CPU, "fp32", kinds={"squeezenet1_1": ("embedding",)})


def test_splitting_off_the_embedding_leaves_the_teacher_whole(tmp_path: Path) -> None:
    teacher = _local_teacher(tmp_path, "resnet18")
    kinds = {"resnet18": ("logits", "embedding")}
    runner = TeacherRunner([teacher], CPU, "fp32", kinds=kinds)
    out = runner(_frames(runner))
    assert out["resnet18"].shape == (2, 1000) and out["resnet18:embedding"].shape == (2, 512)
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        assert teacher.model.eval()(x).shape == (1, 1000)  # still the classifier it was
    # The trunk shares the teacher's weights rather than holding a copy of them.
    trunk = runner._eager["resnet18"].trunk
    assert trunk is not teacher.model and trunk.conv1.weight is teacher.model.conv1.weight
    # A second runner of the same teacher splits it the same way.
    again = TeacherRunner([teacher], CPU, "fp32", kinds=kinds)
    frames = _frames(again)
    np.testing.assert_allclose(again(frames)["resnet18"], runner(frames)["resnet18"])
