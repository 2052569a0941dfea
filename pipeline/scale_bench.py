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
    "extract_s": "extract --teacher none, s",
    "extract_ms_per_video": "  per video, ms",
    "resume_s": "extract again, all done, s",
    "manifest_s": "manifest regeneration, s",
    "inspect_s": "inspect (targets), s",
    "train_first_step_s": "train: start to first step, s",
}


@dataclass(frozen=True)
class ScaleFigures:
    """The figures measured at one count of videos (seconds unless the name says otherwise)."""

    videos: int
    extract_s: float
    resume_s: float
    manifest_s: float
    inspect_s: float
    train_first_step_s: float

    @property
    def extract_ms_per_video(self) -> float:
        return 1000 * self.extract_s / self.videos

    def value(self, figure: str) -> float:
        return float(getattr(self, figure))


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


def distinit(*args: str) -> float:
    """Seconds one ``distinit`` command takes in a fresh process; a failure stops the bench."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "distinit.pipeline.cli", *args], capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise click.ClickException(f"distinit {' '.join(args)} failed: {' / '.join(tail)}")
    return seconds


def manifest_seconds(shards: Path) -> float:
    """Seconds to regenerate ``shards/manifest.json`` (with the config it already records)."""
    from distinit.pipeline.shards import MANIFEST_NAME, write_manifest

    config = json.loads((shards / MANIFEST_NAME).read_text())["config"]
    start = time.perf_counter()
    write_manifest(shards, config)
    return time.perf_counter() - start


def first_step_seconds(targets: Path, run: Path) -> float:
    """Seconds from starting ``distinit train`` to its first line in ``run/log.jsonl``."""
    log_file = run / "log.jsonl"
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "distinit.pipeline.cli", "train", "--targets", str(targets),
         "--out", str(run), *TRAIN_OPTIONS],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seconds = None
    while process.poll() is None and seconds is None:
        if log_file.is_file() and log_file.read_text().strip():
            seconds = time.perf_counter() - start
        time.sleep(0.02)
    _, stderr = process.communicate()
    if process.returncode != 0 or seconds is None:
        tail = " / ".join(stderr.strip().splitlines()[-3:])
        raise click.ClickException(f"distinit train on {targets} logged no step: {tail}")
    return seconds


def measure(root: Path, count: int) -> ScaleFigures:
    videos = make_videos(root, count)
    frames, targets = root / f"frames-{count}", root / f"targets-{count}"
    extract = ("extract", "--videos", str(videos), "--out", str(frames), "--teacher", "none")
    extract_s = distinit(*extract)
    resume_s = distinit(*extract)
    manifest_s = manifest_seconds(frames)
    write_targets(videos, targets)
    inspect_s = distinit("inspect", str(targets))
    train_s = first_step_seconds(targets, root / f"run-{count}")
    return ScaleFigures(count, extract_s, resume_s, manifest_s, inspect_s, train_s)


def superlinear(results: Sequence[ScaleFigures]) -> list[str]:
    """The figures growing faster than the count of videos, from the first count to the last."""
    first, last = results[0], results[-1]
    limit = GROWTH_SLACK * last.videos / first.videos
    return [f for f in FIGURES if last.value(f) / first.value(f) > limit]


def print_table(results: Sequence[ScaleFigures]) -> None:
    first, last = results[0], results[-1]
    counts = [f"{r.videos} videos" for r in results]
    growth = f"x ({last.videos // first.videos}x videos)"
    width = max(map(len, FIGURES.values()))
    click.echo(f"{'':{width}}  " + "  ".join(f"{c:>13}" for c in counts) + f"  {growth:>16}")
    for figure, label in FIGURES.items():
        values = "  ".join(f"{r.value(figure):13.2f}" for r in results)
        ratio = last.value(figure) / first.value(figure)
        click.echo(f"{label:{width}}  {values}  {ratio:16.1f}")
    for figure in superlinear(results):
        click.echo(f"warning: {FIGURES[figure].strip()} grows faster than the number of videos")


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
        rows = [{**dataclasses.asdict(r), "extract_ms_per_video": r.extract_ms_per_video}
                for r in results]  # fmt: skip
        click.echo(json.dumps({"machine": machine_description(), "figures": rows}))
        return
    click.echo(machine_description())
    print_table(results)
