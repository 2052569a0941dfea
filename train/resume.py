"""``RUN/last.pt``: everything needed to continue a run exactly where it stopped.

Holds the student and optimizer/scheduler/scaler state, the step, the torch RNG states and the
config. Written atomically (temporary name, fsync, rename), so ``kill -9`` at any moment leaves
either the previous or the new checkpoint, never half of one; SIGINT and SIGTERM save it at the
step they stop at. Loaded with ``weights_only=True``: plain tensors and numbers only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from distinit.pipeline.errors import CheckpointError
from distinit.pipeline.runtime import atomic_torch_save
from distinit.train.checkpoint import load_tagged

LAST_FORMAT = "distinit-train-state"
LAST_SCHEMA_VERSION = 1
LAST_NAME = "last.pt"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_last(path: Path, payload: dict[str, Any]) -> None:
    payload = {"format": LAST_FORMAT, "schema_version": LAST_SCHEMA_VERSION, **payload}
    atomic_torch_save(path, payload)


def load_last(path: Path) -> dict[str, Any]:
    try:
        return load_tagged(
            path, LAST_FORMAT, LAST_SCHEMA_VERSION, "training state", "; start a new run directory"
        )
    except CheckpointError as exc:
        raise CheckpointError(f"cannot resume: {exc}") from exc
