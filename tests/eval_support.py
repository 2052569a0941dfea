"""The generated three-class HMDB51-layout dataset and stand-in weights shared by eval tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torchvision.models import resnet18

from distinit.train.checkpoint import FinalCheckpoint, InputRecipe, save_final
from distinit.train.students import Student
from tests.test_eval_splits import make_hmdb_layout, write_test_manifest

STUDENT = "mc3_18"  # the smallest inflatable student keeps CPU fine-tuning short
TINY = [
    "--clip-len", "4", "--clips-per-video", "2", "--resize", "40x32", "--crop", "32",
    "--workers", "0", "--batch-size", "4",
]  # fmt: skip


def make_eval_data(
    base: Path,
    *,
    seed: int,
    modality: str = "rgb",
    config: dict[str, Any] | None = None,
    recipe: InputRecipe | None = None,
) -> dict[str, Path]:
    """Dataset, manifest, a resnet18 state dict standing in for ImageNet weights, and a
    distilled-student checkpoint of the given modality (with ``recipe``, if given: without, it
    is a checkpoint of before recipes were recorded)."""
    root = make_hmdb_layout(base / "hmdb")
    torch.manual_seed(seed)
    weights = base / "resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), weights)
    in_channels = 2 if modality == "flow" else 3
    checkpoint = base / f"{modality}_final.pt"
    distilled = Student(STUDENT, {"efficientnet_lite0": 1000}, in_channels=in_channels)
    save_final(
        checkpoint,
        FinalCheckpoint(
            student=STUDENT,
            heads={"efficientnet_lite0": 1000},
            state_dict=distilled.state_dict(),
            config=config or {"note": "test"},
            teachers=[{"name": "efficientnet_lite0"}],
            modality=modality,
            in_channels=in_channels,
            recipe=recipe,
        ),
    )
    return {
        "root": root,
        "manifest": write_test_manifest(base / "hmdb3.json"),
        "weights": weights,
        "checkpoint": checkpoint,
    }
