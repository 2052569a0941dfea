"""``RUN/last.pt``: everything needed to continue a run exactly where it stopped.

Holds the student and optimizer/scheduler/scaler state, the step, the torch RNG states and the
config. Written atomically (temporary name, fsync, rename), so ``kill -9`` at any moment leaves
either the previous or the new checkpoint, never half of one; SIGINT and SIGTERM save it at the
step they stop at. Loaded with ``weights_only=True``: plain tensors and numbers only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from distinit.pipeline.atomic import atomic_torch_save
from distinit.pipeline.errors import CheckpointError
from distinit.pipeline.shards import ShardSet, list_shard_files
from distinit.train.checkpoint import LAST_FORMAT, load_tagged

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


def shard_set_fingerprint(shards: ShardSet) -> dict[str, Any]:
    """What a run's clip draws depend on: every video id with its rows and shard, and each shard
    file by name and size. Not the directory, so the same shards moved elsewhere match; a grown
    or other set, which changes the epoch length and the clip of every step, does not."""
    videos = [(r.id, r.row_count, r.shard) for r in shards.ok_videos()]
    files = [(p.name, p.stat().st_size) for p in list_shard_files(shards.directory)]
    digest = hashlib.sha256(json.dumps([videos, files]).encode()).hexdigest()
    return {
        "digest": digest,
        "videos": len(videos),
        "rows": sum(n for _, n, _ in videos),
        "files": len(files),
    }


def check_same_shard_set(path: Path, saved: dict[str, Any] | None, now: dict[str, Any]) -> None:
    """Refuse, in one line, to continue ``path`` on a shard set other than its own. A
    ``last.pt`` written before fingerprints were recorded has none to compare: accepted."""
    if saved is None or saved.get("digest") == now["digest"]:
        return
    raise CheckpointError(
        f"{path} was trained on another shard set ({_describe(saved)}; --targets holds "
        f"{_describe(now)}): resuming would change which clip every step draws; give the "
        "original shards (moved elsewhere is fine) or use a new --out directory"
    )


def _describe(fingerprint: dict[str, Any]) -> str:
    return (
        f"{fingerprint.get('videos')} videos, {fingerprint.get('rows')} rows in "
        f"{fingerprint.get('files')} files"
    )


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
