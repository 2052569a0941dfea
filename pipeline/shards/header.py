"""Reading and checking one shard's attributes and video table, and which record of a video
seen in several shards counts."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from distinit.pipeline.errors import DistinitError, ShardError
from distinit.pipeline.faults import machine_fault
from distinit.pipeline.framestore import StoreFormat
from distinit.pipeline.shards.contract import (
    FORMAT_NAME,
    READABLE_SCHEMA_VERSIONS,
    SCHEMA_VERSION,
    SHARD_SUFFIX,
    VIDEO_FLOAT_FIELDS,
    VIDEO_INT_FIELDS,
    VIDEO_STR_FIELDS,
    TeacherInfo,
    VideoRecord,
)
from distinit.pipeline.views import ViewSet


@dataclass
class ShardHeader:
    """A shard's attributes and video table, without its frames."""

    path: Path
    records: list[VideoRecord]
    teachers: list[TeacherInfo]
    provenance: dict[str, Any]
    schema_version: int = SCHEMA_VERSION
    store: StoreFormat | None = None
    views: ViewSet | None = None  # None: one view, the teacher's own centre recipe


def damaged_shard(path: Path, exc: BaseException) -> ShardError:
    """The error for a shard whose bytes cannot be read back; the remedy is always the same."""
    return ShardError(
        f"{path}: unreadable or damaged shard ({exc}); delete it and run distinit extract "
        "again to redo its videos"
    )


def read_failure(path: Path, exc: BaseException) -> DistinitError:
    """The error for a failed read of a shard: the machine's limit when it is one (too many
    open files, no memory), else :func:`damaged_shard`."""
    return machine_fault(exc, f"{path}: cannot read the shard") or damaged_shard(path, exc)


def read_shard_header(path: str | os.PathLike[str]) -> ShardHeader:
    """Read and validate one shard's attributes and video table."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT_NAME:
                raise ShardError(f"{path}: not a distinit shard")
            version = int(f.attrs.get("schema_version", -1))
            if version not in READABLE_SCHEMA_VERSIONS:
                raise ShardError(
                    f"{path}: shard schema version {version}, this distinit reads "
                    f"{', '.join(map(str, READABLE_SCHEMA_VERSIONS))}; re-extract or use a "
                    "matching distinit"
                )
            teachers = [TeacherInfo.from_json(d) for d in json.loads(f.attrs["teachers"])]
            provenance = json.loads(f.attrs["provenance"])
            store = (
                StoreFormat.from_json(json.loads(f["store"].attrs["format"]))
                if "store" in f
                else None
            )
            records = _read_records(f, path)
            views = _read_views(f) if "views" in f else None
            _check_shapes(f, path, teachers, records, len(views) if views else 1)
    except (OSError, KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
        raise read_failure(path, exc) from exc
    return ShardHeader(path, records, teachers, provenance, version, store, views)


def _read_views(f: h5py.File) -> ViewSet:
    g = f["views"]
    size = tuple(int(x) for x in g.attrs["size"])
    return ViewSet.from_table(
        (size[0], size[1]), int(g.attrs["crop"]), g["store_box"][()], g["flip"][()]
    )


def _read_records(f: h5py.File, path: Path) -> list[VideoRecord]:
    v = f["videos"]
    # Column-wise into Python values (numpy's tolist), then one record per row: a Kinetics-sized
    # set has hundreds of thousands of rows, read by every train, inspect and resume.
    columns: list[list[Any]] = [
        [s.decode("utf-8") if isinstance(s, bytes) else s for s in v[name][()].tolist()]
        for name in VIDEO_STR_FIELDS
    ]
    columns += [v[name][()].astype(np.int64).tolist() for name in VIDEO_INT_FIELDS]
    columns += [v[name][()].astype(np.float64).tolist() for name in VIDEO_FLOAT_FIELDS]
    names = (*VIDEO_STR_FIELDS, *VIDEO_INT_FIELDS, *VIDEO_FLOAT_FIELDS)
    return [
        VideoRecord(**dict(zip(names, row, strict=True)), shard=path.name)
        for row in zip(*columns, strict=True)
    ]


def _check_shapes(
    f: h5py.File,
    path: Path,
    teachers: list[TeacherInfo],
    records: list[VideoRecord],
    views: int,
) -> None:
    rows = f["frames/time"].shape[0]
    if f["frames/index"].shape != (rows,):
        raise ShardError(f"{path}: frames/index has the wrong shape")
    for t in teachers:
        g = f[t.group][t.name]
        lead = (views,) if g["q"].ndim == 3 else ()  # schema 1 and 2: one view, no view axis
        if (
            (not lead and views != 1)
            or g["q"].shape != (*lead, rows, t.num_classes)
            or g["scale"].shape != (*lead, rows)
        ):
            raise ShardError(f"{path}: {t.group} of {t.name} have the wrong shape")
    for r in records:
        if r.row_start < 0 or r.row_start + r.row_count > rows:
            raise ShardError(f"{path}: video {r.id} points outside the frame table")
    if "store" in f:
        st = f["store"]
        gops = st["gop_row"].shape[0]
        if st["gop_offset"].shape != (gops + 1,) or (gops == 0) != (rows == 0):
            raise ShardError(f"{path}: the frame store's GOP table has the wrong shape")


def video_records(headers: Iterable[ShardHeader]) -> dict[str, VideoRecord]:
    """Each video's one record, by id, over shards in file order: a video seen twice (retried
    after a failure, or extracted under another rank split) is its first ``ok`` record, else its
    last failure (within a rank the latest run's reason). The reader, resume, ``--retry-failed``,
    ``--strict`` and the manifest all follow this rule."""
    chosen: dict[str, VideoRecord] = {}
    for header in headers:
        for r in header.records:
            if r.id not in chosen or chosen[r.id].status != "ok":
                chosen[r.id] = r
    return chosen


def list_shard_files(directory: str | os.PathLike[str]) -> list[Path]:
    directory = Path(directory)
    return sorted(p for p in directory.glob(f"*{SHARD_SUFFIX}") if p.is_file())
