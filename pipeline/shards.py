"""The shard contract between stage one and stage two. The only module that touches h5py.

A shard directory holds complete ``*.h5`` files (each written on disk under a temporary name as
its rows come and renamed when closed, so a crash never leaves a half-written shard under a final
name) and a ``manifest.json`` index regenerated from them after each run. The shard files are the
truth: a resumed run scans them, so a run killed before writing the manifest loses nothing it
finished.

Layout of one shard (``SCHEMA_VERSION`` 3)::

    attrs  format="distinit-shard", schema_version, provenance (JSON), teachers (JSON list)
    /frames/time           float64 (N,)    seconds from the video's first frame
    /frames/index          int64   (N,)    native frame index (decode order)
    /logits/<teacher>/q    int8    (K, N, C)  per-frame affine quantised logits of each view
    /logits/<teacher>/scale, /offset  float32 (K, N)   logit = q * scale + offset
    /embeddings/<teacher>/q, /scale, /offset   the same encoding for embedding targets (K, N, D)
    /views                 the views (absent: one view, the teacher's own centre recipe): attrs
                           size (the student's frame WxH), crop (see pipeline/views.py)
    /views/store_box       int64   (K, 4)  x0, y0, x1, y1 of view k in the student's frame
    /views/flip            uint8   (K,)    1 where view k is mirrored left-right
    /store                 the frame store (absent with ``--frames none``): attrs format (JSON,
                           see pipeline/framestore.py)
    /store/bytes           uint8   (B,)    H.264 GOPs, one after another
    /store/gop_row         int64   (G,)    first row of each GOP (a GOP never spans two videos)
    /store/gop_offset      int64   (G+1,)  GOP g is bytes[gop_offset[g]:gop_offset[g+1]]
    /videos/<field>        one entry per video: id (path relative to --videos), status, error,
                           row_start, row_count, native_frames, duration, width, height, fps
    /videos/source_box     float32 (V, K, 4)  view k's box in video v's source pixels (with views)

Row r of the store is the frame whose targets are row r (of every view). Schema 1 shards (no
store) and schema 2 shards (targets ``(N, C)``, the teacher's recipe only) are still read;
stage two then decodes schema 1's frames from the source videos.

Logits, not probabilities, are stored so the temperature stays a training-time choice. Per-frame
int8 quantisation costs about 1 KB per frame for a 1000-class teacher; every chunk carries a
fletcher32 checksum so bit-rot is detected when read.

A teacher target has a ``kind`` (:class:`TeacherInfo`): ``"logits"`` (the class scores, under
``/logits``) or ``"embedding"`` (the teacher's pooled image embedding, under ``/embeddings``; its
``num_classes`` is the embedding's dimension and it has no class names). One teacher may give both;
its targets are then told apart by :attr:`TeacherInfo.key` (``name`` for logits,
``name:embedding`` for the embedding). The same per-row affine int8 encoding serves both kinds:
``1 + 8/D`` bytes per dimension, a cosine similarity to fp32 above 0.999 on real frames.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from distinit.pipeline.atomic import atomic_write
from distinit.pipeline.directory_lock import DirectoryLock
from distinit.pipeline.errors import DistinitError, ShardError
from distinit.pipeline.faults import hdf5_errno, machine_fault
from distinit.pipeline.framestore import StoreFormat, decode_gop
from distinit.pipeline.paths import check_relative
from distinit.pipeline.views import ViewSet

SCHEMA_VERSION = 3
READABLE_SCHEMA_VERSIONS = (1, 2, 3)  # 1: no frame store; 1 and 2: targets of one view
FORMAT_NAME = "distinit-shard"
SHARD_SUFFIX = ".h5"
TMP_SUFFIX = ".h5.tmp"
MANIFEST_NAME = "manifest.json"
_ROW_CHUNK = 64  # rows per HDF5 chunk: small padding at a shard's end, cheap random reads
_BYTE_CHUNK = 32 * 1024  # store bytes per HDF5 chunk: one or two GOPs, each checksummed
_VIDEO_INT_FIELDS = ("row_start", "row_count", "native_frames", "width", "height")
_VIDEO_FLOAT_FIELDS = ("duration", "fps")
_VIDEO_STR_FIELDS = ("id", "status", "error")


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
        return self.name if self.kind == "logits" else f"{self.name}:{self.kind}"

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


def quantize(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row affine int8: returns ``(q, scale, offset)`` with ``logits ≈ q * scale + offset``."""
    x = np.asarray(logits, dtype=np.float32)
    lo = x.min(axis=1)
    hi = x.max(axis=1)
    scale = (hi - lo) / 255.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.rint((x - lo[:, None]) / scale[:, None]) - 128.0
    offset = (lo + 128.0 * scale).astype(np.float32)
    return np.clip(q, -128, 127).astype(np.int8), scale, offset


