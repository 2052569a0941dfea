"""What ``distinit inspect`` reports about shards: summaries, top classes, verification."""

from __future__ import annotations

import difflib
import os
import posixpath
from typing import Any

import numpy as np

from distinit.extract.divergence import softmax
from distinit.pipeline.errors import ShardError
from distinit.pipeline.progress import expected_frames
from distinit.pipeline.shards import ShardSet, TeacherInfo, VideoRecord

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
