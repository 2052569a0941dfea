"""Loading weights a user hands in, safely: never unpickling code, never random fallbacks."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from distinit.pipeline.errors import DistinitError, WeightsError


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_weights_only(
    path: str | os.PathLike[str], error: type[DistinitError] = WeightsError
) -> Any:
    """``torch.load(..., weights_only=True)`` with one-line errors: a pickle that would run code,
    a truncated file and plain garbage all raise ``error`` naming the file, and run nothing."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such weights file")
    other = _other_format(path)
    if other is not None:  # torch's own text about the failure would be about weights_only
        raise error(f"{path}: not a PyTorch weights file ({other})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unsafe pickles, truncated zips and garbage raise many types
        # torch names the blocked object (``GLOBAL module.name``) when a pickle would build one;
        # other weights-only failures ("Unsupported operand 110") are bytes that are no pickle
        # torch wrote, such as a text file: not a weights file, rather than an unsafe one.
        if isinstance(exc, pickle.UnpicklingError) and "GLOBAL" in str(exc):
            raise error(
                f"{path}: not a safe weights-only file: it holds objects other than tensors and "
                "plain containers, which could run code when loaded"
            ) from exc
        if isinstance(exc, pickle.UnpicklingError):  # torch's text is about weights_only
            raise error(f"{path}: not a PyTorch weights file") from exc
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        raise error(f"{path}: not a PyTorch weights file ({detail})") from exc


# Formats users hand in by mistake, by their first bytes (a torch file is a zip archive or a
# pickle, which begin otherwise).
_OTHER_MAGIC = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x89HDF", "an HDF5 file"),
    (b"\x1f\x8b", "a gzip archive: unpack it first"),
)


def _other_format(path: Path) -> str | None:
    """What ``path`` is when its first bytes say it is a known other format; None otherwise
    (torch.load then decides, and names what it found)."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head:
        return "an empty file"
    return next((what for magic, what in _OTHER_MAGIC if head.startswith(magic)), None)


def unwrap_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """Accept the usual checkpoint wrappers: ``{"state_dict": ...}``, ``{"model": ...}`` and
    DataParallel's ``module.`` prefixes."""
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise WeightsError(f"{source}: not a state dict")
    tensors = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(f"{source}: the state dict holds no tensors")
    return tensors


def torchvision_cache_path(url: str) -> Path:
    """Where torchvision keeps its copy of the weights at ``url`` (present or not)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def torchvision_weights_file(url: str, instead: str) -> Path:
    """torchvision's cached copy of ``url``; distinit never downloads it.

    Weights come from files the user put there (what a run used is then what is on disk, the
    same on an offline cluster node as on a laptop). Missing, the error names the file, the URL
    it comes from and the cache, and ``instead``: the option that passes a local file.
    """
    cached = torchvision_cache_path(url)
    if not cached.is_file():
        raise WeightsError(
            f"{os.path.basename(url)} is not in torchvision's cache ({cached.parent}): download "
            f"{url} there, or pass {instead}"
        )
    return cached
