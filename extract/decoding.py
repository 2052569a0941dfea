"""Stage one's decode workers and the typed messages they send.

Decoding runs in ``workers`` ffmpeg processes at once (the real decode workers; each is driven by
a thread that only moves bytes from its pipe, so the GIL is not in the way). Their messages meet
in one bounded queue: decoders wait when the teachers are behind, so memory does not grow.
"""

from __future__ import annotations

import os
import queue
import threading
from contextlib import suppress
from dataclasses import dataclass

from distinit.extract.config import ExtractConfig
from distinit.pipeline.errors import MachineFaultError, VideoDecodeError
from distinit.pipeline.faults import machine_fault
from distinit.pipeline.ffmpeg_stderr import VideoInfo
from distinit.pipeline.frame_geometry import FrameGeometry
from distinit.pipeline.framestore import StoreFormat, encode_gop
from distinit.pipeline.progress import expected_frames
from distinit.pipeline.video import FrameChunk, VideoReader

CHUNK_FRAMES = 16  # frames per message without a store (with one: a GOP's frames)


@dataclass(frozen=True)
class Opened:
    """The video's stream header is read: how many frames it is expected to give."""

    video_id: str
    expected: int | None


@dataclass(frozen=True)
class Chunk:
    """The next frames of a video, with their store GOP when there is a store."""

    video_id: str
    frames: FrameChunk
    gop: bytes | None


@dataclass(frozen=True)
class Decoded:
    """The video decoded to its end."""

    video_id: str
    info: VideoInfo
    native_frames: int
    warning: str | None


@dataclass(frozen=True)
class Failed:
    """A fault of the video (it does not decode, has no stream): recorded, the run goes on."""

    video_id: str
    reason: str


@dataclass(frozen=True)
class Fault:
    """Not the video's fault (the machine's limits, or a bug): the run stops with ``error`` and
    the video stays unrecorded, so the next run redoes it."""

    video_id: str
    error: BaseException


@dataclass(frozen=True)
class WorkerExit:
    """A decode worker has stopped."""


Message = Opened | Chunk | Decoded | Failed | Fault | WorkerExit


class Decoders:
    """``workers`` threads decoding ``todo`` in order, each video in the given ``geometries``
    (the teachers' first, the store's last) and, with a store, coding each chunk's store view as
    one GOP (in the decode thread, so coding overlaps the teachers)."""

    def __init__(
        self,
        cfg: ExtractConfig,
        todo: list[str],
        geometries: tuple[FrameGeometry, ...],
        store: StoreFormat | None,
        stop: threading.Event,
        queue_size: int,
    ) -> None:
        self.cfg, self.geometries, self.store, self.stop = cfg, geometries, store, stop
        self.jobs: queue.Queue[str | None] = queue.Queue()
        for video_id in todo:
            self.jobs.put(video_id)
        self.count = min(cfg.workers, len(todo))
        for _ in range(self.count):
            self.jobs.put(None)
        self.messages: queue.Queue[Message] = queue.Queue(maxsize=queue_size)
        self.threads = [threading.Thread(target=self._work, daemon=True) for _ in range(self.count)]
        for t in self.threads:
            t.start()

    def receive(self, timeout: float) -> Message | None:
        """The next message, or None after ``timeout`` seconds without one."""
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def join(self) -> None:
        """Wait for the workers once ``stop`` is set, draining the queue so none stays blocked
        on a full one."""
        while any(t.is_alive() for t in self.threads):
            with suppress(queue.Empty):
                self.messages.get(timeout=0.1)

    def _work(self) -> None:
        while not self.stop.is_set():
            video_id = self.jobs.get()
            if video_id is None:
                break
            path = os.path.join(self.cfg.videos, video_id)
            try:
                self._decode(video_id, path)
            except VideoDecodeError as exc:
                self.messages.put(Failed(video_id, exc.reason))
            except Exception as exc:
                fault = exc if isinstance(exc, MachineFaultError) else machine_fault(exc, path)
                self.messages.put(Fault(video_id, fault or exc))
                break
        self.messages.put(WorkerExit())

    def _decode(self, video_id: str, path: str) -> None:
        store, cfg = self.store, self.cfg
        chunk_size = store.gop if store else CHUNK_FRAMES
        with VideoReader(
            path, self.geometries, fps=cfg.fps, chunk_size=chunk_size, threads=cfg.decoder_threads
        ) as reader:
            for i, chunk in enumerate(reader):
                if self.stop.is_set():
                    return
                if i == 0:  # the stream header is read by the first frame
                    info = reader.info
                    self.messages.put(
                        Opened(video_id, expected_frames(info.duration, info.fps, cfg.fps))
                    )
                gop = encode_gop(chunk.views[-1], store) if store is not None else None
                self.messages.put(Chunk(video_id, chunk, gop))
            self.messages.put(Decoded(video_id, reader.info, reader.frames_decoded, reader.warning))
