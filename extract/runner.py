"""Stage one's runner: videos -> decoded frames -> teacher logits -> shards.

Decode workers (:mod:`distinit.extract.decoding`) send typed messages to the main thread, which
packs frames from any videos into fixed-size teacher batches (:mod:`distinit.extract.batcher`),
appends each video's rows to its spool as they are done (:mod:`distinit.extract.spool`) and
copies each finished video into the current shard (:mod:`distinit.extract.shard_sequence`).
Nothing holds a whole video, so memory stays flat however long one is.

Resuming needs no bookkeeping of its own: complete shard files list the videos they hold, and a
video is written only when all of its frames are in, so a re-run skips exactly what is done.

Only a fault of the video itself (:class:`VideoDecodeError`: it does not decode, has no stream)
is recorded as the video's failure. Anything else met while a video is decoded (a fault of the
machine, :mod:`distinit.pipeline.faults`, or a bug) stops the run: the finished videos are kept,
the unfinished ones stay unrecorded and the next run redoes them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from distinit.extract.batcher import TeacherBatcher
from distinit.extract.config import ExtractConfig
from distinit.extract.decoding import (
    CHUNK_FRAMES,
    Chunk,
    Decoded,
    Decoders,
    Failed,
    Fault,
    Message,
    Opened,
    WorkerExit,
)
from distinit.extract.discovery import require_videos, videos_for_rank
from distinit.extract.inference import (
    TeacherRunner,
)
from distinit.extract.lock import RankLock
from distinit.extract.recipe import check_same_recipe, shard_provenance
from distinit.extract.shard_sequence import ShardSequence
from distinit.extract.spool import SPOOL_SUFFIX, VideoSpool
from distinit.extract.teacher_setup import teacher_runner
from distinit.pipeline.atomic import probe_writable
from distinit.pipeline.errors import MachineFaultError, ShardError
from distinit.pipeline.frame_geometry import FrameGeometry
from distinit.pipeline.framestore import StoreFormat
from distinit.pipeline.progress import FrameCount, eta_seconds
from distinit.pipeline.shards import (
    TMP_SUFFIX,
    Targets,
    VideoRecord,
    list_shard_files,
    read_shard_header,
    video_records,
    write_manifest,
)
from distinit.pipeline.stopping import StopSignals

log = logging.getLogger(__name__)


@dataclass
class Progress:
    videos_total: int
    videos_done: int
    videos_failed: int
    frames: int  # decoded so far (saved ones are counted in the summary)
    elapsed: float
    frames_expected: float | None = None  # see distinit.pipeline.progress.FrameCount

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        return eta_seconds(self.frames, self.frames_expected, self.elapsed)


@dataclass
class ExtractSummary:
    videos_total: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    failed_earlier: int = 0  # skipped because an earlier run recorded them as failed
    frames: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    shards_written: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    interrupted: bool = False


def run_extract(
    cfg: ExtractConfig, progress: Callable[[Progress], None] | None = None
) -> ExtractSummary:
    """Extract ``cfg.videos`` into ``cfg.out``; a run that fails before writing a shard into an
    ``--out`` it created removes that directory again (no empty leftovers)."""
    out = Path(cfg.out)
    created = not out.exists()
    try:
        return _run_extract(cfg, require_videos(cfg.videos), progress)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            with suppress(OSError):  # another rank may have started writing there meanwhile
                out.rmdir()
        raise


def _run_extract(
    cfg: ExtractConfig, found: list[str], progress: Callable[[Progress], None] | None
) -> ExtractSummary:
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe_writable(out)
    except OSError as exc:
        raise ShardError(f"--out {out}: not writable ({exc.strerror})") from exc

    with RankLock(out, cfg.shard_index, cfg.num_shards):
        prefix = f"shard-r{cfg.shard_index:04d}of{cfg.num_shards:04d}-"
        for suffix in (TMP_SUFFIX, SPOOL_SUFFIX):
            for stale in out.glob(prefix + "*" + suffix):
                log.info("removing %s left by an interrupted run", stale.name)
                stale.unlink()
        all_ids = videos_for_rank(found, cfg.num_shards, cfg.shard_index)
        headers = [read_shard_header(p) for p in list_shard_files(out)]
        if headers:
            check_same_recipe(cfg, headers[0])
        previous = {v: r.status for v, r in video_records(headers).items()}
        todo = [
            v
            for v in all_ids
            if previous.get(v) is None or (previous[v] == "failed" and cfg.retry_failed)
        ]
        summary = ExtractSummary(
            videos_total=len(all_ids),
            skipped=len(all_ids) - len(todo),
            failed_earlier=sum(previous.get(v) == "failed" for v in all_ids if v not in todo),
        )
        if todo:
            store = StoreFormat(*cfg.store_size) if cfg.frames == "store" else None
            runner, batch_size, choice = teacher_runner(cfg, todo, headers)
            provenance = shard_provenance(cfg, runner, batch_size, store)
            provenance["batch_size_choice"] = choice
            infos = runner.infos() if runner is not None else []
            shards = ShardSequence(
                out, prefix, infos, provenance, cfg.videos_per_shard, store, cfg.view_set()
            )
            with StopSignals() as stop:  # the one stop-signal rule (pipeline.stopping)
                _extract(cfg, todo, runner, batch_size, store, shards, summary, stop, progress)
            summary.shards_written = shards.written
            summary.bytes_written = sum((out / n).stat().st_size for n in shards.written)
        write_manifest(out, cfg.to_json())
    return summary


class _VideoInProgress:
    """A video being decoded, or whose last rows wait on a teacher batch: its rows so far are
    in its spool."""

    def __init__(self, video_id: str, spool: VideoSpool) -> None:
        self.video_id, self.spool = video_id, spool
        self.rows_in_batch = 0
        self.decoded: Decoded | None = None
        self.failed: str | None = None  # the reason, once the video is known to be bad

    def take_targets(self, targets: Targets, finite: bool) -> None:
        if not finite:
            self.failed = self.failed or "the teacher produced non-finite logits"
        self.spool.add_targets(targets)

    @property
    def settled(self) -> bool:
        """Over, and none of its frames wait in the batch."""
        return self.rows_in_batch == 0 and (self.failed is not None or self.decoded is not None)


class _Extraction:
    """The main thread of a run: decoder messages in, complete videos out to the shards."""

    def __init__(
        self,
        cfg: ExtractConfig,
        runner: TeacherRunner | None,
        batch_size: int,
        shards: ShardSequence,
        summary: ExtractSummary,
        videos: int,
    ) -> None:
        self.cfg, self.shards, self.summary = cfg, shards, summary
        self.batcher = TeacherBatcher(runner, batch_size) if runner is not None else None
        self.keys = tuple(i.key for i in runner.infos()) if runner is not None else ()
        self.pending: dict[str, _VideoInProgress] = {}
        self.counts = FrameCount(videos)
        self.frames_decoded = 0

    def handle(self, message: Message) -> None:
        if isinstance(message, Fault):
            raise message.error
        with self.shards.write_errors(self.shards.out):  # the spools' writes
            self._handle(message)

    def _handle(self, message: Message) -> None:
        if isinstance(message, Opened):
            self.counts.opened(message.video_id, message.expected)
        elif isinstance(message, Chunk):
            self._add_chunk(self._video(message.video_id), message)
        elif isinstance(message, Decoded | Failed):
            video = self._video(message.video_id)
            self.counts.finished(video.video_id, video.spool.frame_rows)
            if isinstance(message, Decoded):
                video.decoded = message
            else:
                video.failed = message.reason
            self._settle(video)

    def finish(self) -> None:
        """Run the teachers on the last partial batch and write what it completes."""
        with self.shards.write_errors(self.shards.out):
            if self.batcher is not None:
                self.batcher.flush()
            self._settle_all()

    def discard(self) -> None:
        """Drop the spools of unfinished videos (the next run redoes them)."""
        for video in self.pending.values():
            video.spool.remove()
        self.pending.clear()

    def _video(self, video_id: str) -> _VideoInProgress:
        if video_id not in self.pending:
            spool = VideoSpool(self.shards.out, self.shards.prefix, self.keys)
            self.pending[video_id] = _VideoInProgress(video_id, spool)
        return self.pending[video_id]

    def _add_chunk(self, video: _VideoInProgress, message: Chunk) -> None:
        chunk = message.frames
        gop = (len(chunk), message.gop) if message.gop is not None else None
        video.spool.add_frames(chunk.times, chunk.indices, gop)
        self.frames_decoded += len(chunk)
        if self.batcher is not None and self.batcher.add(video, chunk.frames):
            self._settle_all()

    def _settle_all(self) -> None:
        for video in list(self.pending.values()):
            self._settle(video)

    def _settle(self, video: _VideoInProgress) -> None:
        """Write or record a video once it is settled."""
        if not video.settled:
            return
        del self.pending[video.video_id]
        try:
            if video.failed is not None:
                self._record_failure(video.video_id, video.failed)
            else:
                assert video.decoded is not None
                self._write(video, video.decoded)
        finally:
            video.spool.remove()

    def _record_failure(self, video_id: str, reason: str) -> None:
        self.summary.failed += 1
        self.summary.failures.append((video_id, reason))
        self.shards.add_failure(video_id, reason)

    def _write(self, video: _VideoInProgress, decoded: Decoded) -> None:
        info = decoded.info
        record = VideoRecord(
            id=video.video_id,
            status="ok",
            error=decoded.warning or "",
            native_frames=decoded.native_frames,
            duration=info.duration,
            width=info.width,
            height=info.height,
            fps=info.fps,
        )
        self.shards.add_video(record, video.spool)
        self.summary.done += 1
        self.summary.frames += record.row_count  # saved: an interrupted run's unsaved ones not
        if decoded.warning:
            self.summary.warnings.append((video.video_id, decoded.warning))

    def progress(self, todo: int, elapsed: float) -> Progress:
        s = self.summary
        return Progress(todo, s.done, s.failed, self.frames_decoded, elapsed, self.counts.total())


def _extract(
    cfg: ExtractConfig,
    todo: list[str],
    runner: TeacherRunner | None,
    batch_size: int,
    store: StoreFormat | None,
    shards: ShardSequence,
    summary: ExtractSummary,
    stop: threading.Event,
    progress: Callable[[Progress], None] | None,
) -> None:
    # One decode per video feeds the teachers (first geometry) and the store (last).
    geometries = [runner.geometry] if runner is not None else []
    if store is not None:
        geometries.append(FrameGeometry(*store.size))
    workers = min(cfg.workers, len(todo))
    queue_size = max(4, 2 * batch_size // CHUNK_FRAMES + 2 * workers)
    decoders = Decoders(cfg, todo, tuple(geometries), store, stop, queue_size)
    run = _Extraction(cfg, runner, batch_size, shards, summary, len(todo))
    started = last_report = time.monotonic()
    live = decoders.count
    try:
        while live and not stop.is_set():
            message = decoders.receive(timeout=0.5)
            if isinstance(message, WorkerExit):
                live -= 1
            elif message is not None:
                run.handle(message)
            now = time.monotonic()
            if progress is not None and (now - last_report >= 1.0 or live == 0):
                last_report = now
                progress(run.progress(len(todo), now - started))
        if stop.is_set():
            summary.interrupted = True
            decoders.join()
        else:
            run.finish()
        shards.close()
    except MachineFaultError:
        # Keep what is finished: the videos already in the current shard are complete and
        # healthy; the unfinished ones (the faulty one among them) are redone by the next run.
        stop.set()
        decoders.join()
        try:
            shards.close()
        except ShardError as exc:  # the disk that failed may fail this write too
            log.warning("%s", exc)
        raise
    except BaseException:
        stop.set()
        shards.abort()
        raise
    finally:
        run.discard()
        summary.seconds = time.monotonic() - started
