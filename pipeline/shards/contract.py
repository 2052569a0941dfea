"""What a shard holds, as both stages name it: the format's name and versions, file names,
and the records of its teachers and videos (the layout is in :mod:`distinit.pipeline.shards`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = 3
READABLE_SCHEMA_VERSIONS = (1, 2, 3)  # 1: no frame store; 1 and 2: targets of one view
FORMAT_NAME = "distinit-shard"
SHARD_SUFFIX = ".h5"
TMP_SUFFIX = ".h5.tmp"
MANIFEST_NAME = "manifest.json"
# The columns of a shard's video table (/videos/<field>), by the type they are stored as.
VIDEO_INT_FIELDS = ("row_start", "row_count", "native_frames", "width", "height")
VIDEO_FLOAT_FIELDS = ("duration", "fps")
VIDEO_STR_FIELDS = ("id", "status", "error")


def target_key(name: str, kind: str) -> str:
    """A teacher target's name in a run, on the CLI (``--teacher NAME:embedding``) and in the
    shards: the teacher's name for logits, ``name:kind`` otherwise."""
    return name if kind == "logits" else f"{name}:{kind}"


@dataclass(frozen=True)
class TeacherInfo:
    """A teacher's identity as recorded in shards: enough to trust and reuse its targets."""

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    weights_sha256: str
    weights_source: str
    preprocessing: str
    kind: str = "logits"  # or "embedding" (see the module docstring)

    @property
    def key(self) -> str:
        """The target's name in a run: the teacher's name for logits, ``name:kind`` otherwise."""
        return target_key(self.name, self.kind)

    @property
    def group(self) -> str:
        """The HDF5 group holding this target's rows."""
        return TARGET_GROUPS[self.kind]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["class_names"] = list(self.class_names)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TeacherInfo:
        info = cls(**{**d, "class_names": tuple(d["class_names"])})
        if info.kind not in TARGET_GROUPS:
            raise ValueError(f"teacher {info.name}: unknown target kind {info.kind!r}")
        return info


TARGET_GROUPS = {"logits": "logits", "embedding": "embeddings"}


@dataclass
class VideoRecord:
    """One video of a shard: where its rows are and what ffmpeg said about it."""

    id: str
    status: str  # "ok" or "failed"
    error: str = ""
    row_start: int = 0
    row_count: int = 0
    native_frames: int = 0
    duration: float = float("nan")
    width: int = 0
    height: int = 0
    fps: float = float("nan")
    shard: str = field(default="", compare=False)


Targets = dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
"""Quantised rows of every teacher target, by :attr:`TeacherInfo.key`: ``(q, scale, offset)``."""
