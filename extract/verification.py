"""``distinit inspect --verify``: shards checked against their own bytes, their frame store
against the source videos, and their targets against the recorded teachers run again."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from distinit.extract.divergence import cosine_rows, kl_divergence
from distinit.pipeline.errors import ConfigError, ShardError
from distinit.pipeline.shards import ShardSet
from distinit.pipeline.views import ViewSet

if TYPE_CHECKING:
    from distinit.extract.inference import TeacherRunner


def draw_rows(shards: ShardSet, n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` distinct rows drawn uniformly from every ok video's rows (all of them when ``n`` is
    at least their number), as ascending local rows per video id: each video is then decoded
    once, however many of its rows were drawn."""
    videos = shards.ok_videos()
    counts = np.array([r.row_count for r in videos], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)])
    total = int(starts[-1])
    picks = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
    which = np.searchsorted(starts, picks, side="right") - 1
    return {videos[i].id: picks[which == i] - starts[i] for i in np.unique(which)}


Progress = Callable[[str], None]  # called with e.g. "store rows decoded 40/64"


def _row_checks(shards: ShardSet, store_check: str) -> str:
    """What ``verify`` does with the drawn rows of these shards, for a line saying it skipped."""
    checks = [store_check] * (shards.store is not None) + ["target recompute"] * bool(
        shards.teachers
    )
    return " and ".join(checks) or "the row checks"


