"""Does decoding starve training? Loader throughput vs train step rate, real vs synthetic clips.

``python -m distinit.train.bench --targets SHARDS`` (a benchmark, not a test) prints:

* clips/s per core of the clip loader reading the frame store, and reading the source videos by
  stored timestamps, in one run, with their ratio; the store's bytes per frame and its PSNR
  against decoding the source at the same size (``--json-out`` writes these four figures);
* clips/s of the real clip loader in the main process (= one worker's rate), for RGB and for
  flow clips, and the cost of flow per clip beside RGB: the loader's extra seconds per clip, and
  DIS alone on a moving texture of the same size
  (:func:`~distinit.train.flow_cost.flow_cost_per_clip`);
* clips/s with ``--workers`` worker processes (and that total divided by the workers), in
  ``--modality``;
* train steps/s of the student fed by the real loader, and fed by synthetic clips already in
  device memory (the ceiling), and their ratio: well below 1 means add workers or CPUs.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from distinit.pipeline.bench import machine_description
from distinit.pipeline.device import resolve_device
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.frame_geometry import format_size
from distinit.pipeline.options import MODALITIES, config_from, config_options, json_out_option
from distinit.train.config import TrainConfig

if TYPE_CHECKING:
    import torch
    from torch.utils.data import DataLoader

    from distinit.pipeline.frame_source import FrameSource
    from distinit.pipeline.shards import ShardSet
    from distinit.train.clips import ClipDataset

# The options of `distinit train` that shape what is measured, with train's definitions.
MEASURED = (
    "targets", "videos", "student", "modality", "clip_len", "resize", "crop", "batch_size",
    "workers", "device", "amp",
)  # fmt: skip

Batch = dict[str, Any]


@dataclass
class StoreFigures:
    """Store vs source loader (one process, one thread = one core), store size and quality;
    None: not measured."""

    store_clips_per_s_per_core: float | None = None
    source_clips_per_s_per_core: float | None = None
    store_bytes_per_frame: float | None = None
    store_psnr_db: float | None = None
    store_psnr_frames: int | None = None
    source_not_measured: str | None = None  # why the source path was not measured

    def to_json(self) -> dict[str, float | None]:
        figures = dataclasses.asdict(self)
        del figures["source_not_measured"]
        if self.store_psnr_frames is None:
            del figures["store_psnr_frames"]
        return figures

    def lines(self, cfg: TrainConfig) -> list[str]:
        size = format_size(cfg.resize)
        what = f"{cfg.clip_len}-frame {size} clips (one process, one thread)"
        lines = []
        if self.source_not_measured is not None:
            lines.append(f"source path not measured: {self.source_not_measured}")
        store, source = self.store_clips_per_s_per_core, self.source_clips_per_s_per_core
        if store is not None:
            lines.append(f"loader from the frame store: {store:.1f} clips/s per core, {what}")
            quality = (
                f", PSNR {self.store_psnr_db:.2f} dB vs the source at {size} "
                f"(pooled over {self.store_psnr_frames} frames)"
                if self.store_psnr_db is not None
                else ""
            )
            lines.append(f"frame store: {self.store_bytes_per_frame:.0f} bytes/frame{quality}")
        else:
            lines.append(f"no frame store at {size} in these shards (extract --frames store)")
        if source is not None:
            lines.append(f"loader from the source videos: {source:.1f} clips/s per core, {what}")
        if store is not None and source is not None:
            lines.append(f"store / source = {store / source:.1f}x")
        return lines


@dataclass
class TrainBenchFigures:
    """Everything `bench train` measures, and how it is printed."""

    machine: str
    store: StoreFigures
    loader_clips_per_s: dict[str, float]  # main process, by modality
    dis_seconds_per_clip: float  # DIS alone on a moving texture, one thread
    workers_clips_per_s: float | None  # with --workers processes, in --modality
    real_steps_per_s: float
    synthetic_steps_per_s: float
    device: str
    use_amp: bool

    def lines(self, cfg: TrainConfig) -> list[str]:
        rates = self.loader_clips_per_s
        lines = [f"machine: {self.machine}", *self.store.lines(cfg)]
        lines += [
            f"loader, main process, {m}: {rate:.2f} clips/s (one worker's rate)"
            for m, rate in rates.items()
        ]
        lines.append(
            f"flow cost per clip ({cfg.clip_len} frames at {format_size(cfg.resize)}, one "
            f"thread): loader +{1000 * (1 / rates['flow'] - 1 / rates['rgb']):.1f} ms over RGB's "
            f"{1000 / rates['rgb']:.1f} ms; DIS alone on a moving texture "
            f"{1000 * self.dis_seconds_per_clip:.1f} ms"
        )
        if self.workers_clips_per_s is not None:
            many, n = self.workers_clips_per_s, cfg.workers
            lines.append(
                f"loader, {n} worker{'s' * (n != 1)}, {cfg.modality}: {many:.2f} clips/s "
                f"({many / n:.2f} per worker)"
            )
        real, synthetic, b = self.real_steps_per_s, self.synthetic_steps_per_s, cfg.batch_size
        lines.append(
            f"train {cfg.modality} {cfg.student} on {self.device}{' (amp)' * self.use_amp}, "
            f"batch {b} x {cfg.clip_len}x{cfg.crop}x{cfg.crop}: real loader {real:.3f} steps/s "
            f"({real * b:.2f} clips/s), synthetic in-memory {synthetic:.3f} steps/s "
            f"({synthetic * b:.2f} clips/s); real/synthetic = {real / synthetic:.2f}"
        )
        return lines


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@config_options(TrainConfig, only=MEASURED, defaults={"student": "r2plus1d_18"})
@click.option(
    "--clips", type=int, default=32, show_default=True, help="Clips timed per loader measurement."
)
@click.option(
    "--steps",
    type=int,
    default=10,
    show_default=True,
    help="Train steps timed (after 2 warm-up steps).",
)
@click.option(
    "--psnr-frames",
    type=int,
    default=1000,
    show_default=True,
    help="Store frames compared with the source decoded at the same size: every row of videos "
    "taken in a seeded random order, up to this many.",
)
@json_out_option("the frame-store figures")
def bench_train(
    clips: int, steps: int, psnr_frames: int, json_out: str | None, **params: Any
) -> None:
    """Benchmark the training data path of `distinit train` (about a minute on 2 CPU cores).

    The main-process loader is measured for both modalities; the workers and the train step
    in --modality.
    """
    from distinit.pipeline.flow import set_flow_threads
    from distinit.train.flow_cost import flow_cost_per_clip
    from distinit.train.loop import open_targets

    cfg = config_from(TrainConfig, params, fixed={"out": "-"})
    shards, frames = open_targets(cfg)
    loaders = _Loaders(cfg, shards, frames, clips)
    # The main process measured like a worker: one OpenCV thread, which is what workers inherit
    # (prepare_workers). Left at one: the worker loaders below need it set before they fork, and
    # the train step runs no OpenCV.
    set_flow_threads(1)
    store = _store_figures(shards, cfg, psnr_frames, loaders)
    rates = {m: loaders.rate(0, m) for m in MODALITIES}
    width, height = cfg.resize
    dis_s = flow_cost_per_clip(cfg.clip_len, (height, width), threads=1)
    many = loaders.rate(cfg.workers) if cfg.workers > 0 else None
    real, synthetic, use_amp = _step_rates(cfg, shards, loaders, steps)
    figures = TrainBenchFigures(
        machine=machine_description(),
        store=store,
        loader_clips_per_s=rates,
        dis_seconds_per_clip=dis_s,
        workers_clips_per_s=many,
        real_steps_per_s=real,
        synthetic_steps_per_s=synthetic,
        device=str(loaders.device),
        use_amp=use_amp,
    )
    click.echo("\n".join(figures.lines(cfg)))
    if json_out is not None:
        Path(json_out).write_text(json.dumps(store.to_json(), indent=1))


class _Loaders:
    """The real clip loader of ``cfg``, built for one measurement at a time."""

    def __init__(self, cfg: TrainConfig, shards: ShardSet, frames: FrameSource, clips: int):
        self.cfg, self.shards, self.frames, self.clips = cfg, shards, frames, clips
        self.device = resolve_device(cfg.device)

    def dataset(self, modality: str, source: str = "auto") -> ClipDataset:
        from distinit.pipeline.frame_source import open_frame_source
        from distinit.train.clips import ClipDataset
        from distinit.train.loop import clip_spec

        cfg = self.cfg
        spec = clip_spec(dataclasses.replace(cfg, modality=modality), self.shards.views)
        where = (
            self.frames
            if source == "auto"
            else open_frame_source(self.shards, cfg.resize, prefer=source)
        )
        return ClipDataset(self.shards, where, spec, seed=0, global_batch=cfg.batch_size)

    def loader(
        self, workers: int, steps: int, modality: str | None = None, source: str = "auto"
    ) -> DataLoader[Batch]:
        from torch.utils.data import DataLoader

        from distinit.train.clips import StepSampler, prepare_workers, worker_init

        prepare_workers(workers)
        batch = self.cfg.batch_size
        return DataLoader(
            self.dataset(modality or self.cfg.modality, source),
            batch_size=batch,
            sampler=StepSampler(0, steps, batch, 0, 1),
            num_workers=workers,
            worker_init_fn=worker_init,
            pin_memory=self.device.type == "cuda",
        )

    def rate(self, workers: int, modality: str | None = None, source: str = "auto") -> float:
        """Clips per second after the first batch (worker spawn, first decode)."""
        steps = max(1, self.clips // self.cfg.batch_size) + 1
        it = iter(self.loader(workers, steps, modality, source))
        next(it)
        t0 = time.perf_counter()
        n = sum(len(b["clip"]) for b in it)
        return n / (time.perf_counter() - t0)


def _step_rates(
    cfg: TrainConfig, shards: ShardSet, loaders: _Loaders, steps: int
) -> tuple[float, float, bool]:
    """Train steps/s fed by the real loader, and by one synthetic batch already in device
    memory (the ceiling); and whether they ran in mixed precision."""
    dev = loaders.device
    step, use_amp = _train_step(cfg, shards, dev)
    real = _steps_per_s(step, iter(loaders.loader(cfg.workers, steps + 2)), steps, dev)
    synthetic_batch = _synthetic_batch(cfg, shards, dev)

    def forever() -> Iterator[Batch]:
        while True:
            yield synthetic_batch

    return real, _steps_per_s(step, forever(), steps, dev), use_amp


def _train_step(
    cfg: TrainConfig, shards: ShardSet, dev: torch.device
) -> tuple[Callable[[Batch], None], bool]:
    """One optimizer step of the student as `distinit train` takes it."""
    import torch

    from distinit.pipeline.clip_rules import input_channels
    from distinit.train.loop import build_optimizer
    from distinit.train.loss import distillation_loss
    from distinit.train.students import Student

    # Keyed as the loop keys them: a teacher may give logits and an embedding (NAME:embedding).
    heads = {t.key: t.num_classes for t in shards.teachers}
    kinds = {t.key: t.kind for t in shards.teachers}
    weights = {t: cfg.weight_of(t) for t in heads}
    torch.manual_seed(0)
    channels = input_channels(cfg.modality)
    net = Student(cfg.student, heads, in_channels=channels).to(dev).train()
    optimizer = build_optimizer(cfg, net)
    use_amp = cfg.amp and dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    def step(batch: Batch) -> None:
        x = batch["clip"].to(dev, non_blocking=True)  # (B, T, H, W, 3|2) uint8 rgb / float flow
        targets = {k: v.to(dev, non_blocking=True) for k, v in batch["targets"].items()}
        with torch.autocast(dev.type, dtype=torch.float16, enabled=use_amp):
            out = net(net.normalize(x))
        loss, _ = distillation_loss(
            out, targets, cfg.temperature, weights, kinds, cfg.embedding_loss
        )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step, use_amp


def _steps_per_s(
    step: Callable[[Batch], None], batches: Iterator[Batch], steps: int, dev: torch.device
) -> float:
    import torch

    for _ in range(2):  # warm-up
        step(next(batches))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(next(batches))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return steps / (time.perf_counter() - t0)


def _synthetic_batch(cfg: TrainConfig, shards: ShardSet, dev: torch.device) -> Batch:
    """A batch shaped as the loader's, already on the device: no loader, no copy."""
    import torch

    from distinit.pipeline.clip_rules import input_channels

    shape = (cfg.batch_size, cfg.clip_len, cfg.crop, cfg.crop, input_channels(cfg.modality))
    clip = (
        torch.randint(0, 256, shape, dtype=torch.uint8)
        if cfg.modality == "rgb"
        else torch.rand(shape) * 2 - 1  # flow: float in [-1, 1]
    )
    n = cfg.batch_size
    return {
        "clip": clip.to(dev),
        "targets": {  # (B, C) distributions, or (B, D) unit embeddings
            t.key: torch.nn.functional.normalize(torch.randn(n, t.num_classes), dim=1)
            if t.kind == "embedding"
            else torch.softmax(torch.randn(n, t.num_classes), dim=1)
            for t in shards.teachers
        },
    }


