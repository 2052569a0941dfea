"""``manifest.json``: the index of a shard directory, regenerated from its shards."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from distinit.pipeline.atomic import atomic_write
from distinit.pipeline.directory_lock import DirectoryLock
from distinit.pipeline.shards.contract import FORMAT_NAME, MANIFEST_NAME, SCHEMA_VERSION
from distinit.pipeline.shards.header import list_shard_files, read_shard_header, video_records

MANIFEST_LOCK = ".manifest.lock"


def write_manifest(directory: str | os.PathLike[str], config: dict[str, Any]) -> Path:
    """Regenerate ``manifest.json`` from the shards (atomically, last).

    Every rank of a run ends by calling this on the same directory, often at the same moment.
    A lock on the directory serialises them, so the last writer has seen every shard renamed
    before it took the lock (the manifest is complete), and each writes under its own
    temporary name, fsyncs and renames (a reader or a crash never sees half a manifest).
    """
    directory = Path(directory)
    with DirectoryLock(directory, "manifest", name=MANIFEST_LOCK, wait=True):
        return _write_manifest_locked(directory, config)


def _write_manifest_locked(directory: Path, config: dict[str, Any]) -> Path:
    # Temporary files of writers killed mid-write: nobody else is writing while we hold the lock.
    for stale in directory.glob(f".{MANIFEST_NAME}.*.tmp"):  # runtime's temporary names
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    shards = []
    headers = [read_shard_header(path) for path in list_shard_files(directory)]
    for header in headers:
        shards.append(
            {
                "file": header.path.name,
                "videos": len(header.records),
                "rows": sum(r.row_count for r in header.records),
                "bytes": header.path.stat().st_size,
            }
        )
    videos = [  # one entry per video, as the reader sees it
        {"id": r.id, "shard": r.shard, "rows": r.row_count, "status": r.status, "error": r.error}
        for r in video_records(headers).values()
    ]
    manifest = {
        "format": FORMAT_NAME,
        "schema_version": SCHEMA_VERSION,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config,
        "shards": shards,
        "videos": videos,
    }
    atomic_write(directory / MANIFEST_NAME, manifest, indent=1)
    return directory / MANIFEST_NAME
