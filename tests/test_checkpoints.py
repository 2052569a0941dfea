"""``final.pt`` and ``last.pt`` as untrusted files: a pickle that would run code, another format,
another schema version; and a resume whose targets came from a teacher with other weights."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from distinit.pipeline.errors import CheckpointError
from distinit.train import loop
from distinit.train.checkpoint import FINAL_FORMAT, FINAL_SCHEMA_VERSION, load_final
from distinit.train.config import TrainConfig
from distinit.train.resume import LAST_FORMAT, LAST_SCHEMA_VERSION, load_last
from tests.test_train_support import TEACHERS, write_shards


class _RunsCode:
    """Unpickling this runs ``touch marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _final_payload() -> dict[str, object]:
    return {"format": FINAL_FORMAT, "schema_version": FINAL_SCHEMA_VERSION, "student": "mc3_18",
            "heads": {"objects": 10}, "state_dict": {}, "config": {}, "teachers": []}  # fmt: skip


def _last_payload() -> dict[str, object]:
    return {"format": LAST_FORMAT, "schema_version": LAST_SCHEMA_VERSION, "step": 1}


LOADERS = {"final.pt": (load_final, _final_payload), "last.pt": (load_last, _last_payload)}


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_a_checkpoint_that_would_run_code_is_refused_unrun(name: str, tmp_path: Path) -> None:
    load, payload = LOADERS[name]
    marker = tmp_path / "ran"
    path = tmp_path / name
    torch.save({**payload(), "config": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="not a safe weights-only file"):
        load(path)
    assert not marker.exists()


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_another_schema_or_format_is_refused(name: str, tmp_path: Path) -> None:
    load, payload = LOADERS[name]
    path = tmp_path / name
    torch.save({**payload(), "schema_version": 99}, path)
    with pytest.raises(CheckpointError, match="schema 99, expected"):
        load(path)
    other = "last.pt" if name == "final.pt" else "final.pt"
    torch.save(LOADERS[other][1](), path)  # the other file's format under this name
    # A resume state handed in for a final.pt is named as such, with what to pass instead.
    told = "resume state \\(last.pt\\), not its result: pass RUN/final.pt"
    with pytest.raises(CheckpointError, match=told if name == "final.pt" else "not a distinit"):
        load(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="not a distinit"):
        load(path)


def test_resume_on_targets_from_other_teacher_weights_is_refused(
    index_data: tuple[Path, Path], tmp_path: Path
) -> None:
    videos, shards = index_data
    targets = tmp_path / "targets"
    shutil.copytree(shards, targets)
    cfg = TrainConfig(
        targets=str(targets), out=str(tmp_path / "run"), student="mc3_18", clip_len=4,
        resize=(40, 32), crop=32, batch_size=1, workers=0, max_steps=2, device="cpu",
    )  # fmt: skip
    loop.run(TrainConfig(**{**cfg.__dict__, "stop_after": 1}))
    assert load_last(tmp_path / "run" / "last.pt")["step"] == 1
    # The targets are extracted again with retrained "objects" weights: same names and classes.
    retrained = [
        replace(t, weights_sha256="1" * 64) if t.name == "objects" else t for t in TEACHERS
    ]
    shutil.rmtree(targets)
    write_shards(targets, videos, ["a/clip.mp4", "b/clip.mp4"], retrained)
    with pytest.raises(CheckpointError, match="objects:logits changed"):
        loop.run(cfg)


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_an_image_passed_as_a_checkpoint_is_named_for_what_it_is(name: str, tmp_path: Path) -> None:
    from PIL import Image

    load, _ = LOADERS[name]
    path = tmp_path / "loss.png"
    Image.new("RGB", (8, 8)).save(path)
    with pytest.raises(CheckpointError) as info:
        load(path)
    assert str(info.value).endswith(f"{path}: not a PyTorch weights file (a PNG image)")
