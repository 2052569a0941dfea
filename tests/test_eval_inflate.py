"""I3D inflation: on a static clip the inflated 3D ResNet answers what the 2D ResNet-18 answers
(R(2+1)D: what the 2D ResNet-18 with the kernels its mid channels can pass answers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from distinit.eval.config import EvalConfig
from distinit.eval.inflate import factor_2plus1d, inflate_into, load_resnet18_weights
from distinit.pipeline.errors import ConfigError, WeightsError
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


def _2d_logits(net2d: nn.Module, image: torch.Tensor) -> torch.Tensor:
    # The video ResNets have no stem max-pool, so the 2D counterpart skips ResNet-18's.
    x = net2d.relu(net2d.bn1(net2d.conv1(image)))
    x = net2d.layer4(net2d.layer3(net2d.layer2(net2d.layer1(x))))  # (1, 512, 2, 2)
    return net2d.fc(x.mean(dim=(2, 3)))  # type: ignore[no-any-return]


def _best_rank(kernel: torch.Tensor, rank: int) -> torch.Tensor:
    """Eckart-Young: the kernel projected on its top ``rank`` left singular vectors (from the
    SVD of the small Gram matrix)."""
    flat = kernel.reshape(kernel.shape[0], -1).double()
    u = torch.linalg.svd(flat @ flat.T).U[:, :rank]
    return (u @ u.T @ flat).reshape(kernel.shape).float()


def test_r2plus1d_static_clip_reproduces_the_2d_net_its_mid_channels_allow() -> None:
    net2d = _resnet18_2d()
    student = Student("r2plus1d_18", {})
    inflate_into(student.backbone, net2d.state_dict())
    student.eval()
    b = student.backbone
    # torchvision's mid channels pass 2 per output channel (a kernel and its negation, around
    # the ReLU) in layer1 and each layer's second block; elsewhere the best low-rank kernel.
    mids = {"conv1": b.stem[0].out_channels}
    for name, m in b.named_modules():
        if name.count(".") == 3 and name.endswith(".0") and ".conv" in name:
            mids[name.removesuffix(".0")] = m[0].out_channels  # layerX.Y.convZ.0: (2+1)D
    state = net2d.state_dict()
    twin = dict(state)
    limited = {}
    for name, mid in mids.items():
        kernel = state[f"{name}.weight"]
        rank = min(kernel.shape[0], mid // 2)
        if rank < kernel.shape[0]:
            limited[name] = (rank, kernel.shape[0])
            twin[f"{name}.weight"] = _best_rank(kernel, rank)
    assert len(mids) == 17 and limited == {
        "conv1": (22, 64),
        "layer2.0.conv1": (115, 128), "layer2.0.conv2": (115, 128),
        "layer3.0.conv1": (230, 256), "layer3.0.conv2": (230, 256),
        "layer4.0.conv1": (460, 512), "layer4.0.conv2": (460, 512),
    }  # fmt: skip
    twin2d = resnet18(weights=None).eval()
    twin2d.load_state_dict(twin)
    image = torch.randn(1, 3, 32, 32)
    clip = image.unsqueeze(2).repeat(1, 1, 128, 1, 1)  # (1, 3, T, 32, 32): a "boring video"
    with torch.no_grad():
        x3 = b.layer4(b.layer3(b.layer2(b.layer1(b.stem(clip)))))  # (1, 512, T', 2, 2)
        logits3 = net2d.fc(x3[:, :, x3.shape[2] // 2].mean(dim=(2, 3)))
        twin_logits, full_logits = _2d_logits(twin2d, image), _2d_logits(net2d, image)
    assert torch.allclose(logits3, twin_logits, atol=1e-4, rtol=1e-4)
    # Random kernels have flat spectra, so the rank limit is visible: ResNet-18 itself differs.
    assert not torch.allclose(logits3, full_logits, atol=1e-2)


def test_r2plus1d_factor_keeps_spare_mid_channels_trainable() -> None:
    torch.manual_seed(0)
    kernel, spatial_init = torch.randn(64, 3, 7, 7), torch.randn(45, 3, 1, 7, 7)
    spatial, temporal, rank = factor_2plus1d(kernel, spatial_init, 3)
    assert rank == 22 and spatial.shape == (45, 3, 1, 7, 7) and temporal.shape == (64, 45, 3, 1, 1)
    assert torch.allclose(spatial[22:44], -spatial[:22])
    assert torch.equal(spatial[44:], spatial_init[44:])  # random filters, silent at the start
    assert torch.equal(temporal[:, 44:], torch.zeros(64, 1, 3, 1, 1))
    # Where mid channels allow (layer1: 144 >= 2 x 64), the spatial filters are the 2D ones.
    kernel = torch.randn(64, 64, 3, 3)
    spatial, temporal, rank = factor_2plus1d(kernel, torch.randn(144, 64, 1, 3, 3), 3)
    assert rank == 64 and torch.equal(spatial[:64, :, 0], kernel)
    assert torch.equal(temporal[:, :64, 1, 0, 0], torch.eye(64) / 3)


def test_inflated_baseline_takes_the_three_resnets() -> None:
    for student in ("r3d_18", "mc3_18", "r2plus1d_18"):
        EvalConfig(dataset="hmdb51", root="r", out="o", init="inflated", student=student)
    with pytest.raises(ConfigError, match="needs a student with ResNet-18 layers"):
        EvalConfig(dataset="hmdb51", root="r", out="o", init="inflated", student="s3d")


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
