"""Where stage two gets the frames of shard rows: the frame store, or the source videos.

Both sources answer the same question, "the frames of rows ``rows`` of video ``id``, at the
student's size", so the clip rules (pipeline/clip_rules.py) never know which one served them:

* :class:`StoreFrames` decodes the rows from the shards' own frame store (in process, by row; the
  source videos are not needed: shards are a portable training set).
* :class:`SourceFrames` decodes the source video by the rows' stored timestamps (nearest native
  frame, see ``pipeline/timestamp_match.py``): for shards made without a store, or when asked for.

:func:`open_frame_source` picks one: the store whenever the shards have one at the wanted size.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from distinit.pipeline.errors import ConfigError
from distinit.pipeline.frame_geometry import FrameGeometry, format_size
from distinit.pipeline.shards import ShardSet
from distinit.pipeline.timestamp_match import decode_at_times

log = logging.getLogger(__name__)

FRAME_SOURCES = ("auto", "store", "source")
_WARNED: set[tuple[Path, str]] = set()


class FrameSource(Protocol):
    size: tuple[int, int]  # (width, height) of the frames returned

    def __call__(self, video_id: str, rows: np.ndarray) -> np.ndarray:
        """``(len(rows), H, W, 3)`` uint8 RGB frames of a video's shard rows (local indices)."""
        ...

    def describe(self) -> str: ...


class StoreFrames:
    def __init__(self, shards: ShardSet) -> None:
        if shards.store is None:
            raise ConfigError(f"{shards.directory}: the shards have no frame store")
        self.shards = shards
        self.size = shards.store.size

    def __call__(self, video_id: str, rows: np.ndarray) -> np.ndarray:
        return self.shards.frames(video_id, rows)

    def describe(self) -> str:
        assert self.shards.store is not None
        return f"frame store in {self.shards.directory} ({self.shards.store.describe()})"


class SourceFrames:
    def __init__(self, shards: ShardSet, size: tuple[int, int], videos_root: Path) -> None:
        self.shards, self.size, self.videos_root = shards, size, videos_root
        self.geometry = FrameGeometry(*size)

    def __call__(self, video_id: str, rows: np.ndarray) -> np.ndarray:
        times = self.shards.times(video_id)[np.asarray(rows)]
        return decode_at_times(os.fspath(self.videos_root / video_id), self.geometry, times)

    def describe(self) -> str:
        return (
            f"source videos under {self.videos_root}, decoded by stored timestamps at "
            + format_size(self.size)
        )


def resolve_videos_root(shards: ShardSet, override: str | None) -> Path:
    """The directory the shards' video ids are relative to; every ok video must be there."""
    root_text = override if override is not None else shards.provenance.get("videos_root")
    if not root_text:
        raise ConfigError(
            f"{shards.directory}: the shards do not record where their videos are; "
            "pass --videos DIR"
        )
    root = Path(root_text)
    if not root.is_dir():
        raise ConfigError(f"videos directory {root} does not exist (pass --videos DIR)")
    missing = [r.id for r in shards.ok_videos() if not (root / r.id).is_file()]
    if missing:
        raise ConfigError(
            f"{len(missing)} extracted videos are missing under {root} (e.g. {missing[0]!r}); "
            "pass --videos DIR if they moved"
        )
    return root


def open_frame_source(
    shards: ShardSet, size: tuple[int, int], *, videos: str | None = None, prefer: str = "auto"
) -> FrameSource:
    """The store when the shards have one at ``size`` (``prefer="auto"`` or ``"store"``), else
    the source videos (``videos`` overrides the root recorded in the shards)."""
    if prefer not in FRAME_SOURCES:
        raise ConfigError(f"frame source must be one of {FRAME_SOURCES}, got {prefer!r}")
    store = shards.store
    why = None  # why the store is not used, when the user did not ask for the source
    if prefer != "source":
        if store is not None and store.size == size:
            return StoreFrames(shards)
        if store is None:
            if shards.schema_versions == [1]:
                why = "they were made before the frame store existed (schema 1)"
            elif shards.mixed_stores:
                why = "some shards have a frame store and some do not, or theirs differ"
            else:
                why = "they were made with --frames none"
        else:
            why = (
                f"it holds {format_size(store.size)} frames and {format_size(size)} are "
                f"wanted; train --resize {format_size(store.size)} uses it"
            )
        if prefer == "store":
            raise ConfigError(f"{shards.directory}: no usable frame store: {why}")
    root = resolve_videos_root(shards, videos)
    if why is not None and (shards.directory, why) not in _WARNED:  # once per directory
        _WARNED.add((shards.directory, why))
        log.warning(
            "%s: no usable frame store (%s); decoding clips from the source videos under %s, "
            "which is much slower",
            shards.directory,
            why,
            root,
        )
    return SourceFrames(shards, size, root)
