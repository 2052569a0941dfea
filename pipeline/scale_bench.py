"""``distinit bench scale``: does the cost of a run grow no faster than its number of videos?

For each count of tiny generated videos (hard links to one 2-frame clip under distinct nested
paths: the cost measured is per video, not per pixel), it times, each once:

* ``extract --teacher none`` into a fresh ``--out``: the frame store only, so the figure is the
  per-video cost of the pipeline (discovery, decoder start, shard writes, manifest), not a
  teacher's;
* the same command again, every video done: the cost of resuming;
* regenerating ``manifest.json`` from the shards, in this process;
* ``inspect`` of a shard directory with targets: extract's layout (200 videos a shard, the same
  frame store), written untimed with :class:`~distinit.pipeline.shards.ShardWriter` for a stand-in
  teacher, since running a real one on every video would make this bench hours long on CPU;
* ``train`` on those targets: seconds from starting the process to its first logged step.

Every command runs as a user runs it, in a fresh process through the CLI, so this module imports
no stage. The growth of each figure from the smallest count to the largest is printed beside the
growth of the count: a figure growing faster than the count is named in a warning.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from distinit.pipeline.bench import machine_description
from distinit.pipeline.ffmpeg_binary import ffmpeg_binary

CLIP_FRAMES = 2
CLIP_SIZE = (64, 48)
VIDEOS_PER_SHARD = 200  # extract's default --videos-per-shard
VIDEOS_PER_FOLDER = 100  # generated videos sit two folders deep, as in a real dataset's classes
# A figure whose growth exceeds the videos' growth by more than this is called superlinear
# (fixed start-up costs make a linear figure grow by less than the count).
GROWTH_SLACK = 1.25
TRAIN_OPTIONS = (
    "--device", "cpu", "--student", "r3d_18", "--max-steps", "1", "--batch-size", "2",
    "--clip-len", str(CLIP_FRAMES), "--resize", "x".join(map(str, CLIP_SIZE)), "--crop", "32",
)  # fmt: skip
FIGURES = {  # field -> what the table calls it
    "extract": "extract --teacher none",
    "resume": "extract again, all done",
    "manifest": "manifest regeneration",
    "inspect": "inspect (targets)",
    "train_first_step": "train: start to first step",
}


@dataclass(frozen=True)
class Cost:
    """Wall-clock seconds, and CPU seconds (of the command and the processes it waited for): on
    a machine shared with other work the CPU figure is the steadier one."""

    wall_s: float
    cpu_s: float


@dataclass(frozen=True)
class ScaleFigures:
    """The costs measured at one count of videos."""

    videos: int
    extract: Cost
    resume: Cost
    manifest: Cost
    inspect: Cost
    train_first_step: Cost  # CPU: the training process alone, its loader workers not counted

    def cost(self, figure: str) -> Cost:
        value = getattr(self, figure)
        assert isinstance(value, Cost)
        return value


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _process_cpu(pid: int) -> float:
    """CPU seconds process ``pid`` has used so far (Linux's /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def make_videos(root: Path, count: int) -> Path:
    """``count`` videos under ``root/videos-COUNT``, hard links to one clip made with ffmpeg."""
    clip = root / "clip.mp4"
    if not clip.exists():
        width, height = CLIP_SIZE
        subprocess.run(
            [
                ffmpeg_binary(), "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi",
                "-i", f"testsrc=size={width}x{height}:rate=25:duration={CLIP_FRAMES / 25}",
                "-pix_fmt", "yuv420p", "-c:v", "libx264", str(clip),
            ],
            check=True,
        )  # fmt: skip
    videos = root / f"videos-{count}"
    for i in range(count):
        folder = videos / f"g{i // VIDEOS_PER_FOLDER**2:02d}" / f"c{i // VIDEOS_PER_FOLDER:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        os.link(clip, folder / f"v{i:06d}.mp4")
    return videos


def write_targets(videos: Path, out: Path) -> Path:
    """Shards of every video under ``videos`` as extract lays them out, with the store coded
    from one decode of the clip (every video is that clip) and logits of a stand-in teacher."""
    import numpy as np

    from distinit.pipeline.framestore import StoreFormat, encode_gop
    from distinit.pipeline.shards import (
        ShardWriter,
        TeacherInfo,
        VideoRecord,
        quantize,
        write_manifest,
    )
    from distinit.pipeline.video import FrameGeometry, iter_video

    store = StoreFormat(*CLIP_SIZE)
    chunks = list(iter_video(videos.parent / "clip.mp4", FrameGeometry(*CLIP_SIZE)))
    frames = np.concatenate([c.frames for c in chunks])
    times, indices = np.concatenate([c.times for c in chunks]), np.arange(len(frames))
    gops = [(len(frames), encode_gop(frames, store))]
    teacher = TeacherInfo("stand-in", 10, tuple(f"class{i}" for i in range(10)), "0" * 64,
                          "none: logits made up by bench scale", "none")  # fmt: skip
    logits = {teacher.key: quantize(np.eye(len(frames), 10, dtype=np.float32))}
    ids = sorted(p.relative_to(videos).as_posix() for p in videos.rglob("*.mp4"))
    out.mkdir()
    for n, start in enumerate(range(0, len(ids), VIDEOS_PER_SHARD)):
        path = out / f"shard-r0000of0001-{n:05d}.h5"
        writer = ShardWriter(path, [teacher], {"videos_root": str(videos)}, store)
        for video_id in ids[start : start + VIDEOS_PER_SHARD]:
            record = VideoRecord(id=video_id, status="ok", native_frames=len(frames), fps=25.0)
            writer.add_video(record, times, indices, logits, gops)
        writer.close()
    write_manifest(out, {"videos": str(videos), "teachers": [teacher.name]})
    return out


def distinit(*args: str) -> Cost:
    """What one ``distinit`` command costs in a fresh process; a failure stops the bench."""
    start, cpu = time.perf_counter(), _children_cpu()
    done = subprocess.run(
        [sys.executable, "-m", "distinit.pipeline.cli", *args], capture_output=True, text=True
    )
    cost = Cost(time.perf_counter() - start, _children_cpu() - cpu)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise click.ClickException(f"distinit {' '.join(args)} failed: {' / '.join(tail)}")
    return cost


def manifest_cost(shards: Path) -> Cost:
    """Regenerating ``shards/manifest.json`` (with the config it already records)."""
    from distinit.pipeline.shards import MANIFEST_NAME, write_manifest

    config = json.loads((shards / MANIFEST_NAME).read_text())["config"]
    start, cpu = time.perf_counter(), time.process_time()
    write_manifest(shards, config)
    return Cost(time.perf_counter() - start, time.process_time() - cpu)


def first_step_cost(targets: Path, run: Path) -> Cost:
    """From starting ``distinit train`` to its first line in ``run/log.jsonl``."""
    log_file = run / "log.jsonl"
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "distinit.pipeline.cli", "train", "--targets", str(targets),
         "--out", str(run), *TRAIN_OPTIONS],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    cost = None
    while process.poll() is None and cost is None:
        if log_file.is_file() and log_file.read_text().strip():
            cost = Cost(time.perf_counter() - start, _process_cpu(process.pid))
        time.sleep(0.02)
    _, stderr = process.communicate()
    if process.returncode != 0 or cost is None:
        tail = " / ".join(stderr.strip().splitlines()[-3:])
        raise click.ClickException(f"distinit train on {targets} logged no step: {tail}")
    return cost


