"""``distinit extract`` and ``distinit inspect``: the command-line face of stage one.

Only click and the config are imported at module level; torch and the runner load when a command
runs.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from typing import TYPE_CHECKING

import click

from distinit.extract.config import (
    COMPILE_AUTO_MIN_VIDEOS,
    ExtractConfig,
    parse_teacher_weights,
)
from distinit.pipeline import stopping
from distinit.pipeline.cli import FRAME_SIZE
from distinit.pipeline.errors import ConfigError, Interrupted
from distinit.pipeline.progress import ProgressLine, format_duration
from distinit.pipeline.runtime import process_from_environment
from distinit.pipeline.views import DEFAULT_POSITIONS

if TYPE_CHECKING:
    from distinit.pipeline.shards import ShardSet

RECIPE_VIEW = "recipe"


class _ViewsType(click.ParamType):
    """``--views``: a number of crop positions, or ``recipe`` (None)."""

    name = "N|recipe"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int | None:
        if value is None or isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text == RECIPE_VIEW:
            return None
        if text.isdigit() and int(text) >= 1:
            return int(text)
        self.fail(f"{value!r}: give a number of crop positions (1 or more) or 'recipe'", param, ctx)


VIEWS = _ViewsType()

# inspect --verify: cached embeddings must point where freshly computed ones do.
EMBEDDING_MIN_COSINE = 0.999


@click.command()
@click.option(
    "--videos",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory searched recursively for videos.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Shard directory (created; re-running resumes).",
)
@click.option(
    "--teacher",
    "teachers",
    multiple=True,
    default=("efficientnet_lite0",),
    show_default=True,
    help="Teacher NAME or NAME:embedding (its pooled image embedding instead of its logits; "
    "give both NAME and NAME:embedding for both from one pass). NAME: efficientnet_lite0, "
    "places365_resnet50, timm/<model>[.<tag>], or a torchvision classifier. Repeat for several "
    "(frames are decoded once for all). 'none': only the frame store (e.g. of an evaluation "
    "dataset, for eval --store).",
)
@click.option(
    "--teacher-weights",
    multiple=True,
    metavar="[NAME=]PATH",
    help="Local weights file for a teacher (default: the teacher's offline source).",
)
@click.option(
    "--fps",
    type=float,
    default=None,
    help="Keep the first native frame at or after each 1/FPS s; frames are never duplicated, "
    "so an FPS above the video's own rate keeps every native frame [default: every frame].",
)
@click.option(
    "--batch-size",
    type=int,
    default=None,
    help="Frames per teacher batch [default: on CPU 8; on CUDA measured at start-up on the "
    "first frames: the largest that fits and still speeds up]. On CPU the teacher runs 8 "
    "frames a call whatever this is (padded), so the targets do not depend on it.",
)
@click.option(
    "--workers",
    type=int,
    default=2,
    show_default=True,
    help="Videos decoded at once (ffmpeg processes).",
)
@click.option(
    "--decoder-threads",
    type=int,
    default=1,
    show_default=True,
    help="Threads inside each ffmpeg (0 = ffmpeg decides).",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto (cuda when present), cpu, cuda, cuda:N.",
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
    default="auto",
    show_default=True,
    help="Teacher arithmetic; auto = fp16/bf16 on CUDA, fp32 on CPU.",
)
@click.option(
    "--compile",
    "compile_mode",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="torch.compile the teachers: ~2x faster on CPU after a one-off ~30 s; "
    f"auto = on from {COMPILE_AUTO_MIN_VIDEOS} videos.",
)
@click.option(
    "--num-shards",
    type=int,
    default=None,
    help="Total ranks [default: $WORLD_SIZE or $SLURM_NTASKS, else 1].",
)
@click.option(
    "--shard-index",
    type=int,
    default=None,
    help="This rank [default: $RANK or $SLURM_PROCID, else 0].",
)
@click.option(
    "--videos-per-shard",
    type=int,
    default=200,
    show_default=True,
    help="Videos per shard file (a crash loses at most one unfinished shard).",
)
@click.option(
    "--frames",
    "frames_mode",
    type=click.Choice(["store", "none"]),
    default="store",
    show_default=True,
    help="store: also keep every cached frame at --store-size in the shards (H.264, ~1.8 KB "
    "per frame), so training reads clips by row and never needs the source videos; "
    "none: targets only (training then decodes the source videos).",
)
@click.option(
    "--store-size",
    type=FRAME_SIZE,
    default="171x128",
    show_default=True,
    help="Size of the stored frames: the student's frame size (train's --resize), stretched.",
)
@click.option(
    "--views",
    type=VIEWS,
    default=str(DEFAULT_POSITIONS),
    show_default=True,
    help="Crop positions of every frame the teachers run on, spanning the frame on each axis "
    "(each also mirrored unless --no-mirror-views): train draws its crop among them, so each "
    "target is the teacher on exactly what the student sees. N times the teacher time and "
    "target bytes. 'recipe': one view, the teacher's own centre crop (matches no student crop).",
)
@click.option(
    "--crop",
    type=int,
    default=None,
    help="Side of the student's square crop of the --store-size frame (train's --crop) "
    "[default: 7/8 of its shorter side, 112 for 171x128].",
)
@click.option(
    "--mirror-views/--no-mirror-views",
    default=True,
    show_default=True,
    help="Also run the teachers on each view mirrored (train then flips; without, it does not).",
)
@click.option(
    "--retry-failed", is_flag=True, help="Try again the videos an earlier run recorded as failed."
)
@click.option(
    "--strict",
    is_flag=True,
    help="Exit with status 1 if any video failed (in this run or an earlier one).",
)
def extract(
    videos: str,
    out: str,
    teachers: tuple[str, ...],
    teacher_weights: tuple[str, ...],
    fps: float | None,
    batch_size: int | None,
    workers: int,
    decoder_threads: int,
    device: str,
    precision: str,
    compile_mode: str,
    num_shards: int | None,
    shard_index: int | None,
    videos_per_shard: int,
    retry_failed: bool,
    strict: bool,
    frames_mode: str,
    store_size: tuple[int, int],
    views: int | None,
    crop: int | None,
    mirror_views: bool,
) -> None:
    """Decode every frame of every video once, run the teacher(s), write logits to HDF5 shards."""
    env = process_from_environment()  # torchrun's or Slurm's rank, else 0 of 1
    env_index, env_shards = env.rank, env.world_size
    cfg = ExtractConfig(
        videos=videos,
        out=out,
        teachers=teachers,
        teacher_weights=parse_teacher_weights(teacher_weights, teachers),
        fps=fps,
        batch_size=batch_size,
        workers=workers,
        decoder_threads=decoder_threads,
        device=device,
        precision=precision,
        compile=compile_mode,
        num_shards=env_shards if num_shards is None else num_shards,
        shard_index=env_index if shard_index is None else shard_index,
        videos_per_shard=videos_per_shard,
        strict=strict,
        retry_failed=retry_failed,
        frames=frames_mode,
        store_size=store_size,
        views=views,
        crop=crop,
        mirror_views=mirror_views,
    )
    from distinit.extract.runner import Progress, run_extract
    from distinit.extract.teachers import is_known_teacher, unknown_teacher

    for name in cfg.teacher_names:
        if not is_known_teacher(name):
            raise unknown_teacher(name)

    line = ProgressLine()

    def show(p: Progress) -> None:
        expected = f"/~{p.frames_expected:.0f}" if p.frames_expected else ""
        line.update(
            f"videos {p.videos_done + p.videos_failed}/{p.videos_total} ({p.videos_failed} failed)"
            f"  frames {p.frames}{expected}  {p.frames_per_second:.1f} frames/s"
            f"  elapsed {format_duration(p.elapsed)}  ETA {format_duration(p.eta_seconds)}",
            final=p.videos_done + p.videos_failed == p.videos_total,
        )

    try:
        summary = run_extract(cfg, progress=show)
    finally:
        line.close()
    if summary.videos_total == 0:  # videos exist, but every one hashes to other ranks
        click.echo(
            f"no videos for rank {cfg.shard_index} of {cfg.num_shards} under {cfg.videos}",
            err=True,
        )
    for video_id, reason in summary.failures:
        click.echo(f"failed: {video_id}: {reason}", err=True)
    for video_id, reason in summary.warnings:
        click.echo(f"partly decoded: {video_id}: {reason}", err=True)
    rate = summary.frames / summary.seconds if summary.seconds > 0 else 0.0
    earlier = (
        f", {summary.failed_earlier} of them failed earlier (--retry-failed tries again)"
        if summary.failed_earlier
        else ""
    )
    click.echo(
        f"{summary.done} videos done, {summary.failed} failed, {summary.skipped} skipped "
        f"(already in {cfg.out}{earlier}); {summary.frames} frames saved in {summary.seconds:.1f}s "
        f"({rate:.1f} frames/s); {summary.bytes_written / 1e6:.2f} MB written to {cfg.out}"
    )
    if summary.interrupted:
        signum = stopping.received_signal() or signal.SIGINT
        raise Interrupted(
            f"{signal.Signals(signum).name}: finished videos are saved. Run the same command "
            "again to resume.",
            signum,
        )
    if strict and (summary.failed or summary.failed_earlier):
        sys.exit(1)


@click.command()
@click.argument("shards", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option(
    "--video",
    "video_id",
    default=None,
    help="A video id: its path relative to the directory given to extract --videos.",
)
@click.option("--teacher", default=None, help="Teacher for --video [default: the first].")
@click.option(
    "--rows",
    default=None,
    metavar="A:B[:S]",
    help="With --video and --save: rows A, A+S, ... < B (S defaults to 1), as a strided clip "
    "reads them.",
)
@click.option(
    "--save",
    "save_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="With --video --rows: write the frames stage two decodes as DIR/<row>.png (the "
    "store's size, uncropped).",
)
@click.option(
    "--from",
    "frames_from",
    type=click.Choice(["auto", "store", "source"]),
    default="auto",
    show_default=True,
    help="For --save: the frame store when present, or force the store / the source videos.",
)
@click.option("--top", type=int, default=5, show_default=True, help="Classes shown for --video.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    default=None,
    help="With --video: write a PNG timeline of the teacher's top classes.",
)
@click.option(
    "--verify",
    type=int,
    default=None,
    metavar="N",
    help="Check every checksum and the store's GOP tables, then decode N distinct random rows "
    "(all rows if fewer) from the store, compare them with the source videos (PSNR) and re-run "
    "the teachers on them; exit 1 on damage or a mismatch. Source videos not found: those two "
    "are skipped (see --videos).",
)
@click.option(
    "--consistency",
    type=int,
    default=None,
    metavar="N",
    help="Draw N training clips with the real loader and re-run the teachers from the source "
    "videos on exactly the crop each clip's student input covers; print how far the loader's "
    "targets are (KL, cosine). Exit 1 if shards with views miss the cache's noise floor.",
)
@click.option(
    "--tolerance",
    type=float,
    default=0.05,
    show_default=True,
    help="Largest allowed KL (nats) between cached and recomputed predictions for --verify.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed choosing the --verify frames."
)
@click.option(
    "--videos",
    "videos_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the source videos are now, if they moved since extract [default: the "
    "directory extract read]. Used by --verify (store PSNR, teacher recompute) and by --save "
    "when the frames come from the source.",
)
def inspect(
    shards: str,
    as_json: bool,
    video_id: str | None,
    teacher: str | None,
    rows: str | None,
    save_dir: str | None,
    frames_from: str,
    top: int,
    plot: str | None,
    verify: int | None,
    consistency: int | None,
    tolerance: float,
    seed: int,
    videos_dir: str | None,
) -> None:
    """Summarise a shard directory, show a video's top classes, or verify the cached targets."""
    from distinit.extract import inspection
    from distinit.pipeline.shards import ShardSet

    shard_set = ShardSet(shards)
    if consistency is not None:
        _consistency(shard_set, consistency, seed, videos_dir, as_json)
        return
    if verify is not None:
        line, started = ProgressLine(), time.monotonic()

        def progress(text: str) -> None:
            if time.monotonic() - started > 2.0:  # a quick check prints only its result
                line.update(f"verify: {text}")

        report = inspection.verify(
            shard_set, verify, seed=seed, videos=videos_dir, progress=progress
        )
        line.close()
        ok = report["ok"] = (
            not report["problems"]
            and report["max_kl"] <= tolerance
            and report.get("embedding_mean_cosine", 1.0) >= EMBEDDING_MIN_COSINE
        )
        report["tolerance"] = tolerance
        click.echo(json.dumps(report) if as_json else inspection.format_verify(report))
        if not ok:
            sys.exit(1)
        return
    if (rows is None) != (save_dir is None):
        raise ConfigError("--rows and --save go together (with --video ID)")
    if save_dir is not None:
        if video_id is None or rows is None:
            raise ConfigError("--save needs --video ID and --rows A:B[:S]")
        written, where = inspection.save_rows(
            shard_set, video_id, rows, save_dir, frames_from, videos=videos_dir
        )
        click.echo(f"wrote {len(written)} frames to {save_dir} (from the {where})")
        return
    if video_id is not None:
        if plot is not None:
            inspection.plot_timeline(shard_set, video_id, teacher, top, plot)
            click.echo(f"wrote {plot}", err=True)
        result = inspection.video_top(shard_set, video_id, teacher, top)
        click.echo(json.dumps(result) if as_json else inspection.format_top(result))
        return
    if plot is not None:
        raise ConfigError("--plot needs --video ID")
    summary = inspection.summary(shard_set)
    click.echo(json.dumps(summary) if as_json else inspection.format_summary(summary))


