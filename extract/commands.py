"""``distinit extract`` and ``distinit inspect``: the command-line face of stage one.

Only click and the config are imported at module level; torch and the runner load when a command
runs.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from distinit.extract.config import ExtractConfig, InspectConfig
from distinit.pipeline import stopping
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.options import config_from, config_options
from distinit.pipeline.progress import ProgressLine, format_duration

if TYPE_CHECKING:
    from distinit.extract.runner import ExtractSummary, Progress
    from distinit.pipeline.shards import ShardSet

# inspect --verify: cached embeddings must point where freshly computed ones do.
EMBEDDING_MIN_COSINE = 0.999
CHECK_QUIET_S = 2.0  # inspect's checks: a quick one prints only its result, no progress line


@click.command()
@config_options(ExtractConfig, replay="SHARDS/manifest.json (extract writes it last)")
def extract(**params: Any) -> None:
    """Decode every frame of every video once, run the teacher(s), write logits to HDF5 shards.

    \b
      distinit extract --videos VIDEOS --out SHARDS
      distinit extract --config SHARDS/manifest.json --out SHARDS2 --views recipe
    """
    cfg = config_from(ExtractConfig, params)
    from distinit.extract.runner import run_extract
    from distinit.extract.teachers import is_known_teacher, unknown_teacher

    for name in cfg.teacher_names:
        if not is_known_teacher(name):
            raise unknown_teacher(name)
    with ProgressLine() as line:
        summary = run_extract(cfg, progress=lambda p: _show_progress(line, p))
    _report(cfg, summary)
    if summary.interrupted:
        raise stopping.interrupted("", "finished videos are saved")
    if cfg.strict and (summary.failed or summary.failed_earlier):
        sys.exit(1)


def _show_progress(line: ProgressLine, p: Progress) -> None:
    expected = f"/~{p.frames_expected:.0f}" if p.frames_expected else ""
    line.update(
        f"videos {p.videos_done + p.videos_failed}/{p.videos_total} ({p.videos_failed} failed)"
        f"  frames {p.frames}{expected}  {p.frames_per_second:.1f} frames/s"
        f"  elapsed {format_duration(p.elapsed)}  ETA {format_duration(p.eta_seconds)}",
        final=p.videos_done + p.videos_failed == p.videos_total,
    )


def _report(cfg: ExtractConfig, summary: ExtractSummary) -> None:
    """The failures, partial decodes and the one summary line of a run."""
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


@click.command()
@click.argument("shards", type=click.Path(exists=True, file_okay=False))
@config_options(InspectConfig)
def inspect(shards: str, **params: Any) -> None:
    """Summarise a shard directory, show a video's top classes, or verify the cached targets."""
    cfg = config_from(InspectConfig, params, fixed={"shards": shards})
    _inspect(cfg)


def _inspect(cfg: InspectConfig) -> None:
    from distinit.extract import inspection
    from distinit.pipeline.shards import ShardSet

    shard_set = ShardSet(cfg.shards)
    if cfg.consistency is not None:
        _consistency(shard_set, cfg.consistency, cfg.seed, cfg.videos_dir, cfg.as_json)
    elif cfg.verify is not None:
        _verify(shard_set, cfg.verify, cfg.seed, cfg.tolerance, cfg.videos_dir, cfg.as_json)
    elif cfg.rows is not None or cfg.save_dir is not None:
        if cfg.rows is None or cfg.save_dir is None or cfg.video_id is None:
            raise ConfigError("--rows A:B[:S] and --save DIR go together, with --video ID")
        written, where = inspection.save_rows(
            shard_set, cfg.video_id, cfg.rows, cfg.save_dir, cfg.frames_from, videos=cfg.videos_dir
        )
        click.echo(f"wrote {len(written)} frames to {cfg.save_dir} (from the {where})")
    elif cfg.video_id is not None:
        if cfg.plot is not None:
            inspection.plot_timeline(shard_set, cfg.video_id, cfg.teacher, cfg.top, cfg.plot)
            click.echo(f"wrote {cfg.plot}", err=True)
        result = inspection.video_top(shard_set, cfg.video_id, cfg.teacher, cfg.top)
        click.echo(json.dumps(result) if cfg.as_json else inspection.format_top(result))
    elif cfg.plot is not None:
        raise ConfigError("--plot needs --video ID")
    else:
        summary = inspection.summary(shard_set)
        click.echo(json.dumps(summary) if cfg.as_json else inspection.format_summary(summary))


def _verify(
    shard_set: ShardSet,
    rows: int,
    seed: int,
    tolerance: float,
    videos_dir: str | None,
    as_json: bool,
) -> None:
    """inspect --verify: print the report; exit 1 on damage or a mismatch."""
    from distinit.extract import verification

    with ProgressLine(quiet_for=CHECK_QUIET_S) as line:
        report = verification.verify(
            shard_set, rows, seed=seed, videos=videos_dir,
            progress=lambda text: line.update(f"verify: {text}"),
        )  # fmt: skip
    ok = report["ok"] = (
        not report["problems"]
        and report["max_kl"] <= tolerance
        and report.get("embedding_mean_cosine", 1.0) >= EMBEDDING_MIN_COSINE
    )
    report["tolerance"] = tolerance
    click.echo(json.dumps(report) if as_json else verification.format_verify(report))
    if not ok:
        sys.exit(1)


def _consistency(
    shard_set: ShardSet, clips: int, seed: int, videos_dir: str | None, as_json: bool
) -> None:
    """inspect --consistency: print the figure; exit 1 when targets of views are not the
    teacher's output on the crops (a broken view mapping)."""
    from distinit.apps import consistency as check

    with ProgressLine(quiet_for=CHECK_QUIET_S) as line:
        report = check.check_consistency(
            shard_set, clips, videos=videos_dir, seed=seed,
            progress=lambda text: line.update(f"consistency: {text}"),
        )  # fmt: skip
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
