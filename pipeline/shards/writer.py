"""Writing one shard: on disk under a temporary name as its rows come, renamed when complete."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from distinit.pipeline.errors import ShardError
from distinit.pipeline.faults import hdf5_errno
from distinit.pipeline.framestore import StoreFormat
from distinit.pipeline.shards.contract import (
    FORMAT_NAME,
    SCHEMA_VERSION,
    SHARD_SUFFIX,
    TMP_SUFFIX,
    VIDEO_FLOAT_FIELDS,
    VIDEO_INT_FIELDS,
    VIDEO_STR_FIELDS,
    Targets,
    TeacherInfo,
    VideoRecord,
)
from distinit.pipeline.views import ViewSet

_ROW_CHUNK = 64  # rows per HDF5 chunk: small padding at a shard's end, cheap random reads
_BYTE_CHUNK = 32 * 1024  # store bytes per HDF5 chunk: one or two GOPs, each checksummed


class ShardWriter:
    """Writes one shard on disk under a temporary name; :meth:`close` makes it final by renaming.

    Rows reach the file as they are appended (HDF5's chunk cache holds at most a few chunks per
    dataset), so memory stays flat however long a video or a shard is. A video is added whole
    (:meth:`add_video`) or in parts: :meth:`append_frames` and :meth:`append_targets` any number
    of times, in row order each, then :meth:`end_video`. A write that fails (a full disk, a
    quota) is raised as :class:`OSError` with its errno, and the caller aborts the shard.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        teachers: list[TeacherInfo],
        provenance: dict[str, Any],
        store: StoreFormat | None = None,
        views: ViewSet | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.name.endswith(SHARD_SUFFIX):
            raise ValueError(f"shard path must end in {SHARD_SUFFIX}: {self.path}")
        self.tmp_path = self.path.with_name(self.path.name[: -len(SHARD_SUFFIX)] + TMP_SUFFIX)
        self.teachers = teachers
        self.store = store
        self.views = views
        self.num_views = len(views) if views is not None else 1
        self.records: list[VideoRecord] = []
        self.rows = 0  # rows of the videos ended so far
        self.store_bytes = 0
        self._groups = {t.key: f"{t.group}/{t.name}" for t in teachers}
        self._frame_rows = 0  # rows appended so far, the video in progress's included
        self._target_rows = dict.fromkeys(self._groups, 0)
        with _writing(self.tmp_path):
            self._file = h5py.File(self.tmp_path, "w")
            self._create_layout(provenance)

    def _create_layout(self, provenance: dict[str, Any]) -> None:
        f, k = self._file, self.num_views
        f.attrs["format"] = FORMAT_NAME
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        f.attrs["provenance"] = json.dumps(provenance, sort_keys=True)
        f.attrs["teachers"] = json.dumps([t.to_json() for t in self.teachers])
        frames = f.create_group("frames")
        for name, dtype in (("time", np.float64), ("index", np.int64)):
            frames.create_dataset(name, (0,), dtype=dtype, **_growable(()))
        f.create_group("logits")
        for t in self.teachers:
            # View-major (K, N, ...), chunked one view at a time: a clip reads one view's rows.
            g = f.require_group(t.group).create_group(t.name)
            g.create_dataset(
                "q", (k, 0, t.num_classes), dtype=np.int8, **_growable((t.num_classes,), views=k)
            )
            for name in ("scale", "offset"):
                g.create_dataset(name, (k, 0), dtype=np.float32, **_growable((), views=k))
        if self.views is not None:
            vg = f.create_group("views")
            vg.attrs["size"] = list(self.views.size)
            vg.attrs["crop"] = self.views.crop
            vg.create_dataset("store_box", data=self.views.store_boxes())
            vg.create_dataset("flip", data=np.array([v.flip for v in self.views.views], np.uint8))
        if self.store is not None:
            st = f.create_group("store")
            st.attrs["format"] = json.dumps(self.store.to_json(), sort_keys=True)
            st.create_dataset("bytes", (0,), dtype=np.uint8, **_growable((), _BYTE_CHUNK))
            st.create_dataset("gop_row", (0,), dtype=np.int64, **_growable(()))
            st.create_dataset("gop_offset", data=np.zeros(1, np.int64), **_growable(()))

    def add_video(
        self,
        record: VideoRecord,
        times: np.ndarray,
        indices: np.ndarray,
        logits: Targets,
        gops: list[tuple[int, bytes]] | None = None,
    ) -> None:
        """Append a complete video: ``logits[key] = quantize(...)`` of its frames, ``(K, n, C)``
        and ``(K, n)`` arrays for the shard's K views (``(n, C)``, ``(n,)`` for one), one entry
        per teacher target (:attr:`TeacherInfo.key`) and, when the shard has a store, its
        frames as ``gops``: ``(rows, H.264 bytes)`` in row order."""
        self.append_frames(record.id, times, indices, gops)
        self.append_targets(record.id, logits)
        self.end_video(record)

    def append_frames(
        self,
        video_id: str,
        times: np.ndarray,
        indices: np.ndarray,
        gops: list[tuple[int, bytes]] | None = None,
    ) -> None:
        """Append the next rows' timestamps and frame indices and, with a store, their GOPs."""
        n = len(times)
        if len(indices) != n:
            raise ShardError(f"{video_id}: frame times and indices disagree in length")
        if (gops is None) != (self.store is None):
            raise ShardError(f"{video_id}: frame store rows given to a shard without one, or none")
        if gops is not None and sum(rows for rows, _ in gops) != n:
            raise ShardError(f"{video_id}: the frame store's GOPs do not cover its {n} rows")
        with _writing(self.tmp_path):
            if gops:
                st = self._file["store"]
                first_rows = self._frame_rows + np.cumsum([0] + [rows for rows, _ in gops[:-1]])
                ends = self.store_bytes + np.cumsum([len(blob) for _, blob in gops])
                _append(st["bytes"], np.frombuffer(b"".join(blob for _, blob in gops), np.uint8))
                _append(st["gop_row"], first_rows.astype(np.int64))
                _append(st["gop_offset"], ends.astype(np.int64))
                self.store_bytes = int(ends[-1])
            _append(self._file["frames/time"], np.asarray(times, np.float64))
            _append(self._file["frames/index"], np.asarray(indices, np.int64))
        self._frame_rows += n

    def append_targets(self, video_id: str, targets: Targets) -> None:
        """Append the next rows' quantised targets of every teacher target (see
        :meth:`add_video` for their shapes)."""
        if set(targets) != set(self._groups):
            raise ShardError(f"{video_id}: targets for {sorted(targets)}, shard has other teachers")
        if self.num_views == 1:  # a one-view shard's targets may come without the view axis
            targets = {
                k: v if v[0].ndim == 3 else (v[0][None], v[1][None], v[2][None])
                for k, v in targets.items()
            }
        lengths = {v[0].shape[1] for v in targets.values()}
        if len(lengths) > 1 or any(v[0].shape[0] != self.num_views for v in targets.values()):
            raise ShardError(f"{video_id}: targets disagree in length or in their views")
        with _writing(self.tmp_path):
            for key, (q, scale, offset) in targets.items():
                g = self._file[self._groups[key]]
                _append(g["q"], q, axis=1)
                _append(g["scale"], scale, axis=1)
                _append(g["offset"], offset, axis=1)
                self._target_rows[key] += q.shape[1]

    def end_video(self, record: VideoRecord) -> None:
        """Close the video whose rows were appended since the last one: it becomes ``record``
        (rows set here); its rows are on disk once this returns."""
        n = self._frame_rows - self.rows
        if any(rows != self._frame_rows for rows in self._target_rows.values()):
            raise ShardError(f"{record.id}: frames, indices and logits disagree in length")
        with _writing(self.tmp_path):
            self._file.flush()  # a write error surfaces here, not in a destructor
        record.row_start, record.row_count, record.status = self.rows, n, "ok"
        self.rows += n
        self.records.append(record)

    def add_failure(self, video_id: str, error: str) -> None:
        self.records.append(VideoRecord(id=video_id, status="failed", error=error))

    def close(self) -> Path:
        """Write the video table, flush, fsync and atomically give the file its final name."""
        if self._frame_rows != self.rows:
            raise ShardError(f"{self.path}: a video's rows were appended but never ended")
        with _writing(self.tmp_path):
            self._write_video_table()
            self._file.close()
        try:
            with open(self.tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(self.tmp_path, self.path)
        except OSError:
            self.abort()
            raise
        return self.path

    def _write_video_table(self) -> None:
        videos = self._file.create_group("videos")
        str_dtype = h5py.string_dtype("utf-8")
        for name in VIDEO_STR_FIELDS:
            videos.create_dataset(
                name, data=[getattr(r, name) for r in self.records], dtype=str_dtype
            )
        for name in VIDEO_INT_FIELDS:
            videos.create_dataset(
                name, data=np.array([getattr(r, name) for r in self.records], dtype=np.int64)
            )
        for name in VIDEO_FLOAT_FIELDS:
            videos.create_dataset(
                name, data=np.array([getattr(r, name) for r in self.records], dtype=np.float64)
            )
        if self.views is not None:
            boxes = [self.views.source_boxes(r.width, r.height) for r in self.records]
            videos.create_dataset(
                "source_box",
                data=np.array(boxes, dtype=np.float32).reshape(-1, self.num_views, 4),
            )

    @property
    def nbytes(self) -> int:
        """Approximate size of the shard so far (its logits, frame tables and store)."""
        return self.rows * self.bytes_per_row() + self.store_bytes

    def bytes_per_row(self) -> int:
        """A row's bytes in this shard, its frame store's GOPs aside."""
        return 16 + self.num_views * sum(t.num_classes + 8 for t in self.teachers)

    def abort(self) -> None:
        """Drop the shard (the videos in it will be extracted again on resume)."""
        with contextlib.suppress(Exception):  # a file whose writes failed fails to close too
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp_path)


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """HDF5 reports a failed write as a RuntimeError that quotes the errno; raise it as the
    OSError it is, so a full disk is told apart from a bug."""
    try:
        yield
    except RuntimeError as exc:
        code = hdf5_errno(str(exc))
        if code is None:
            raise
        raise OSError(code, os.strerror(code), str(path)) from exc


def _growable(
    row_shape: tuple[int, ...], chunk_rows: int = _ROW_CHUNK, views: int | None = None
) -> dict[str, Any]:
    """Dataset options for rows appended along the row axis (axis 1 when ``views`` lead)."""
    lead: tuple[int, ...] = () if views is None else (views,)
    return {
        "maxshape": (*lead, None, *row_shape),
        "chunks": (*((1,) if lead else ()), chunk_rows, *row_shape),
        "fletcher32": True,
    }


def _append(dataset: h5py.Dataset, values: np.ndarray, axis: int = 0) -> None:
    n = dataset.shape[axis]
    dataset.resize(n + values.shape[axis], axis=axis)
    if axis == 0:
        dataset[n:] = values
    else:
        dataset[:, n:] = values