def _consistency(
    shard_set: ShardSet, clips: int, seed: int, videos_dir: str | None, as_json: bool
) -> None:
    """inspect --consistency: print the figure; exit 1 when targets of views are not the
    teacher's output on the crops (a broken view mapping)."""
    from distinit.apps import consistency as check

    line, started = ProgressLine(), time.monotonic()

    def progress(text: str) -> None:
        if time.monotonic() - started > 2.0:
            line.update(f"consistency: {text}")

    try:
        report = check.check_consistency(
            shard_set, clips, videos=videos_dir, seed=seed, progress=progress
        )
    finally:
        line.close()
    ok = shard_set.views is None or report.consistent()
    click.echo(
        json.dumps({**report.to_json(), "ok": ok}) if as_json else check.format_consistency(report)
    )
    if not ok:
        click.echo(
            f"inconsistent: the targets of {shard_set.directory} are not the teacher's output on "
            f"the crops the loader cuts (KL mean above {check.MAX_KL_MEAN:g} or cosine below "
            f"{check.MIN_COSINE:g}); extract them again",
            err=True,
        )
        sys.exit(1)


@click.command()
def teachers() -> None:
    """List every teacher name `distinit extract --teacher` accepts, and whether its weights
    are on this machine."""
    from distinit.extract.teachers import known_teachers, weights_status

    names = known_teachers()
    width = max(map(len, names))
    for name in names:
        click.echo(f"{name:<{width}}  {weights_status(name)}")
