"""I3D inflation: on a static clip the inflated 3D ResNet answers what the 2D ResNet-18 answers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from distinit.eval.inflate import inflate_into, load_resnet18_weights
from distinit.pipeline.errors import WeightsError
from distinit.train.students import Student


def _resnet18_2d() -> nn.Module:
    torch.manual_seed(0)
    net = resnet18(weights=None)
    # Non-trivial BatchNorm statistics, so copying them is tested too.
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


# (student, clip length): long enough that the centre of layer4's output has a temporal receptive
# field free of the zero padding at the clip's ends (r3d_18 reaches ~109 frames, mc3_18 ~11).
@pytest.mark.parametrize(("name", "frames"), [("r3d_18", 128), ("mc3_18", 32)])
def test_static_clip_reproduces_2d_logits(name: str, frames: int) -> None:
    net2d = _resnet18_2d()
    student = Student(name, {})
    inflate_into(student.backbone, net2d.state_dict())
    student.eval()
    image = torch.randn(1, 3, 32, 32)
    clip = image.unsqueeze(2).repeat(1, 1, frames, 1, 1)  # (1, 3, T, 32, 32): a "boring video"
    b = student.backbone
    with torch.no_grad():
        x3 = b.layer4(b.layer3(b.layer2(b.layer1(b.stem(clip)))))  # (1, 512, T', 2, 2)
        # r3d_18/mc3_18 have no stem max-pool, so the 2D counterpart skips ResNet-18's.
        x2 = net2d.relu(net2d.bn1(net2d.conv1(image)))
        x2 = net2d.layer4(net2d.layer3(net2d.layer2(net2d.layer1(x2))))  # (1, 512, 2, 2)
        centre = x3.shape[2] // 2
        logits3 = net2d.fc(x3[:, :, centre].mean(dim=(2, 3)))
        logits2 = net2d.fc(x2.mean(dim=(2, 3)))
        edge = net2d.fc(x3[:, :, 0].mean(dim=(2, 3)))
    assert torch.allclose(logits3, logits2, atol=1e-4, rtol=1e-4)
    # At the clip's first frame zero padding changes the answer: the comparison can fail.
    assert not torch.allclose(edge, logits2, atol=1e-2)


def test_inflated_kernels_are_repeated_and_divided() -> None:
    net2d = _resnet18_2d()
    student = Student("r3d_18", {})
    inflate_into(student.backbone, net2d.state_dict())
    stem = student.backbone.stem[0].weight  # (64, 3, 3, 7, 7)
    for t in range(3):
        assert torch.equal(stem[:, :, t], net2d.conv1.weight / 3)


def test_weights_file_checks(tmp_path: Path) -> None:
    good = tmp_path / "r18.pth"
    state = {f"module.{k}": v for k, v in _resnet18_2d().state_dict().items()}
    torch.save({"state_dict": state}, good)  # wrapped and DataParallel-prefixed
    loaded, identity = load_resnet18_weights(good)
    assert "conv1.weight" in loaded and "sha256:" in identity
    with pytest.raises(WeightsError, match="no such weights file"):
        load_resnet18_weights(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, bad)
    with pytest.raises(WeightsError, match="not a 2D ResNet-18"):
        load_resnet18_weights(bad)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"obj": Path("x")}, unsafe)  # not loadable with weights_only=True
    with pytest.raises(WeightsError, match="weights-only"):
        load_resnet18_weights(unsafe)