def measure(root: Path, count: int) -> ScaleFigures:
    videos = make_videos(root, count)
    frames, targets = root / f"frames-{count}", root / f"targets-{count}"
    extract = ("extract", "--videos", str(videos), "--out", str(frames), "--teacher", "none")
    extracted = distinit(*extract)
    resumed = distinit(*extract)
    manifest = manifest_cost(frames)
    write_targets(videos, targets)
    inspected = distinit("inspect", str(targets))
    first_step = first_step_cost(targets, root / f"run-{count}")
    return ScaleFigures(count, extracted, resumed, manifest, inspected, first_step)


def superlinear(results: Sequence[ScaleFigures]) -> list[str]:
    """The figures whose CPU cost grows faster than the count of videos, first count to last."""
    first, last = results[0], results[-1]
    limit = GROWTH_SLACK * last.videos / first.videos
    return [f for f in FIGURES if last.cost(f).cpu_s / first.cost(f).cpu_s > limit]


def print_table(results: Sequence[ScaleFigures]) -> None:
    """Seconds wall / CPU at each count, their growth from the first count to the last, and the
    CPU milliseconds each added video cost (what a figure comes to at a larger count)."""
    first, last = results[0], results[-1]
    width = max(map(len, FIGURES.values()))
    head = "".join(f"{f'{r.videos} videos':>16}" for r in results)
    click.echo(f"{'seconds, wall / CPU':{width}}{head}{'growth':>16}{'CPU ms/video':>14}")
    for figure, label in FIGURES.items():
        costs = [r.cost(figure) for r in results]
        values = "".join(f"{f'{c.wall_s:.2f} / {c.cpu_s:.2f}':>16}" for c in costs)
        a, b = costs[0], costs[-1]
        growth = f"{b.wall_s / a.wall_s:.1f}x / {b.cpu_s / a.cpu_s:.1f}x"
        marginal = 1000 * (b.cpu_s - a.cpu_s) / (last.videos - first.videos)
        click.echo(f"{label:{width}}{values}{growth:>16}{marginal:14.2f}")
    per_video = "  ".join(f"{1000 * r.extract.wall_s / r.videos:.0f}" for r in results)
    click.echo(f"extract, wall ms per video: {per_video}")
    for figure in superlinear(results):
        click.echo(f"warning: {FIGURES[figure]} grows faster than the number of videos")


def parse_counts(value: str) -> list[int]:
    try:
        counts = [int(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r}: give counts such as 1000,10000") from None
    if len(counts) < 2 or counts != sorted(set(counts)) or counts[0] < 1:
        raise click.BadParameter(f"{value!r}: give at least two increasing positive counts")
    return counts


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--videos-count",
    "counts",
    default="1000,10000",
    show_default=True,
    callback=lambda ctx, param, value: parse_counts(value),
    help="Numbers of videos to measure at, comma-separated, increasing.",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the videos, shards and runs are written (must be empty or absent; kept). "
    "Default: a temporary directory, removed at the end.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON list.")
def bench_scale(counts: list[int], workdir: Path | None, as_json: bool) -> None:
    """Cost of extract, resume, manifest, inspect and train start-up at growing video counts."""
    if workdir is not None and workdir.exists() and any(workdir.iterdir()):
        raise click.BadParameter(f"{workdir} is not empty", param_hint="--workdir")
    root = workdir or Path(tempfile.mkdtemp(prefix="distinit-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        results = []
        for count in counts:
            if not as_json:
                click.echo(f"measuring at {count} videos ...", err=True)
            results.append(measure(root, count))
    finally:
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    if as_json:
        rows = [dataclasses.asdict(r) for r in results]
        click.echo(json.dumps({"machine": machine_description(), "figures": rows}))
        return
    click.echo(machine_description())
    print_table(results)
