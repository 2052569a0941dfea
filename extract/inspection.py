"""What ``distinit inspect`` reports about shards: summaries, top classes, verification."""

from __future__ import annotations

import difflib
import os
import posixpath
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from distinit.extract.divergence import cosine_rows, kl_divergence, softmax
from distinit.pipeline.errors import ConfigError, ShardError
from distinit.pipeline.progress import expected_frames
from distinit.pipeline.shards import ShardSet, TeacherInfo, VideoRecord
from distinit.pipeline.views import ViewSet

if TYPE_CHECKING:
    from distinit.extract.inference import TeacherRunner


# A video whose decode gave fewer than this fraction of the frames its header announces (duration
# x frame rate) is reported: a truncated or damaged file decodes "ok" as far as it goes.
SHORT_DECODE = 0.5


def short_decode_note(record: VideoRecord) -> str | None:
    """Why an ``ok`` video's frame count is suspicious, or None: decoded frames well below the
    header's duration x frame rate."""
    announced = expected_frames(record.duration, record.fps, None)
    if record.status != "ok" or announced is None or not record.native_frames:
        return None
    if record.native_frames >= SHORT_DECODE * announced:
        return None
    return (
        f"decoded {record.native_frames} of the about {announced} frames its header announces "
        f"({record.duration:.1f} s at {record.fps:g} fps): truncated or damaged?"
    )


def summary(shards: ShardSet) -> dict[str, Any]:
    videos = [
        {"id": r.id, "frames": r.row_count, "status": r.status, "error": r.error or None,
         "duration": None if np.isnan(r.duration) else r.duration, "shard": r.shard,
         "note": short_decode_note(r)}
        for r in sorted(shards.records.values(), key=lambda r: r.id)
    ]  # fmt: skip
    return {
        "directory": str(shards.directory),
        "teachers": [
            {
                "name": t.key,
                "kind": t.kind,
                "classes": t.num_classes,
                "weights_sha256": t.weights_sha256,
            }  # fmt: skip
            for t in shards.teachers
        ],
        "videos_ok": sum(v["status"] == "ok" for v in videos),
        "videos_failed": sum(v["status"] == "failed" for v in videos),
        "frames": sum(v["frames"] for v in videos),
        "bytes": sum(p.stat().st_size for p in shards.directory.glob("*.h5")),
        "views": (
            shards.views.describe()
            if shards.views is not None
            else "one per frame, the teacher's own centre crop (not the student's crops)"
            if shards.teachers
            else None
        ),
        "store": shards.store.describe() if shards.store else None,
        "store_bytes": shards.store_nbytes() if shards.store else 0,
        "target_bytes": shards.target_nbytes(),
        "provenance": shards.provenance,
        "videos": videos,
    }


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"{s['directory']}: {s['videos_ok']} videos ok, {s['videos_failed']} failed, "
        f"{s['frames']} frames, {s['bytes'] / 1e6:.2f} MB",
        "teachers: "
        + (
            ", ".join(
                f"{t['name']} ({t['classes']} "
                f"{'dims' if t.get('kind') == 'embedding' else 'classes'})"
                for t in s["teachers"]
            )
            or "none (a frames-only store: extract --teacher none)"
        ),
        f"decoder: {s['provenance'].get('ffmpeg_version', '?')}"
        + (
            f"; {s['provenance']['frame_geometry']}"
            if s["provenance"].get("frame_geometry")
            else ""
        ),
        *([f"views: {s['views']}"] if s.get("views") else []),
        (
            f"frame store: {s['store']}"
            + (f", {s['store_bytes'] / s['frames']:.0f} bytes/frame" if s["frames"] else "")
            if s["store"]
            else "frame store: none (training decodes the source videos)"
        ),
    ]
    for v in s["videos"]:
        if v["status"] == "ok":
            note = f"  (note: {v['note']})" if v.get("note") else ""
            lines.append(f"  ok      {v['frames']:6d} frames  {v['id']}{note}")
        else:
            lines.append(f"  failed               {v['id']}: {v['error']}")
    return "\n".join(lines)


def _classifier(shards: ShardSet, teacher: str | None) -> TeacherInfo:
    """The logits target of ``teacher`` (default: the first), for what needs class names."""
    logits = [t for t in shards.teachers if t.kind == "logits"]
    names = [t.name for t in logits]
    if not logits:
        what = "embeddings only" if shards.teachers else "frames only (extract --teacher none)"
        raise ShardError(f"{shards.directory}: the shards hold {what}, no classes")
    if teacher is None:
        return logits[0]
    if teacher not in names:
        raise ShardError(f"teacher {teacher!r} has no logits in these shards (they have {names})")
    return logits[names.index(teacher)]


