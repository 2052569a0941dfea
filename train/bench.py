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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from distinit.pipeline.bench import machine_description
from distinit.pipeline.cli import FRAME_SIZE
from distinit.pipeline.device import resolve_device
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.runtime import DEFAULT_LOADER_WORKERS
from distinit.train.config import TrainConfig


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--targets", required=True, type=click.Path(file_okay=False), help="Shard dir.")
@click.option(
    "--videos",
    type=click.Path(file_okay=False),
    default=None,
    help="Videos dir. Default: recorded by extract.",
)
@click.option("--student", default="r2plus1d_18", show_default=True, help="Student network.")
@click.option(
    "--modality",
    type=click.Choice(["rgb", "flow"]),
    default="rgb",
    show_default=True,
    help="Student input for the worker and train-step measurements (the main-process loader "
    "is measured in both).",
)
@click.option("--clip-len", type=int, default=16, show_default=True, help="Frames per clip.")
@click.option(
    "--resize",
    type=FRAME_SIZE,
    default="171x128",
    show_default=True,
    help="Frame size WIDTHxHEIGHT, pixels.",
)
@click.option("--crop", type=int, default=112, show_default=True, help="Crop side, pixels.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Clips per step.")
@click.option(
    "--workers",
    type=int,
    default=DEFAULT_LOADER_WORKERS,
    show_default=f"one per core, at most 4; here {DEFAULT_LOADER_WORKERS}",
    help="Loader worker processes.",
)
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
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--amp/--no-amp", default=True, show_default=True, help="float16 autocast on CUDA.")
@click.option(
    "--psnr-frames",
    type=int,
    default=1000,
    show_default=True,
    help="Store frames compared with the source decoded at the same size: every row of videos "
    "taken in a seeded random order, up to this many.",
)
@click.option(
    "--json-out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the frame-store figures as JSON to this file.",
)
def bench_train(
    targets: str,
    videos: str | None,
    student: str,
    modality: str,
    clip_len: int,
    resize: tuple[int, int],
    crop: int,
    batch_size: int,
    workers: int,
    clips: int,
    steps: int,
    device: str,
    amp: bool,
    psnr_frames: int,
    json_out: str | None,
) -> None:
    """Benchmark the training data path of `distinit train` (about a minute on 2 CPU cores)."""
    import torch
    from torch.utils.data import DataLoader

    from distinit.pipeline.clip_rules import input_channels
    from distinit.pipeline.flow import set_flow_threads
    from distinit.pipeline.frame_source import open_frame_source
    from distinit.train.clips import ClipDataset, StepSampler, prepare_workers, worker_init
    from distinit.train.flow_cost import flow_cost_per_clip
    from distinit.train.loop import build_optimizer, clip_spec, open_targets
    from distinit.train.loss import distillation_loss
    from distinit.train.students import Student

    cfg = TrainConfig(
        targets=targets, out="-", videos=videos, student=student, modality=modality,
        clip_len=clip_len,
        resize=resize, crop=crop, batch_size=batch_size, workers=workers,
        device=device, amp=amp,
    )  # fmt: skip
    dev = resolve_device(cfg.device)
    shards, frames = open_targets(cfg)

    def dataset(modality_: str, source: str = "auto") -> ClipDataset:
        spec = clip_spec(dataclasses.replace(cfg, modality=modality_), shards.views)
        where = frames if source == "auto" else open_frame_source(shards, cfg.resize, prefer=source)
        return ClipDataset(shards, where, spec, seed=0, global_batch=batch_size)

    def loader(
        n_workers: int, steps_needed: int, modality_: str = modality, source: str = "auto"
    ) -> DataLoader[dict[str, Any]]:
        prepare_workers(n_workers)
        return DataLoader(
            dataset(modality_, source),
            batch_size=batch_size,
            sampler=StepSampler(0, steps_needed, batch_size, 0, 1),
            num_workers=n_workers,
            worker_init_fn=worker_init,
            pin_memory=dev.type == "cuda",
        )

    def loader_rate(n_workers: int, modality_: str = modality, source: str = "auto") -> float:
        it = iter(loader(n_workers, max(1, clips // batch_size) + 1, modality_, source))
        next(it)  # start-up (worker spawn, first decode) is not throughput
        t0 = time.perf_counter()
        n = sum(len(b["clip"]) for b in it)
        return n / (time.perf_counter() - t0)

    # The main process measured like a worker: one OpenCV thread, which is what workers inherit
    # (prepare_workers). Left at one: the worker loaders below need it set before they fork, and
    # the train step runs no OpenCV.
    set_flow_threads(1)
    click.echo(f"machine: {machine_description()}")
    store_figures = _store_figures(shards, cfg, psnr_frames, loader_rate)
    if json_out is not None:
        Path(json_out).write_text(json.dumps(store_figures, indent=1))
    rates = {m: loader_rate(0, m) for m in ("rgb", "flow")}
    for m, rate in rates.items():
        click.echo(f"loader, main process, {m}: {rate:.2f} clips/s (one worker's rate)")
    width, height = cfg.resize
    dis_s = flow_cost_per_clip(clip_len, (height, width), threads=1)
    click.echo(
        f"flow cost per clip ({clip_len} frames at {width}x{height}, one thread): loader "
        f"+{1000 * (1 / rates['flow'] - 1 / rates['rgb']):.1f} ms over RGB's "
        f"{1000 / rates['rgb']:.1f} ms; DIS alone on a moving texture {1000 * dis_s:.1f} ms"
    )
    if workers > 0:
        many = loader_rate(workers)
        click.echo(
            f"loader, {workers} worker{'s' * (workers != 1)}, {modality}: {many:.2f} clips/s "
            f"({many / workers:.2f} per worker)"
        )

    # Keyed as the loop keys them: a teacher may give logits and an embedding (NAME:embedding).
    heads = {t.key: t.num_classes for t in shards.teachers}
    kinds = {t.key: t.kind for t in shards.teachers}
    weights = {t: cfg.weight_of(t) for t in heads}
    torch.manual_seed(0)
    channels = input_channels(modality)
    net = Student(student, heads, in_channels=channels).to(dev).train()
    optimizer = build_optimizer(cfg, net)
    use_amp = amp and dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    def step(batch: dict[str, Any]) -> None:
        x = batch["clip"].to(dev, non_blocking=True)  # (B, T, H, W, 3|2) uint8 rgb / float flow
        targets_ = {k: v.to(dev, non_blocking=True) for k, v in batch["targets"].items()}
        with torch.autocast(dev.type, dtype=torch.float16, enabled=use_amp):
            out = net(net.normalize(x))
        loss, _ = distillation_loss(
            out, targets_, cfg.temperature, weights, kinds, cfg.embedding_loss
        )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def step_rate(batches: Iterator[dict[str, Any]]) -> float:
        for _ in range(2):
            step(next(batches))
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        for _ in range(steps):
            step(next(batches))
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return steps / (time.perf_counter() - t0)

    real = step_rate(iter(loader(workers, steps + 2)))
    shape = (batch_size, clip_len, crop, crop, channels)
    synthetic_clip = (
        torch.randint(0, 256, shape, dtype=torch.uint8)
        if modality == "rgb"
        else torch.rand(shape) * 2 - 1  # flow: float in [-1, 1]
    )
    synthetic_batch: dict[str, Any] = {
        "clip": synthetic_clip.to(dev),  # already on the device: no loader, no copy
        "targets": {  # (B, C) distributions, or (B, D) unit embeddings
            t: torch.nn.functional.normalize(torch.randn(batch_size, c), dim=1)
            if kinds[t] == "embedding"
            else torch.softmax(torch.randn(batch_size, c), dim=1)
            for t, c in heads.items()
        },
    }

    def forever() -> Iterator[dict[str, Any]]:
        while True:
            yield synthetic_batch

    synthetic = step_rate(forever())
    click.echo(
        f"train {modality} {student} on {dev}{' (amp)' if use_amp else ''}, batch {batch_size} x "
        f"{clip_len}x{crop}x{crop}: real loader {real:.3f} steps/s "
        f"({real * batch_size:.2f} clips/s), synthetic in-memory {synthetic:.3f} steps/s "
        f"({synthetic * batch_size:.2f} clips/s); real/synthetic = {real / synthetic:.2f}"
    )


def _store_figures(
    shards: Any, cfg: TrainConfig, psnr_frames: int, loader_rate: Any
) -> dict[str, float | None]:
    """Store vs source loader (one process, one thread = one core), store size and quality."""
    import numpy as np
    import torch

    from distinit.pipeline.frame_source import SourceFrames, StoreFrames, resolve_videos_root
    from distinit.pipeline.framestore import psnr

    figures: dict[str, float | None] = dict.fromkeys(
        (
            "store_clips_per_s_per_core",
            "source_clips_per_s_per_core",
            "store_bytes_per_frame",
            "store_psnr_db",
        )
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if shards.store is not None and shards.store.size == cfg.resize:
            figures["store_clips_per_s_per_core"] = loader_rate(0, "rgb", "store")
            figures["store_bytes_per_frame"] = shards.store_nbytes() / shards.total_rows()
        try:
            root = resolve_videos_root(shards, cfg.videos)
        except ConfigError as exc:
            click.echo(f"source path not measured: {exc}")
        else:
            figures["source_clips_per_s_per_core"] = loader_rate(0, "rgb", "source")
            if figures["store_bytes_per_frame"] is not None:
                # Whole videos in a seeded order, one source decode each, until psnr_frames:
                # a pooled figure over every frame of the sample clips, not a noisy sample.
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
                figures["store_psnr_db"] = psnr(np.concatenate(a), np.concatenate(b))
                figures["store_psnr_frames"] = counted
    finally:
        torch.set_num_threads(threads)
    store_rate, source_rate = (
        figures["store_clips_per_s_per_core"],
        figures["source_clips_per_s_per_core"],
    )
    w, h = cfg.resize
    what = f"{cfg.clip_len}-frame {w}x{h} clips (one process, one thread)"
    if store_rate is not None:
        click.echo(f"loader from the frame store: {store_rate:.1f} clips/s per core, {what}")
        click.echo(
            f"frame store: {figures['store_bytes_per_frame']:.0f} bytes/frame"
            + (
                f", PSNR {figures['store_psnr_db']:.2f} dB vs the source at {w}x{h} "
                f"(pooled over {figures['store_psnr_frames']:.0f} frames)"
                if figures["store_psnr_db"] is not None
                else ""
            )
        )
    else:
        click.echo(f"no frame store at {w}x{h} in these shards (extract --frames store)")
    if source_rate is not None:
        click.echo(f"loader from the source videos: {source_rate:.1f} clips/s per core, {what}")
    if store_rate is not None and source_rate is not None:
        click.echo(f"store / source = {store_rate / source_rate:.1f}x")
    return figures


if __name__ == "__main__":
    bench_train()