def _store_figures(
    shards: ShardSet, cfg: TrainConfig, psnr_frames: int, loaders: _Loaders
) -> StoreFigures:
    """Store vs source loader (one process, one thread = one core), store size and quality."""
    import torch

    from distinit.pipeline.frame_source import resolve_videos_root

    figures = StoreFigures()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if shards.store is not None and shards.store.size == cfg.resize:
            figures.store_clips_per_s_per_core = loaders.rate(0, "rgb", "store")
            figures.store_bytes_per_frame = shards.store_nbytes() / shards.total_rows()
        try:
            root = resolve_videos_root(shards, cfg.videos)
        except ConfigError as exc:
            figures.source_not_measured = str(exc)
        else:
            figures.source_clips_per_s_per_core = loaders.rate(0, "rgb", "source")
            if figures.store_bytes_per_frame is not None:
                figures.store_psnr_db, figures.store_psnr_frames = _store_psnr(
                    shards, cfg, root, psnr_frames
                )
    finally:
        torch.set_num_threads(threads)
    return figures


def _store_psnr(
    shards: ShardSet, cfg: TrainConfig, root: Path, psnr_frames: int
) -> tuple[float, int]:
    """PSNR of the store against the source at the same size, and over how many frames: whole
    videos in a seeded order, one source decode each, until ``psnr_frames`` (a pooled figure
    over every frame of the sample clips, not a noisy sample)."""
    import numpy as np

    from distinit.pipeline.frame_source import SourceFrames, StoreFrames
    from distinit.pipeline.framestore import psnr

    videos = shards.ok_videos()
    order = np.random.default_rng(0).permutation(len(videos))
    store, source = StoreFrames(shards), SourceFrames(shards, cfg.resize, root)
    a, b, counted = [], [], 0
    for i in order:
        r = videos[int(i)]
        rows = np.arange(min(r.row_count, psnr_frames - counted))
        a.append(store(r.id, rows))
        b.append(source(r.id, rows))
        counted += len(rows)
        if counted >= psnr_frames:
            break
    return psnr(np.concatenate(a), np.concatenate(b)), counted


if __name__ == "__main__":
    bench_train()
