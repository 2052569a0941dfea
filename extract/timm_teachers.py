"""Teachers from timm: ``timm/<model>[.<tag>]``, e.g. ``timm/vit_small_patch14_dinov2.lvd142m``.

The network is built without weights (timm never downloads), then loaded from a local file: the
``--teacher-weights`` file (safetensors preferred, since it cannot run code; or a weights-only torch
file), else the file already in the local Hugging Face cache under the model's ``hf_hub_id``.
Neither present is an error naming what to pass, never random weights.

Preprocessing is the model's pretrained config (``timm.data.resolve_data_config``): input size,
mean and std, crop fraction (resize shorter side to ``crop / crop_pct``) and interpolation.
Class names come from timm's ImageNet label files when the head is an ImageNet(-12k/-22k)
classifier; any other head (CLIP's projection) or none (DINOv2) makes the model an embedding-only
teacher, whose output is its embedding.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from distinit.extract.teachers import TIMM_PREFIX, Teacher
from distinit.pipeline.errors import UnknownNameError, WeightsError
from distinit.pipeline.weights import file_sha256, load_weights_only, unwrap_state_dict

# Files a timm repository on the Hugging Face hub holds its weights in, preferred first.
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def load_timm_teacher(name: str, weights_path: str | None) -> Teacher:
    import timm
    from timm.data import ImageNetInfo, infer_imagenet_subset, resolve_data_config

    model_name = name[len(TIMM_PREFIX) :]
    arch = model_name.split(".", 1)[0]
    if not timm.is_model(arch):
        raise UnknownNameError("timm model", arch, ["see timm.list_models()"])
    try:
        model = timm.create_model(model_name, pretrained=False)
    except RuntimeError as exc:  # an unknown pretrained tag
        known = timm.list_pretrained(arch)
        raise UnknownNameError("timm pretrained tag", model_name, known) from exc
    cfg: dict[str, Any] = dict(getattr(model, "pretrained_cfg", {}))
    num_classes = int(getattr(model, "num_classes", 0))
    if weights_path is None:
        weights_path = str(_hf_cache_file(name, cfg.get("hf_hub_id"), cfg.get("hf_hub_filename")))
    _load_timm_weights(model, weights_path)
    data = resolve_data_config({}, model=model)
    crop = int(data["input_size"][-1])
    if data["input_size"][-2] != crop:
        raise WeightsError(
            f"teacher {name}: non-square input {data['input_size']} is not supported"
        )
    subset = infer_imagenet_subset(model)
    classes: tuple[str, ...] = ()
    if subset is not None and num_classes > 0:
        classes = tuple(ImageNetInfo(subset).label_names())
    return Teacher(
        name=name,
        model=model,
        class_names=classes,
        resize_size=int(math.floor(crop / float(data["crop_pct"]))),
        crop_size=crop,
        mean=tuple(m * 255 for m in data["mean"]),  # type: ignore[arg-type]
        std=tuple(s * 255 for s in data["std"]),  # type: ignore[arg-type]
        weights_sha256=file_sha256(weights_path),
        weights_source=f"timm {model_name} ({weights_path})",
        interpolation=str(data["interpolation"]),
    )


def _hf_cache_file(name: str, repo: str | None, filename: str | None) -> Path:
    """The model's weights file in the local Hugging Face cache (never fetched)."""
    hint = f"pass --teacher-weights {name}=PATH (a .safetensors or weights-only torch file)"
    if not repo:
        raise WeightsError(f"teacher {name}: timm knows no Hugging Face repository for it; {hint}")
    from huggingface_hub import try_to_load_from_cache

    for candidate in (filename, *HF_WEIGHT_FILES):
        if candidate:
            found = try_to_load_from_cache(repo_id=repo, filename=candidate)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
    raise WeightsError(
        f"teacher {name}: no weights for {repo} in the local Hugging Face cache; {hint}"
    )


def _load_timm_weights(model: torch.nn.Module, path: str) -> None:
    """Load a timm-format state dict; files in the original release format go through the
    model family's own ``checkpoint_filter_fn`` first, as timm's pretrained loader does."""
    if not os.path.isfile(path):
        raise WeightsError(f"{path}: no such weights file")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(path)
        except (SafetensorError, OSError) as exc:
            raise WeightsError(f"{path}: not a safetensors file ({exc})") from exc
    else:
        state = unwrap_state_dict(load_weights_only(path), path)
    missing, unexpected = _mismatch(model, state)
    if missing or unexpected:
        import sys

        family = sys.modules[type(model).__module__]
        fix = getattr(family, "checkpoint_filter_fn", None)
        if fix is not None:
            state = fix(state, model)
    _load_state(model, state, path)


def _mismatch(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> tuple[set[str], set[str]]:
    own = set(model.state_dict())
    return own - set(state), set(state) - own


def _load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        summary = str(exc).splitlines()[0][:200]
        raise WeightsError(f"{path}: weights do not fit the network ({summary})") from exc