def dequantize(q: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * scale[:, None] + offset[:, None]


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
        for name in _VIDEO_STR_FIELDS:
            videos.create_dataset(
                name, data=[getattr(r, name) for r in self.records], dtype=str_dtype
            )
        for name in _VIDEO_INT_FIELDS:
            videos.create_dataset(
                name, data=np.array([getattr(r, name) for r in self.records], dtype=np.int64)
            )
        for name in _VIDEO_FLOAT_FIELDS:
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
        for name in _VIDEO_STR_FIELDS
    ]
    columns += [v[name][()].astype(np.int64).tolist() for name in _VIDEO_INT_FIELDS]
    columns += [v[name][()].astype(np.float64).tolist() for name in _VIDEO_FLOAT_FIELDS]
    names = (*_VIDEO_STR_FIELDS, *_VIDEO_INT_FIELDS, *_VIDEO_FLOAT_FIELDS)
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
        self._open = _OpenShards(self.directory, max_open)

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
            out[t.key if kind != "logits" else t.name] = x
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


MAX_OPEN_SHARDS = 32
# HDF5 keeps a chunk cache per open dataset, 1 MiB by default: with several datasets per shard
# and tens of shards per loader worker that is hundreds of MiB of cache for reads that rarely
# come back to a chunk. 256 KiB still holds the few chunks one clip's rows span (a 1000-class
# teacher's logits chunk is 64 KiB, a store chunk 32 KiB).
CHUNK_CACHE_BYTES = 256 * 1024


def default_max_open() -> int:
    """Shard files a process keeps open at most: :data:`MAX_OPEN_SHARDS`, and never more than a
    quarter of its open-file limit (``ulimit -n``), which torch, pipes and libraries share."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_OPEN_SHARDS
    return max(1, min(MAX_OPEN_SHARDS, soft // 4))


class _OpenShard:
    """One open shard file with what is looked up in it once: dataset handles (an h5py path
    lookup costs about as much as reading a clip's targets) and the frame store's GOP table."""

    def __init__(self, path: Path) -> None:
        self.file = h5py.File(path, "r", rdcc_nbytes=CHUNK_CACHE_BYTES)
        self._datasets: dict[str, h5py.Dataset] = {}
        self._gops: tuple[np.ndarray, np.ndarray] | None = None

    def dataset(self, path: str) -> h5py.Dataset:
        if path not in self._datasets:
            self._datasets[path] = self.file[path]
        return self._datasets[path]

    def gop_table(self) -> tuple[np.ndarray, np.ndarray]:
        if self._gops is None:
            self._gops = (self.dataset("store/gop_row")[()], self.dataset("store/gop_offset")[()])
        return self._gops


class _OpenShards:
    """The shard files this process has open: the ``max_open`` used most recently (LRU), so a
    set of a thousand shards read by several loader workers stays within the open-file limit.
    Handles belong to the process that opened them: after a fork the child opens its own."""

    def __init__(self, directory: Path, max_open: int | None) -> None:
        self.directory = directory
        self.max_open = default_max_open() if max_open is None else max_open
        if self.max_open < 1:
            raise ValueError(f"max_open must be at least 1, got {self.max_open}")
        self._shards: OrderedDict[str, _OpenShard] = OrderedDict()
        self._pid = os.getpid()

    def get(self, shard: str) -> _OpenShard:
        if os.getpid() != self._pid:  # forked: never touch the parent's handles
            self._shards, self._pid = OrderedDict(), os.getpid()
        if shard in self._shards:
            self._shards.move_to_end(shard)
            return self._shards[shard]
        while len(self._shards) >= self.max_open:
            _, oldest = self._shards.popitem(last=False)
            oldest.file.close()
        self._shards[shard] = _OpenShard(self.directory / shard)
        return self._shards[shard]

    def count(self) -> int:
        return len(self._shards) if os.getpid() == self._pid else 0

    def close(self) -> None:
        if os.getpid() == self._pid:
            for open_shard in self._shards.values():
                open_shard.file.close()
        self._shards = OrderedDict()

    def empty_copy(self) -> _OpenShards:
        return _OpenShards(self.directory, self.max_open)


def _iter_datasets(f: h5py.File) -> Iterator[str]:
    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    yield from names


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
