"""``distinit bench memory``: stage one's peak memory against video length.

Each figure is the peak resident memory (ru_maxrss) of a fresh process extracting one generated
320x240, 30 fps video; a long video against a short one, frames only (every frame decoded, coded
into the store) and with the default teacher and views. Memory flat in video length means a
ratio near 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from distinit.pipeline.bench import machine_description
from distinit.pipeline.ffmpeg_binary import ffmpeg_binary

RSS_RATIO_TARGET = 1.15


@dataclass(frozen=True)
class MemoryFigure:
    """Peak RSS of extracting a short and a long video one way."""

    how: str
    short_minutes: float
    long_minutes: float
    short_mb: float
    long_mb: float
    long_seconds: float

    @property
    def ratio(self) -> float:
        return self.long_mb / self.short_mb


def make_video(path: Path, minutes: float) -> Path:
    """A 320x240, 30 fps testsrc video (x264 ultrafast: quick to make, quick to decode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [ffmpeg_binary(), "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", f"testsrc=size=320x240:rate=30:duration={minutes * 60:g}", "-c:v", "libx264",
         "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )  # fmt: skip
    return path


def peak_rss_mb(videos: Path, *options: str) -> tuple[float, float]:
    """Peak resident memory (MB) and wall seconds of ``distinit extract`` over ``videos`` in a
    fresh process with ``options``."""
    code = (
        "import resource, sys\n"
        "from distinit.pipeline.cli import main\n"
        "try:\n"
        "    main()\n"
        "finally:\n"
        "    print('maxrss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["extract", "--videos", str(videos), "--out", str(Path(tmp) / "s"), *options]
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
        seconds = time.monotonic() - started
    if done.returncode != 0:
        raise click.ClickException(f"distinit extract failed: {done.stderr.strip()[-300:]}")
    line = next(ln for ln in done.stderr.splitlines() if ln.startswith("maxrss "))
    return int(line.split()[1]) / 1024, seconds


def measure(
    how: str, short: Path, long: Path, minutes: tuple[float, float], *options: str
) -> MemoryFigure:
    short_mb, _ = peak_rss_mb(short.parent, *options)
    long_mb, seconds = peak_rss_mb(long.parent, *options)
    return MemoryFigure(how, *minutes, short_mb, long_mb, seconds)


def report(f: MemoryFigure) -> None:
    verdict = "ok" if f.ratio <= RSS_RATIO_TARGET else "OVER TARGET"
    click.echo(
        f"memory, {f.how}: peak RSS {f.long_mb:.0f} MB for {f.long_minutes:g} min vs "
        f"{f.short_mb:.0f} MB for {f.short_minutes:g} min = {f.ratio:.2f}x "
        f"(target <= {RSS_RATIO_TARGET}, {verdict}); the long one took {f.long_seconds:.0f} s"
    )


@click.command(
    help="Print stage one's peak memory for a long video against a short one (320x240, 30 fps): "
    "frames only, and with the default teacher and views at --teacher-fps."
)
@click.option("--short-minutes", type=float, default=1.0, show_default=True)
@click.option("--long-minutes", type=float, default=30.0, show_default=True)
@click.option(
    "--teacher-fps",
    type=float,
    default=1.0,
    show_default=True,
    help="Frame rate the teacher figure samples at (every frame would take hours on a CPU).",
)
@click.option("--skip-teacher", is_flag=True, help="Only the frames-only figure.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write figures.")
def bench_memory(
    short_minutes: float,
    long_minutes: float,
    teacher_fps: float,
    skip_teacher: bool,
    json_out: str | None,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        short = make_video(Path(tmp) / "short" / "v.mp4", short_minutes)
        long = make_video(Path(tmp) / "long" / "v.mp4", long_minutes)
        minutes = (short_minutes, long_minutes)
        click.echo(machine_description())
        ways = [("frames only", ("--teacher", "none"))]
        if not skip_teacher:
            how = f"default teacher and views at --fps {teacher_fps:g}"
            ways.append((how, ("--fps", f"{teacher_fps:g}")))
        figures = []
        for how, options in ways:  # each printed as soon as it is measured
            figures.append(measure(how, short, long, minutes, *options))
            report(figures[-1])
    if json_out:
        rows = [{**asdict(f), "ratio": f.ratio} for f in figures]
        Path(json_out).write_text(json.dumps(rows, indent=1))