def require_video(shards: ShardSet, video_id: str) -> None:
    """Refuse an id without extracted frames, pointing at the ids the user probably meant:
    the same file name in other folders (ids are paths relative to ``--videos``), else close
    spellings; a video that failed says why."""
    record = shards.records.get(video_id)
    if record is not None and record.status == "ok":
        return
    if record is not None:
        raise ShardError(f"{shards.directory}: {video_id!r} failed to extract: {record.error}")
    ids = sorted(shards.records)
    name = posixpath.basename(video_id)
    matches = [v for v in ids if posixpath.basename(v) == name] or difflib.get_close_matches(
        video_id, ids, n=3
    )
    hint = (
        "; did you mean " + " or ".join(repr(m) for m in matches) + "?"
        if matches
        else " (ids are paths relative to the extract --videos directory; "
        "`distinit inspect DIR` lists them)"
    )
    raise ShardError(f"{shards.directory}: no extracted frames for video {video_id!r}{hint}")


def video_top(shards: ShardSet, video_id: str, teacher: str | None, k: int) -> dict[str, Any]:
    """The teacher's classes averaged over a video's frames (mean of per-frame softmax)."""
    require_video(shards, video_id)
    t = _classifier(shards, teacher)
    probs = frame_probabilities(shards, video_id, t.name).mean(axis=0)
    order = np.argsort(-probs)[:k]
    return {
        "id": video_id,
        "teacher": t.name,
        "top": [{"class": t.class_names[i], "prob": round(float(probs[i]), 6)} for i in order],
    }


def frame_probabilities(shards: ShardSet, video_id: str, teacher: str) -> np.ndarray:
    """``(N, C)``: each frame's class distribution, the mean of ``softmax`` over the shards'
    views (what the teacher sees in the whole frame), read one view at a time."""
    total: np.ndarray | None = None
    for view in range(shards.num_views):
        p = softmax(shards.logits(video_id, None, view)[teacher].astype(np.float64))
        total = p if total is None else total + p
    assert total is not None
    return total / shards.num_views


def format_top(result: dict[str, Any]) -> str:
    lines = [f"{result['id']} — {result['teacher']}, mean over frames (and views):"]
    lines += [f"  {c['prob']:7.2%}  {c['class']}" for c in result["top"]]
    return "\n".join(lines)


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


def parse_rows(text: str, row_count: int) -> np.ndarray:
    """``A:B[:S]`` -> rows ``A, A+S, ... < B`` of a video with ``row_count`` rows (B may be
    omitted: to the end), as a strided clip reads them."""
    parts = text.split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        start = int(parts[0]) if parts[0] else 0
        stop = int(parts[1]) if parts[1] else row_count
        step = int(parts[2]) if len(parts) == 3 and parts[2] else 1
    except ValueError:
        raise ShardError(f"--rows {text!r}: expected A:B or A:B:S (e.g. 0:16:2)") from None
    if step < 1:
        raise ShardError(f"--rows {text!r}: the step S must be at least 1")
    if start >= stop:
        raise ShardError(f"--rows {text!r}: A must be below B (rows A, A+S, ... < B)")
    if not (start >= 0 and stop <= row_count):
        raise ShardError(f"--rows {text!r}: the video has rows 0..{row_count - 1}")
    return np.arange(start, stop, step)


def save_rows(
    shards: ShardSet,
    video_id: str,
    rows_text: str,
    out_dir: str,
    source: str = "auto",
    videos: str | None = None,
) -> tuple[list[str], str]:
    """Write the frames stage two decodes for the given rows as ``out_dir/<row>.png`` (the
    store's size, uncropped; the row zero-padded to the digits of the video's last row, so the
    names sort). Returns the files written and where the frames came from; ``videos`` is where
    the source videos are if they moved since extract."""
    import cv2

    from distinit.pipeline.frame_source import open_frame_source

    row_count = len(shards.times(video_id))  # an unknown id: a clear error
    rows = parse_rows(rows_text, row_count)
    digits = len(str(row_count - 1))
    config = shards.provenance.get("config", {})
    size = shards.store.size if shards.store else tuple(config.get("store_size", (171, 128)))
    frames = open_frame_source(shards, (int(size[0]), int(size[1])), videos=videos, prefer=source)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for row, frame in zip(rows, frames(video_id, rows), strict=True):
        path = os.path.join(out_dir, f"{int(row):0{digits}d}.png")
        if not cv2.imwrite(path, np.ascontiguousarray(frame[:, :, ::-1])):  # RGB -> BGR
            raise ShardError(f"{path}: could not write the PNG")
        written.append(path)
    return written, frames.describe()


def plot_timeline(
    shards: ShardSet, video_id: str, teacher: str | None, k: int, out_png: str
) -> None:
    """A PNG of the probability of the video's top-k classes over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    require_video(shards, video_id)
    t = _classifier(shards, teacher)
    probs = frame_probabilities(shards, video_id, t.name)  # (N, C)
    times = shards.times(video_id)
    order = np.argsort(-probs.mean(axis=0))[:k]
    fig, ax = plt.subplots(figsize=(9, 4), dpi=110)
    for i in order:
        ax.plot(times, probs[:, i], label=t.class_names[i], linewidth=1.6)
    ax.set_xlabel("time (s)")
    ax.set_ylabel(f"{t.name} probability")
    ax.set_ylim(0, 1)
    ax.set_title(f"{video_id}: top {k} classes of {t.name} over time")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
