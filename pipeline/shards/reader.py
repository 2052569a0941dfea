"""Read access to a shard directory: targets, timestamps and stored frames by row, and checks of
every byte."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from distinit.pipeline.errors import ShardError
from distinit.pipeline.faults import machine_fault
from distinit.pipeline.framestore import StoreFormat, decode_gop
from distinit.pipeline.paths import check_relative
from distinit.pipeline.shards.codec import dequantize
from distinit.pipeline.shards.contract import SHARD_SUFFIX, VideoRecord
from distinit.pipeline.shards.handles import OpenShards
from distinit.pipeline.shards.header import (
    list_shard_files,
    read_failure,
    read_shard_header,
    video_records,
)
from distinit.pipeline.views import ViewSet


class ShardSet:
    """Read access to every complete shard in a directory.

    Headers are read eagerly (small); HDF5 handles are opened lazily, per process, and at most
    ``max_open`` at a time (the least recently used is closed first), so a ShardSet can be
    handed to DataLoader workers (each opens its own handles after the fork) over any number
    of shards.
    """

    def __init__(self, directory: str | os.PathLike[str], max_open: int | None = None) -> None:
        """``max_open``: shard files one process keeps open at most (default
        :func:`default_max_open`)."""
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ShardError(
                f"{self.directory}: no such shard directory (give the --out directory of "
                "distinit extract)"
            )
        files = list_shard_files(self.directory)
        if not files:
            raise ShardError(
                f"{self.directory}: no shard files (*{SHARD_SUFFIX}) found; give the --out "
                "directory of distinit extract"
            )
        shards = [read_shard_header(p) for p in files]
        self.teachers = shards[0].teachers
        self.provenance = shards[0].provenance
        # The store is used only when every shard has one, all coded alike.
        formats = {s.store for s in shards}
        self.mixed_stores = len(formats) > 1
        self.store: StoreFormat | None = formats.pop() if len(formats) == 1 else None
        self.schema_versions = sorted({s.schema_version for s in shards})
        self.views: ViewSet | None = shards[0].views
        for s in shards[1:]:
            if s.views != self.views:
                raise ShardError(
                    f"{s.path}: its views differ from {shards[0].path.name}'s; shards of one "
                    "directory must share their views (extract them into one --out with one "
                    "--views, --crop and --store-size)"
                )
        self._view_axis: dict[str, bool] = {}  # shard -> whether its targets have a view axis
        for s in shards[1:]:
            if [t.to_json() for t in s.teachers] != [t.to_json() for t in self.teachers]:
                raise ShardError(
                    f"{s.path}: teachers {[t.name for t in s.teachers]} differ from "
                    f"{shards[0].path.name}'s {[t.name for t in self.teachers]}; "
                    "shards of one directory must come from the same teachers"
                )
        for s in shards:
            for r in s.records:
                check_relative(r.id, f"{s.path}: video id", ShardError)  # joined onto roots
        self.records: dict[str, VideoRecord] = video_records(shards)
        self._open = OpenShards(self.directory, max_open)

    @property
    def teacher_names(self) -> list[str]:
        return [t.name for t in self.teachers]

    def logits_keys(self) -> list[str]:
        return [t.key for t in self.teachers if t.kind == "logits"]

    def ok_videos(self) -> list[VideoRecord]:
        return sorted((r for r in self.records.values() if r.status == "ok"), key=lambda r: r.id)

    def _file(self, shard: str) -> h5py.File:
        return self._open.get(shard).file

    @contextlib.contextmanager
    def _reading(self, shard: str) -> Iterator[None]:
        """Turn a failed read (a fletcher32 mismatch, a truncated file, a GOP that does not
        decode) into one line naming the shard and the remedy, also inside a loader worker;
        a limit of the machine (open files, memory) is said as such, never as damage."""
        try:
            yield
        except (OSError, ShardError) as exc:
            raise read_failure(self.directory / shard, exc) from exc

    def _dataset(self, shard: str, path: str) -> h5py.Dataset:
        return self._open.get(shard).dataset(path)

    def times(self, video_id: str) -> np.ndarray:
        r = self._ok(video_id)
        with self._reading(r.shard):
            return self._dataset(r.shard, "frames/time")[r.row_start : r.row_start + r.row_count]

    def frame_indices(self, video_id: str) -> np.ndarray:
        r = self._ok(video_id)
        with self._reading(r.shard):
            return self._dataset(r.shard, "frames/index")[r.row_start : r.row_start + r.row_count]

    @property
    def num_views(self) -> int:
        return len(self.views) if self.views is not None else 1

    def logits(
        self, video_id: str, rows: Iterable[int] | None = None, view: int = 0
    ) -> dict[str, np.ndarray]:
        """Float32 logits ``(k, C)`` per teacher for the given rows of a video (all if None),
        of view ``view`` (an index into :attr:`views`; 0 for shards of one view)."""
        return self._targets(video_id, rows, "logits", view)

    def embeddings(
        self, video_id: str, rows: Iterable[int] | None = None, view: int = 0
    ) -> dict[str, np.ndarray]:
        """Float32 embeddings ``(k, D)`` per target key (``name:embedding``), as :meth:`logits`."""
        return self._targets(video_id, rows, "embedding", view)

    def _targets(
        self, video_id: str, rows: Iterable[int] | None, kind: str, view: int
    ) -> dict[str, np.ndarray]:
        if not 0 <= view < self.num_views:
            raise IndexError(f"view {view} of a shard set with {self.num_views}")
        r = self._ok(video_id)
        if rows is None:
            sel: Any = slice(r.row_start, r.row_start + r.row_count)
            pick: Any = slice(None)
        else:
            local = np.asarray(list(rows), dtype=np.int64)
            if len(local) and (local.min() < 0 or local.max() >= r.row_count):
                raise IndexError(f"{video_id}: rows outside 0..{r.row_count - 1}")
            first, last = (int(local.min()), int(local.max())) if len(local) else (0, -1)
            if 0 <= last - first < 8 * len(local):  # a clip's rows: read their span, pick here
                sel, pick = slice(r.row_start + first, r.row_start + last + 1), local - first
            else:  # a few rows far apart: h5py wants increasing unique indices, map back after
                uniq, pick = np.unique(local, return_inverse=True)
                sel = uniq + r.row_start
        out: dict[str, np.ndarray] = {}
        for t in self.teachers:
            if t.kind != kind:
                continue
            with self._reading(r.shard):
                lead = (view,) if self._has_view_axis(r.shard, f"{t.group}/{t.name}/q") else ()
                q, scale, offset = (
                    self._dataset(r.shard, f"{t.group}/{t.name}/{part}")[(*lead, sel)]
                    for part in ("q", "scale", "offset")
                )
            x = dequantize(q[pick], scale[pick], offset[pick])
            if not np.isfinite(x).all():
                raise ShardError(f"{r.shard}: non-finite {t.group} for {video_id}")
            out[t.key] = x
        return out

    def _has_view_axis(self, shard: str, q_path: str) -> bool:
        if shard not in self._view_axis:
            self._view_axis[shard] = self._dataset(shard, q_path).ndim == 3
        return self._view_axis[shard]

    def frames(self, video_id: str, rows: Iterable[int]) -> np.ndarray:
        """The store's frames of a video's ``rows`` (any order, may repeat): ``(k, H, W, 3)``
        uint8 RGB at the store size. Each GOP involved is decoded once, up to its last row."""
        if self.store is None:
            raise ShardError(f"{self.directory}: these shards have no frame store")
        r = self._ok(video_id)
        local = np.asarray(list(rows), dtype=np.int64)
        if len(local) == 0 or local.min() < 0 or local.max() >= r.row_count:
            raise IndexError(f"{video_id}: rows outside 0..{r.row_count - 1}")
        with self._reading(r.shard):
            first_rows, offsets = self._gop_table(r.shard)
        rows_global = local + r.row_start
        gop_of = np.searchsorted(first_rows, rows_global, side="right") - 1
        out = np.empty((len(local), self.store.height, self.store.width, 3), dtype=np.uint8)
        data = self._dataset(r.shard, "store/bytes")
        for g in np.unique(gop_of):
            mine = np.flatnonzero(gop_of == g)
            with self._reading(r.shard):
                blob = data[offsets[g] : offsets[g + 1]].tobytes()
                out[mine] = decode_gop(blob, self.store, rows_global[mine] - first_rows[g])
        return out

    def total_rows(self) -> int:
        return sum(r.row_count for r in self.ok_videos())

    def store_nbytes(self) -> int:
        """Bytes the frame store takes on disk (coded frames, GOP tables, chunk padding)."""
        return self._storage_bytes(("store",))

    def target_nbytes(self) -> int:
        """Bytes the targets take on disk: logits and embeddings, their scales and offsets,
        times, indices."""
        return self._storage_bytes(("logits", "embeddings", "frames"))

    def _storage_bytes(self, groups: tuple[str, ...]) -> int:
        total = 0
        for path in list_shard_files(self.directory):
            f = self._file(path.name)
            for group in groups:
                if group in f:
                    total += sum(
                        int(f[group][name].id.get_storage_size())
                        for name in _iter_datasets(f[group])
                    )
        return total

    def _gop_table(self, shard: str) -> tuple[np.ndarray, np.ndarray]:
        return self._open.get(shard).gop_table()

    def _ok(self, video_id: str) -> VideoRecord:
        r = self.records.get(video_id)
        if r is None or r.status != "ok":
            raise ShardError(f"{self.directory}: no extracted frames for video {video_id!r}")
        return r

    def verify_checksums(self) -> list[str]:
        """Read every byte of every shard; return one line per damaged shard (empty if none)."""
        problems = []
        for path in list_shard_files(self.directory):
            try:
                with h5py.File(path, "r") as f:
                    for name in _iter_datasets(f):
                        data = f[name][()]
                        if (
                            name.startswith(("logits/", "embeddings/"))
                            and data.dtype.kind == "f"
                            and not np.isfinite(data).all()
                        ):
                            problems.append(f"{path.name}: non-finite values in {name}")
            except OSError as exc:
                fault = machine_fault(exc, f"{path}: cannot read the shard")
                if fault is not None:  # the machine's limit says nothing about these bytes
                    raise fault from exc
                problems.append(f"{path.name}: checksum or read error ({exc})")
        return problems

    def verify_store_tables(self) -> list[str]:
        """One line per shard whose frame store does not line up with its rows (empty if none):
        GOPs must start at every video's first row, increase, and index bytes that exist."""
        problems: list[str] = []
        if self.store is None:
            return problems
        for shard in sorted({r.shard for r in self.ok_videos()}):
            first_rows, offsets = self._gop_table(shard)
            nbytes = self._file(shard)["store/bytes"].shape[0]
            rows = self._file(shard)["frames/time"].shape[0]
            starts = {r.row_start for r in self.ok_videos() if r.shard == shard and r.row_count}
            if (
                np.any(np.diff(first_rows) <= 0)
                or np.any(np.diff(offsets) <= 0)
                or offsets[-1] != nbytes
                or (len(first_rows) and (first_rows[0] != 0 or first_rows[-1] >= rows))
                or not starts <= set(first_rows.tolist())
                or np.any(np.diff(np.append(first_rows, rows)) > self.store.gop)
            ):
                problems.append(f"{shard}: the frame store's GOP table does not match its rows")
        return problems

    def close(self) -> None:
        self._open.close()

    @property
    def open_files(self) -> int:
        """Shard files this process holds open now (at most ``max_open``)."""
        return self._open.count()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_open"] = self._open.empty_copy()  # handles never cross processes
        return state


def _iter_datasets(f: h5py.File) -> Iterator[str]:
    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    yield from names
