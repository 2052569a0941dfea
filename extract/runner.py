"""Stage one's runner: videos -> decoded frames -> teacher logits -> shards.

Decoding runs in ``workers`` ffmpeg processes at once (the real decode workers; each is driven by
a thread that only moves bytes from its pipe, so the GIL is not in the way). Their frame chunks
meet in one bounded queue, which keeps memory flat however long a video is. The main thread packs
frames from any videos into fixed-size teacher batches (so short videos never make small batches),
runs the teachers, quantises the logits and appends each finished video to the current shard.

Resuming needs no bookkeeping of its own: complete shard files list the videos they hold, and a
video is written only when all of its frames are in, so a re-run skips exactly what is done.

Only a fault of the video itself (:class:`VideoDecodeError`: it does not decode, has no stream)
is recorded as the video's failure. Anything else met while a video is decoded (a fault of the
machine, :mod:`distinit.pipeline.faults`, or a bug) stops the run: the finished videos are kept,
the unfinished ones stay unrecorded and the next run redoes them.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from distinit.extract.config import COMPILE_AUTO_MIN_VIDEOS, ExtractConfig
from distinit.extract.discovery import require_videos, videos_for_rank
from distinit.extract.inference import (
    CPU_CALL_FRAMES,
    Calibration,
    TeacherRunner,
    calibrate_batch_size,
    resolve_precision,
)
from distinit.extract.lock import RankLock
from distinit.extract.teachers import group_specs, load_teacher, target_keys
from distinit.pipeline.device import resolve_device
from distinit.pipeline.errors import ConfigError, MachineFaultError, ShardError, VideoDecodeError
from distinit.pipeline.faults import machine_fault
from distinit.pipeline.ffmpeg_binary import ffmpeg_version
from distinit.pipeline.framestore import StoreFormat, encode_gop
from distinit.pipeline.progress import FrameCount, eta_seconds, expected_frames
from distinit.pipeline.runtime import probe_writable
from distinit.pipeline.shards import (
    SHARD_SUFFIX,
    TMP_SUFFIX,
    ShardHeader,
    ShardWriter,
    TeacherInfo,
    VideoRecord,
    list_shard_files,
    quantize,
    read_shard_header,
    video_records,
    write_manifest,
)
from distinit.pipeline.stopping import StopSignals
from distinit.pipeline.video import FrameChunk, FrameGeometry, VideoInfo, VideoReader
from distinit.pipeline.views import ViewSet

log = logging.getLogger(__name__)

CHUNK_FRAMES = 16
MAX_SHARD_BYTES = 256 * 1024 * 1024


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


@dataclass
class _Pending:
    """A video whose frames are (partly) decoded but not yet written."""

    video_id: str
    times: list[np.ndarray] = field(default_factory=list)
    indices: list[np.ndarray] = field(default_factory=list)
    logits: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = field(default_factory=dict)
    gops: list[tuple[int, bytes]] = field(default_factory=list)  # frame store: (rows, H.264)
    rows_in_batch: int = 0
    decoded: bool = False
    info: VideoInfo | None = None
    native_frames: int = 0
    warning: str | None = None
    failed: str | None = None  # reason, once the decoder gave up on this video


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
        for stale in out.glob(prefix + "*" + TMP_SUFFIX):
            log.info("removing %s left by an interrupted run", stale.name)
            stale.unlink()
        all_ids = videos_for_rank(found, cfg.num_shards, cfg.shard_index)
        headers = [read_shard_header(p) for p in list_shard_files(out)]
        if headers:
            _check_same_recipe(cfg, headers[0])
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
            runner, batch_size, choice = _teacher_runner(cfg, todo, headers)
            provenance = _provenance(cfg, runner, batch_size, store)
            provenance["batch_size_choice"] = choice
            infos = runner.infos() if runner is not None else []
            shards = _ShardSequence(
                out, prefix, infos, provenance, cfg.videos_per_shard, store, cfg.view_set()
            )
            with StopSignals() as stop:  # the one stop-signal rule (pipeline.stopping)
                _extract(cfg, todo, runner, batch_size, store, shards, summary, stop, progress)
            summary.shards_written = shards.written
            summary.bytes_written = sum((out / n).stat().st_size for n in shards.written)
        write_manifest(out, cfg.to_json())
    return summary


def _teacher_runner(
    cfg: ExtractConfig, todo: list[str], headers: list[ShardHeader]
) -> tuple[TeacherRunner | None, int, str | None]:
    """The teachers on their device, the frames per batch and how that was chosen (no runner
    for --teacher none)."""
    if not cfg.teacher_names:
        return None, 0, None
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    kinds = group_specs(cfg.teacher_names)
    teachers = [load_teacher(n, cfg.teacher_weights.get(n)) for n in kinds]
    compile_teachers = cfg.compile == "on" or (
        cfg.compile == "auto" and len(todo) >= COMPILE_AUTO_MIN_VIDEOS
    )
    runner = TeacherRunner(
        teachers,
        device,
        precision,
        eager_if_compile_fails=cfg.compile == "auto",
        kinds=kinds,
        views=cfg.view_set(),
    )
    if headers:
        _check_same_teachers(runner.infos(), headers[0])
    batch_size, choice = _choose_batch_size(cfg, runner, todo)
    log.info("teacher batch size: %s", choice)
    runner.set_batch_size(batch_size)
    if compile_teachers:
        log.info("compiling the teachers (a one-off cost of tens of seconds)")
        runner.compile(batch_size)
    return runner, batch_size, choice


CALIBRATION_FRAMES = 16
CALIBRATION_VIDEOS = 5  # videos tried for frames to calibrate the teacher batch size on
UNMEASURED_CUDA_BATCH_SIZE = 256  # when none of the first videos decodes


def _choose_batch_size(
    cfg: ExtractConfig, runner: TeacherRunner, todo: list[str]
) -> tuple[int, str]:
    """``--batch-size`` if given; else on CPU the fixed teacher call, on CUDA the size
    :func:`calibrate_batch_size` measures on the first frames of the first videos. Returns the
    size and a line saying how it was chosen (and, on CPU, that the teacher runs in calls of
    :data:`CPU_CALL_FRAMES` frames whatever it is)."""
    cuda = runner.device.type == "cuda"
    calls = "" if cuda else f"; the teacher runs {CPU_CALL_FRAMES} frames a call on CPU"
    if cfg.batch_size is not None:
        return cfg.batch_size, f"{cfg.batch_size} (--batch-size){calls}"
    if not cuda:
        return CPU_CALL_FRAMES, f"{CPU_CALL_FRAMES} (fixed on CPU, so the targets are repeatable)"
    frames = _first_frames(cfg, runner.geometry, todo)
    if frames is None:
        # Rare (the first videos all broken), and said so in the log and the provenance.
        size = UNMEASURED_CUDA_BATCH_SIZE
        return size, f"{size} (not measured: none of the first {CALIBRATION_VIDEOS} videos decoded)"
    calibration: Calibration = calibrate_batch_size(runner, frames)
    return calibration.batch_size, calibration.describe()


def _first_frames(
    cfg: ExtractConfig, geometry: FrameGeometry, todo: list[str]
) -> np.ndarray | None:
    """The first frames of the first video that decodes, to calibrate on."""
    for video_id in todo[:CALIBRATION_VIDEOS]:
        try:
            with VideoReader(
                os.path.join(cfg.videos, video_id), geometry, fps=cfg.fps,
                chunk_size=CALIBRATION_FRAMES, threads=cfg.decoder_threads,
            ) as reader:  # fmt: skip
                for chunk in reader:
                    return chunk.frames
        except VideoDecodeError:
            continue
    return None


def _check_same_recipe(cfg: ExtractConfig, shard: ShardHeader) -> None:
    """Shards of one directory must agree: refuse to add frames made another way."""
    before = shard.provenance.get("config", {})
    store = f"{cfg.store_size[0]}x{cfg.store_size[1]}" if cfg.frames == "store" else None
    views = cfg.view_set()
    asked = (target_keys(cfg.teacher_names), cfg.fps, store, _views_text(views))
    had_store = f"{shard.store.width}x{shard.store.height}" if shard.store else None
    had_views = _views_text(shard.views) if shard.teachers else _views_text(None)
    if not cfg.teacher_names:  # a frames-only store has no views to agree on
        asked = (*asked[:3], had_views)
    had = ([t.key for t in shard.teachers], before.get("fps"), had_store, had_views)
    if asked != had:

        def recipe(teachers: list[str], fps: float | None, store: str | None, views: str) -> str:
            rate = "every frame" if fps is None else f"{fps:g} fps"
            frames = f"a {store} frame store" if store else "no frame store"
            return f"teachers {', '.join(teachers) or 'none'} at {rate} with {frames}, {views}"

        raise ConfigError(
            f"{cfg.out} holds shards made with {recipe(*had)}; this run asks for "
            f"{recipe(*asked)}. Use a new --out (the shards of one directory must agree)."
        )


def _views_text(views: ViewSet | None) -> str:
    return views.describe() if views is not None else "the teacher's own view"


def _check_same_teachers(teachers: list[TeacherInfo], shard: ShardHeader) -> None:
    for new, old in zip(teachers, shard.teachers, strict=True):
        if new.to_json() != old.to_json():
            raise ConfigError(
                f"{shard.path.parent}: teacher {new.name} now has other weights or preprocessing "
                f"(sha256 {new.weights_sha256[:12]} vs {old.weights_sha256[:12]} in "
                f"{shard.path.name}); use a new --out"
            )


def _provenance(
    cfg: ExtractConfig, runner: TeacherRunner | None, batch_size: int, store: StoreFormat | None
) -> dict[str, Any]:
    return {
        "videos_root": os.path.abspath(cfg.videos),
        "decoder": "distinit.pipeline.video: ffmpeg rawvideo pipe, showinfo timestamps",
        "ffmpeg_version": ffmpeg_version(),
        "frame_geometry": runner.geometry.describe() if runner is not None else None,
        "teacher_inputs": (
            {i.key: i.preprocessing for i in runner.infos()} if runner is not None else {}
        ),
        "frame_store": (
            f"{store.describe()}; frames {FrameGeometry(*store.size).describe()} from the "
            "same decode as the teachers', then coded with PyAV's libx264"
            if store is not None
            else None
        ),
        "frame_selection": (
            "every native frame"
            if cfg.fps is None
            else f"first native frame at or after n/{cfg.fps}"
        ),
        "fps": cfg.fps,
        "views": (
            runner.views.describe()
            if runner is not None and runner.views is not None
            else "one view per frame: the teacher's own recipe (centre crop)"
            if runner is not None
            else None
        ),
        "precision": runner.precision if runner is not None else None,
        "compiled": runner.compiled if runner is not None else None,
        "batch_size": batch_size,
        "device": str(runner.device) if runner is not None else None,
        "code_version": version("distinit"),
        "config": cfg.to_json(),
    }


class _ShardSequence:
    """The current shard of this rank; starts the next one every ``videos_per_shard`` videos."""

    def __init__(
        self,
        out: Path,
        prefix: str,
        teachers: list[TeacherInfo],
        provenance: dict[str, Any],
        videos_per_shard: int,
        store: StoreFormat | None,
        views: ViewSet | None,
    ) -> None:
        self.out, self.prefix, self.teachers = out, prefix, teachers
        self.provenance, self.videos_per_shard, self.store = provenance, videos_per_shard, store
        self.views = views
        existing = [p.name for p in out.glob(prefix + "*" + SHARD_SUFFIX)]
        self.next_seq = 1 + max(
            (int(n[len(prefix) : -len(SHARD_SUFFIX)]) for n in existing), default=-1
        )
        self.writer: ShardWriter | None = None
        self.written: list[str] = []

    def current(self) -> ShardWriter:
        if self.writer is None:
            path = self.out / f"{self.prefix}{self.next_seq:05d}{SHARD_SUFFIX}"
            self.next_seq += 1
            with self._write_errors(path):
                self.writer = ShardWriter(
                    path, self.teachers, self.provenance, self.store, self.views
                )
        return self.writer

    def add_video(
        self,
        record: VideoRecord,
        times: np.ndarray,
        indices: np.ndarray,
        logits: Any,
        gops: list[tuple[int, bytes]] | None,
    ) -> None:
        writer = self.current()
        with self._write_errors(writer.path):
            writer.add_video(record, times, indices, logits, gops)
        self._rotate()

    def add_failure(self, video_id: str, reason: str) -> None:
        self.current().add_failure(video_id, reason)
        self._rotate()

    def _rotate(self) -> None:
        # Shards are built in memory, so they are also closed at a size bound.
        if self.writer is not None and (
            len(self.writer.records) >= self.videos_per_shard
            or self.writer.nbytes >= MAX_SHARD_BYTES
        ):
            self.close()

    def close(self) -> None:
        if self.writer is not None:
            with self._write_errors(self.writer.path):
                self.written.append(self.writer.close().name)
            self.writer = None

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None

    @contextmanager
    def _write_errors(self, path: Path) -> Iterator[None]:
        """A failed write (disk full, quota, permissions) drops only the unfinished shard."""
        try:
            yield
        except OSError as exc:
            self.abort()
            reason = exc.strerror or str(exc).splitlines()[0]
            raise ShardError(
                f"{path}: write failed ({reason}); finished shards are intact, "
                "free space and run the same command again to resume"
            ) from exc


def _decode_worker(
    jobs: queue.Queue[str | None],
    results: queue.Queue[tuple[Any, ...]],
    cfg: ExtractConfig,
    geometries: tuple[FrameGeometry, ...],
    store: StoreFormat | None,
    stop: threading.Event,
) -> None:
    """Decode videos; with a store, also code each chunk's store view as one GOP (here, in the
    decode thread, so coding overlaps the teachers)."""
    while not stop.is_set():
        video_id = jobs.get()
        if video_id is None:
            break
        path = os.path.join(cfg.videos, video_id)
        try:
            with VideoReader(
                path,
                geometries,
                fps=cfg.fps,
                chunk_size=store.gop if store else CHUNK_FRAMES,
                threads=cfg.decoder_threads,
            ) as reader:
                opened = False
                for chunk in reader:
                    if stop.is_set():
                        break
                    if not opened:  # the stream header is read by the first frame
                        opened, info = True, reader.info
                        expected = expected_frames(info.duration, info.fps, cfg.fps)
                        results.put(("opened", video_id, expected))
                    gop = encode_gop(chunk.views[-1], store) if store is not None else None
                    results.put(("chunk", video_id, chunk, gop))
                else:
                    results.put(
                        ("done", video_id, reader.info, reader.frames_decoded, reader.warning)
                    )
        except VideoDecodeError as exc:  # the video's fault: recorded, the run goes on
            results.put(("failed", video_id, exc.reason))
        except Exception as exc:
            # Not the video's fault (the machine's limits, or a bug): the main thread stops the
            # run with it and the video stays unrecorded, so the next run redoes it.
            fault = exc if isinstance(exc, MachineFaultError) else machine_fault(exc, path)
            results.put(("fault", video_id, fault or exc))
            break
    results.put(("exit",))


def _extract(
    cfg: ExtractConfig,
    todo: list[str],
    runner: TeacherRunner | None,
    batch_size: int,
    store: StoreFormat | None,
    shards: _ShardSequence,
    summary: ExtractSummary,
    stop: threading.Event,
    progress: Callable[[Progress], None] | None,
) -> None:
    # One decode per video feeds the teachers (first view) and the store (last view).
    views = [runner.geometry] if runner is not None else []
    if store is not None:
        views.append(FrameGeometry(*store.size))
    geometries = tuple(views)
    jobs: queue.Queue[str | None] = queue.Queue()
    for v in todo:
        jobs.put(v)
    n_workers = min(cfg.workers, len(todo))
    for _ in range(n_workers):
        jobs.put(None)
    # Bounded: decoders wait when the teacher is behind, so memory does not grow.
    results: queue.Queue[tuple[Any, ...]] = queue.Queue(
        maxsize=max(4, 2 * batch_size // CHUNK_FRAMES + 2 * n_workers)
    )
    threads = [
        threading.Thread(
            target=_decode_worker,
            args=(jobs, results, cfg, geometries, store, stop),
            daemon=True,
        )
        for _ in range(n_workers)
    ]
    for t in threads:
        t.start()

    first = geometries[0]
    batch = np.empty((batch_size, first.height, first.width, 3), dtype=np.uint8)
    owners: list[tuple[_Pending, int]] = []  # (video, rows) runs in batch order
    filled = 0
    pending: dict[str, _Pending] = {}
    started = last_report = time.monotonic()
    live = n_workers
    counts = FrameCount(len(todo))
    decoded = 0

    def flush() -> None:
        nonlocal filled
        if filled == 0 or runner is None:
            return
        logits = runner.run_views(batch[:filled])  # key -> (K, B, C)
        quantised = {name: _quantize_views(x) for name, x in logits.items()}
        finite = np.logical_and.reduce([np.isfinite(x).all(axis=(0, 2)) for x in logits.values()])
        row = 0
        for video, rows in owners:
            if not finite[row : row + rows].all():
                video.failed = video.failed or "the teacher produced non-finite logits"
            part = slice(row, row + rows)
            for name, (q, s, o) in quantised.items():
                video.logits.setdefault(name, []).append((q[:, part], s[:, part], o[:, part]))
            video.rows_in_batch -= rows
            row += rows
        owners.clear()
        filled = 0
        for video in list(pending.values()):
            settle(video)

    def settle(video: _Pending) -> None:
        """Write or record a video once it is over and none of its frames wait in the batch."""
        if video.rows_in_batch or (video.failed is None and not video.decoded):
            return
        if video.failed is not None:
            _record_failure(video, shards, summary)
        else:
            _write_video(video, shards, summary)
        del pending[video.video_id]

    def add_chunk(video: _Pending, chunk: FrameChunk, gop: bytes | None) -> None:
        nonlocal filled
        video.times.append(chunk.times)
        video.indices.append(chunk.indices)
        if gop is not None:
            video.gops.append((len(chunk), gop))
        if runner is None:
            return
        start = 0
        while start < len(chunk):
            take = min(batch_size - filled, len(chunk) - start)
            batch[filled : filled + take] = chunk.frames[start : start + take]
            owners.append((video, take))
            video.rows_in_batch += take
            filled += take
            start += take
            if filled == batch_size:
                flush()

    try:
        while live:
            try:
                item = results.get(timeout=0.5)
            except queue.Empty:
                item = None
            if stop.is_set():
                break
            if item is not None:
                kind = item[0]
                if kind == "opened":
                    counts.opened(item[1], item[2])
                elif kind == "chunk":
                    _, video_id, chunk, gop = item
                    video = pending.setdefault(video_id, _Pending(video_id))
                    add_chunk(video, chunk, gop)
                    decoded += len(chunk)
                elif kind == "done":
                    _, video_id, info, native, warning = item
                    video = pending.setdefault(video_id, _Pending(video_id))
                    counts.finished(video_id, sum(len(t) for t in video.times))
                    video.decoded, video.info, video.native_frames, video.warning = (
                        True,
                        info,
                        native,
                        warning,
                    )
                    settle(video)
                elif kind == "failed":
                    _, video_id, reason = item
                    video = pending.setdefault(video_id, _Pending(video_id))
                    counts.finished(video_id, sum(len(t) for t in video.times))
                    video.failed = reason
                    settle(video)
                elif kind == "fault":
                    _, video_id, exc = item
                    raise exc
                elif kind == "exit":
                    live -= 1
                    if live == 0:
                        flush()
            now = time.monotonic()
            if progress is not None and (now - last_report >= 1.0 or live == 0):
                last_report = now
                progress(
                    Progress(
                        len(todo),
                        summary.done,
                        summary.failed,
                        decoded,
                        now - started,
                        counts.total(),
                    )
                )
        if stop.is_set():
            summary.interrupted = True
            _stop_decoders(threads, results)
        shards.close()
    except MachineFaultError:
        # Keep what is finished: the videos already in the current shard are complete and
        # healthy; the unfinished ones (the faulty one among them) are redone by the next run.
        stop.set()
        _stop_decoders(threads, results)
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
        summary.seconds = time.monotonic() - started


def _stop_decoders(threads: list[threading.Thread], results: queue.Queue[tuple[Any, ...]]) -> None:
    """Wait for the decoder threads once ``stop`` is set, draining their queue so none stays
    blocked on a full one."""
    while any(t.is_alive() for t in threads):
        with suppress(queue.Empty):
            results.get(timeout=0.1)


def _quantize_views(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`quantize` of ``(K, B, C)`` targets, row by row: ``(K, B, C), (K, B), (K, B)``."""
    k, b, c = x.shape
    q, scale, offset = quantize(x.reshape(k * b, c))
    return q.reshape(k, b, c), scale.reshape(k, b), offset.reshape(k, b)


def _record_failure(video: _Pending, shards: _ShardSequence, summary: ExtractSummary) -> None:
    reason = video.failed or "unknown error"
    summary.failed += 1
    summary.failures.append((video.video_id, reason))
    shards.add_failure(video.video_id, reason)


def _write_video(video: _Pending, shards: _ShardSequence, summary: ExtractSummary) -> None:
    info = video.info or VideoInfo()
    times = np.concatenate(video.times)
    logits = {  # (K, n, C), (K, n), (K, n): the rows of every view
        name: tuple(np.concatenate([part[i] for part in parts], axis=1) for i in range(3))
        for name, parts in video.logits.items()
    }
    record = VideoRecord(
        id=video.video_id,
        status="ok",
        error=video.warning or "",
        native_frames=video.native_frames,
        duration=info.duration,
        width=info.width,
        height=info.height,
        fps=info.fps,
    )
    gops = video.gops if shards.store is not None else None
    shards.add_video(record, times, np.concatenate(video.indices), logits, gops)
    summary.done += 1
    summary.frames += len(times)  # frames saved: an interrupted run's unsaved ones do not count
    if video.warning:
        summary.warnings.append((video.video_id, video.warning))
