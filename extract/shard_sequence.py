"""The shards one rank writes, one after another, each closed at a count of videos or a size."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from distinit.extract.spool import VideoSpool
from distinit.pipeline.errors import ShardError
from distinit.pipeline.framestore import StoreFormat
from distinit.pipeline.shards import SHARD_SUFFIX, ShardWriter, TeacherInfo, VideoRecord
from distinit.pipeline.views import ViewSet

MAX_SHARD_BYTES = 256 * 1024 * 1024


class ShardSequence:
    """The current shard of this rank (``<prefix><seq>.h5``), closed as soon as it holds
    ``videos_per_shard`` videos. A video that would take it past ``max_bytes`` goes into the next
    one instead: the bound holds before a video is added (a video larger than it has a shard of
    its own)."""

    def __init__(
        self,
        out: Path,
        prefix: str,
        teachers: list[TeacherInfo],
        provenance: dict[str, Any],
        videos_per_shard: int,
        store: StoreFormat | None,
        views: ViewSet | None,
        max_bytes: int = MAX_SHARD_BYTES,
    ) -> None:
        self.out, self.prefix, self.teachers = out, prefix, teachers
        self.provenance, self.videos_per_shard, self.store = provenance, videos_per_shard, store
        self.views, self.max_bytes = views, max_bytes
        existing = [p.name for p in out.glob(prefix + "*" + SHARD_SUFFIX)]
        self.next_seq = 1 + max(
            (int(n[len(prefix) : -len(SHARD_SUFFIX)]) for n in existing), default=-1
        )
        self.writer: ShardWriter | None = None
        self.written: list[str] = []

    def add_video(self, record: VideoRecord, spool: VideoSpool) -> None:
        """Copy a complete video's rows from its spool into the shard it belongs in."""
        writer = self._writer_for(spool.frame_rows, spool.gop_bytes)
        with self.write_errors(writer.path):
            spool.copy_into(writer, record.id)
            writer.end_video(record)
        self._close_if_full()

    def add_failure(self, video_id: str, reason: str) -> None:
        self._writer_for(0, 0).add_failure(video_id, reason)
        self._close_if_full()

    def _close_if_full(self) -> None:
        if self.writer is not None and len(self.writer.records) >= self.videos_per_shard:
            self.close()

    def _writer_for(self, rows: int, store_bytes: int) -> ShardWriter:
        w = self.writer
        if (
            w is not None
            and w.records
            and (w.nbytes + rows * w.bytes_per_row() + store_bytes > self.max_bytes)
        ):
            self.close()
        if self.writer is None:
            path = self.out / f"{self.prefix}{self.next_seq:05d}{SHARD_SUFFIX}"
            self.next_seq += 1
            with self.write_errors(path):
                self.writer = ShardWriter(
                    path, self.teachers, self.provenance, self.store, self.views
                )
        return self.writer

    def close(self) -> None:
        if self.writer is not None:
            with self.write_errors(self.writer.path):
                self.written.append(self.writer.close().name)
            self.writer = None

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None

    @contextmanager
    def write_errors(self, path: Path) -> Iterator[None]:
        """A failed write of this rank's output (its shard or a video's spool: disk full, quota,
        permissions) drops only the unfinished shard."""
        try:
            yield
        except OSError as exc:
            self.abort()
            reason = exc.strerror or str(exc).splitlines()[0]
            raise ShardError(
                f"{exc.filename or path}: write failed ({reason}); finished shards are intact, "
                "free space and run the same command again to resume"
            ) from exc