def verify(
    shards: ShardSet,
    n: int,
    seed: int = 0,
    videos: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Read every byte (checksums) and check the store's GOP tables; then, on ``n`` distinct
    random rows, decode the frame store (PSNR against the source videos) and recompute the
    teachers' targets from the source videos.

    Damage (checksums, GOP tables, frames that do not match) goes to ``problems``. Source videos
    that cannot be found are not damage (shards with a store are portable): the parts that need
    them are skipped and ``skipped`` says why; ``videos`` (``--videos``) says where they are
    now, and is an error when they are not there either."""
    from distinit.pipeline.frame_source import resolve_videos_root

    checksum_problems = shards.verify_checksums()
    problems = checksum_problems + shards.verify_store_tables()
    report: dict[str, Any] = {"frames_checked": 0, "max_abs_logit_diff": 0.0, "max_kl": 0.0,
                              "mean_kl": 0.0, "problems": problems,
                              "checksums_intact": not checksum_problems, "rows_asked": n,
                              "rows_drawn": 0, "store": None, "skipped": None}  # fmt: skip
    if problems:
        report["skipped"] = f"the shards are damaged: {_row_checks(shards, 'store decode')} skipped"
        return report
    if n <= 0 or not shards.ok_videos():
        why = "no rows asked for" if n <= 0 else "the shards hold no extracted frames"
        report["skipped"] = f"{why}: {_row_checks(shards, 'store decode')} skipped"
        return report
    picks = draw_rows(shards, n, seed)
    report["rows_drawn"] = sum(len(rows) for rows in picks.values())
    root: Path | None = None
    try:
        root = resolve_videos_root(shards, videos)
    except ConfigError as exc:
        if videos is not None:
            raise  # asked for a directory that does not hold them: not something to skip
        report["skipped"] = f"{_row_checks(shards, 'store PSNR')} skipped: {exc}"
    if shards.store is not None:
        advance = _counter("store rows decoded", report["rows_drawn"], progress)
        report["store"] = verify_store(shards, picks, root, advance)
        problems += report["store"].pop("problems")
    if shards.teachers and root is not None and not problems:
        advance = _counter("frames recomputed", report["rows_drawn"], progress)
        recompute_targets(shards, picks, root, report, advance)
    return report


def _counter(what: str, total: int, progress: Progress | None) -> Callable[[int], None]:
    """Counts rows done and tells ``progress`` (``"<what> done/total"``)."""
    done = [0]

    def advance(rows: int) -> None:
        done[0] += rows
        if progress is not None:
            progress(f"{what} {done[0]}/{total}")

    return advance


STORE_MIN_PSNR_DB = 30.0  # far below the ~41 dB of the store's coding: a wrong or broken frame


def verify_store(
    shards: ShardSet,
    picks: dict[str, np.ndarray],
    root: Path | None,
    advance: Callable[[int], None],
) -> dict[str, Any]:
    """Decode the drawn rows from the frame store and, when the source videos are at ``root``,
    compare them with the source decoded at the same size by the rows' timestamps (PSNR pooled
    over every row)."""
    from distinit.pipeline.frame_source import SourceFrames
    from distinit.pipeline.framestore import psnr_from_mse

    assert shards.store is not None
    source = SourceFrames(shards, shards.store.size, root) if root is not None else None
    squared_error, values, decoded, problems = 0.0, 0, 0, []
    for video_id, rows in _spans(picks):
        try:
            stored = shards.frames(video_id, rows)
        except ShardError as exc:
            problems.append(f"{video_id}: {exc}")
            continue
        decoded += len(rows)
        if source is not None:
            diff = stored.astype(np.float64) - source(video_id, rows)
            squared_error += float(np.square(diff).sum())
            values += diff.size
        advance(len(rows))
    result: dict[str, Any] = {"rows_decoded": decoded, "format": shards.store.describe()}
    result["psnr_db"] = psnr_from_mse(squared_error / values) if values else None
    if result["psnr_db"] is not None and result["psnr_db"] < STORE_MIN_PSNR_DB:
        problems.append(
            f"frame store: PSNR {result['psnr_db']:.1f} dB against the source "
            f"(expected about 40): frames damaged or not the cached ones"
        )
    result["problems"] = problems
    return result


RECOMPUTE_BATCH = 32  # frames per teacher call
SPAN_ROWS = 256  # rows of one video decoded at once: bounds memory however long the video


def _spans(picks: dict[str, np.ndarray]) -> Iterator[tuple[str, np.ndarray]]:
    """Each video's drawn rows in ascending runs of at most :data:`SPAN_ROWS`: one decode each,
    so a video is read through once, however many of its rows were drawn."""
    for video_id, rows in picks.items():
        for start in range(0, len(rows), SPAN_ROWS):
            yield video_id, rows[start : start + SPAN_ROWS]


def recompute_targets(
    shards: ShardSet,
    picks: dict[str, np.ndarray],
    root: Path,
    report: dict[str, Any],
    advance: Callable[[int], None],
) -> None:
    """Run the recorded teachers on the drawn rows decoded from the source videos (one decode
    per video) and put how far the cached targets are from the fresh ones into ``report``."""
    from distinit.pipeline.timestamp_match import decode_at_times

    problems: list[str] = report["problems"]
    runner = recorded_teachers(shards, problems, shards.views)
    if runner is None:
        return
    logits_keys = shards.logits_keys()
    kls: list[np.ndarray] = []
    cosines: list[np.ndarray] = []
    for video_id, rows in _spans(picks):
        frames = decode_at_times(root / video_id, runner.geometry, shards.times(video_id)[rows])
        for view in range(shards.num_views):
            cached = {
                **shards.logits(video_id, rows, view),
                **shards.embeddings(video_id, rows, view),
            }
            views = (shards.views.views[view],) if shards.views is not None else None
            for start in range(0, len(rows), RECOMPUTE_BATCH):
                part = slice(start, start + RECOMPUTE_BATCH)
                for key, values in runner.run_views(frames[part], views).items():
                    fresh = values[0]  # (B, C) of this view
                    if key in logits_keys:
                        diff = float(np.abs(fresh - cached[key][part]).max())
                        report["max_abs_logit_diff"] = max(report["max_abs_logit_diff"], diff)
                        kls.append(kl_divergence(fresh, cached[key][part]))
                    else:
                        cosines.append(cosine_rows(fresh, cached[key][part]))
        report["frames_checked"] += len(rows)
        advance(len(rows))
    if kls:
        all_kl = np.concatenate(kls)
        report["max_kl"] = float(all_kl.max())
        report["mean_kl"] = float(all_kl.mean())
    if cosines:
        all_cos = np.concatenate(cosines)
        dims = [t.num_classes for t in shards.teachers if t.kind == "embedding"]
        report["embedding_mean_cosine"] = float(all_cos.mean())
        report["embedding_min_cosine"] = float(all_cos.min())
        report["embedding_bytes_per_frame"] = sum(d + 8 for d in dims)
        report["embedding_bytes_per_dim"] = sum(d + 8 for d in dims) / sum(dims)


def recorded_teachers(
    shards: ShardSet, problems: list[str], views: ViewSet | None
) -> TeacherRunner | None:
    """The shards' teachers, loaded as their provenance says, on the CPU in fp32 (on the
    canvas of ``views``, else their own recipe); None, with a line in ``problems``, when the
    weights found are not those the shards were made with."""
    from distinit.extract.inference import TeacherRunner
    from distinit.extract.teachers import load_teacher
    from distinit.pipeline.device import resolve_device

    config = shards.provenance.get("config", {})
    kinds: dict[str, tuple[str, ...]] = {}
    for info in shards.teachers:
        kinds[info.name] = (*kinds.get(info.name, ()), info.kind)
    recorded = {info.name: info for info in shards.teachers}
    teachers = [load_teacher(n, config.get("teacher_weights", {}).get(n)) for n in kinds]
    for loaded in teachers:
        if loaded.weights_sha256 != recorded[loaded.name].weights_sha256:
            problems.append(f"{loaded.name}: weights differ from those the shards were made with")
    if problems:
        return None
    return TeacherRunner(teachers, resolve_device("cpu"), "fp32", kinds=kinds, views=views)


def format_verify(report: dict[str, Any]) -> str:
    store = report.get("store")
    lines = [
        "checksums: every chunk of every shard read"
        + (", all intact" if report.get("checksums_intact") else " — damage found"),
    ]
    if report["rows_drawn"] < report["rows_asked"]:
        lines.append(
            f"--verify {report['rows_asked']}: the shards hold {report['rows_drawn']} rows; "
            "checking every one"
        )
    if store is not None:
        quality = (
            f", PSNR {store['psnr_db']:.1f} dB against the source at the same size"
            if store["psnr_db"] is not None
            else ""
        )
        lines.append(
            f"frame store ({store['format']}): GOP tables match the rows, "
            f"{store['rows_decoded']} rows decoded{quality}"
        )
    if report["frames_checked"]:
        lines.append(
            f"recomputed {report['frames_checked']} frames: largest logit difference "
            f"{report['max_abs_logit_diff']:.4f}, KL max {report['max_kl']:.2e} "
            f"mean {report['mean_kl']:.2e} (tolerance {report.get('tolerance', float('nan')):.2e})"
        )
    if "embedding_mean_cosine" in report:
        lines.append(
            f"embeddings: {report['embedding_bytes_per_frame']} B/frame = "
            f"{report['embedding_bytes_per_dim']:.3f} B/dim; cosine of the cached to the "
            f"recomputed: mean {report['embedding_mean_cosine']:.5f}, "
            f"min {report['embedding_min_cosine']:.5f}"
        )
    if report["skipped"]:
        lines.append(report["skipped"])
    lines += [f"problem: {p}" for p in report["problems"]]
    lines.append("OK" if report.get("ok") else "FAILED")
    return "\n".join(lines)
