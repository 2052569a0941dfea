"""What ``distinit inspect`` reports about shards: summaries, top classes, verification."""

from __future__ import annotations

import difflib
import os
import posixpath
from typing import Any

import numpy as np

from distinit.pipeline.errors import ShardError
from distinit.pipeline.shards import ShardSet, TeacherInfo, dequantize, quantize


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def kl_divergence(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    """KL(softmax(p) || softmax(q)) per row, in nats."""
    p = softmax(p_logits.astype(np.float64))
    log_p = np.log(np.clip(p, 1e-30, None))
    log_q = np.log(np.clip(softmax(q_logits.astype(np.float64)), 1e-30, None))
    return (p * (log_p - log_q)).sum(axis=-1)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b``."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return (a64 * b64).sum(axis=1) / np.maximum(norms, 1e-30)


def embedding_storage(fp32: np.ndarray) -> dict[str, float]:
    """What the shard encoding (:func:`~distinit.pipeline.shards.quantize`) costs an embedding
    ``(N, D)``: bytes per frame and per dimension, and cosine similarity to fp32."""
    cos = cosine_rows(fp32, dequantize(*quantize(fp32)))
    dim = int(fp32.shape[1])
    per_frame = dim + 8  # int8 values + float32 scale and offset
    return {
        "dim": dim,
        "bytes_per_frame": per_frame,
        "bytes_per_dim": per_frame / dim,
        "mean_cosine": float(cos.mean()),
        "min_cosine": float(cos.min()),
    }


def summary(shards: ShardSet) -> dict[str, Any]:
    videos = [
        {"id": r.id, "frames": r.row_count, "status": r.status, "error": r.error or None,
         "duration": None if np.isnan(r.duration) else r.duration, "shard": r.shard}
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
        (
            f"frame store: {s['store']}, {s['store_bytes'] / max(s['frames'], 1):.0f} bytes/frame"
            if s["store"]
            else "frame store: none (training decodes the source videos)"
        ),
    ]
    for v in s["videos"]:
        if v["status"] == "ok":
            lines.append(f"  ok      {v['frames']:6d} frames  {v['id']}")
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
    probs = softmax(shards.logits(video_id)[t.name]).mean(axis=0)
    order = np.argsort(-probs)[:k]
    return {
        "id": video_id,
        "teacher": t.name,
        "top": [{"class": t.class_names[i], "prob": round(float(probs[i]), 6)} for i in order],
    }


def format_top(result: dict[str, Any]) -> str:
    lines = [f"{result['id']} — {result['teacher']}, mean over frames:"]
    lines += [f"  {c['prob']:7.2%}  {c['class']}" for c in result["top"]]
    return "\n".join(lines)


def verify(shards: ShardSet, n: int, seed: int = 0) -> dict[str, Any]:
    """Read every byte (checksums), then recompute ``n`` random cached frames with the teachers."""
    from distinit.extract.inference import TeacherRunner
    from distinit.extract.teachers import load_teacher
    from distinit.pipeline.device import resolve_device
    from distinit.pipeline.video import decode_at_times

    problems = shards.verify_checksums() + shards.verify_store_tables()
    report: dict[str, Any] = {"frames_checked": 0, "max_abs_logit_diff": 0.0, "max_kl": 0.0,
                              "mean_kl": 0.0, "problems": problems, "store": None}  # fmt: skip
    videos = shards.ok_videos()
    if problems or n <= 0 or not videos:
        return report
    config = shards.provenance.get("config", {})
    root = shards.provenance.get("videos_root", "")
    if shards.store is not None:
        report["store"] = verify_store(shards, n, root, seed)
        problems += report["store"].pop("problems")
    if not shards.teachers:
        return report
    kinds: dict[str, tuple[str, ...]] = {}
    for info in shards.teachers:
        kinds[info.name] = (*kinds.get(info.name, ()), info.kind)
    recorded = {info.name: info for info in shards.teachers}
    teachers = [load_teacher(n, config.get("teacher_weights", {}).get(n)) for n in kinds]
    for loaded in teachers:
        if loaded.weights_sha256 != recorded[loaded.name].weights_sha256:
            problems.append(f"{loaded.name}: weights differ from those the shards were made with")
    if problems:
        return report
    runner = TeacherRunner(teachers, resolve_device("cpu"), "fp32", kinds=kinds)
    rng = np.random.default_rng(seed)
    picks: dict[str, list[int]] = {}
    for _ in range(n):
        r = videos[rng.integers(len(videos))]
        picks.setdefault(r.id, []).append(int(rng.integers(r.row_count)))
    kls: list[np.ndarray] = []
    cosines: list[np.ndarray] = []
    for video_id, rows in picks.items():
        rows = sorted(set(rows))
        path = os.path.join(root, video_id)
        if not os.path.isfile(path):
            problems.append(f"{video_id}: video not found under {root}")
            continue
        frames = decode_at_times(path, runner.geometry, shards.times(video_id)[rows])
        fresh = runner(frames)
        cached = {**shards.logits(video_id, rows), **shards.embeddings(video_id, rows)}
        for key, values in fresh.items():
            if key in shards.logits_keys():
                diff = float(np.abs(values - cached[key]).max())
                report["max_abs_logit_diff"] = max(report["max_abs_logit_diff"], diff)
                kls.append(kl_divergence(values, cached[key]))
            else:
                cosines.append(cosine_rows(values, cached[key]))
        report["frames_checked"] += len(rows)
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
    return report


STORE_MIN_PSNR_DB = 30.0  # far below the ~41 dB of the store's coding: a wrong or broken frame


def verify_store(shards: ShardSet, n: int, root: str, seed: int) -> dict[str, Any]:
    """Decode ``n`` random rows from the frame store and compare them with the source video
    decoded at the same size by the rows' timestamps (PSNR)."""
    from distinit.pipeline.framestore import psnr
    from distinit.pipeline.video import FrameGeometry, decode_at_times

    assert shards.store is not None
    geometry = FrameGeometry(*shards.store.size)
    rng = np.random.default_rng([seed, 1])
    videos = shards.ok_videos()
    stored, source, problems = [], [], []
    for _ in range(n):
        r = videos[rng.integers(len(videos))]
        row = int(rng.integers(r.row_count))
        try:
            stored.append(shards.frames(r.id, [row]))
        except ShardError as exc:
            problems.append(f"{r.id} row {row}: {exc}")
            continue
        path = os.path.join(root, r.id)
        if os.path.isfile(path):
            source.append(decode_at_times(path, geometry, shards.times(r.id)[[row]]))
    result: dict[str, Any] = {"rows_decoded": len(stored), "format": shards.store.describe()}
    result["psnr_db"] = (
        psnr(np.concatenate(stored[: len(source)]), np.concatenate(source))
        if source and len(source) == len(stored)
        else None
    )
    if result["psnr_db"] is not None and result["psnr_db"] < STORE_MIN_PSNR_DB:
        problems.append(
            f"frame store: PSNR {result['psnr_db']:.1f} dB against the source "
            f"(expected about 40): frames damaged or not the cached ones"
        )
    result["problems"] = problems
    return result


def format_verify(report: dict[str, Any]) -> str:
    store = report.get("store")
    lines = [
        "checksums: every chunk of every shard read"
        + (" — damage found" if report["problems"] else ", all intact"),
    ]
    if store is not None:
        quality = (
            f"PSNR {store['psnr_db']:.1f} dB against the source at the same size"
            if store["psnr_db"] is not None
            else "source videos not found: PSNR not measured"
        )
        lines.append(
            f"frame store ({store['format']}): GOP tables match the rows, "
            f"{store['rows_decoded']} random rows decoded, {quality}"
        )
    if report["frames_checked"]:
        lines.append(
            f"recomputed {report['frames_checked']} frames: largest logit difference "
            f"{report['max_abs_logit_diff']:.4f}, KL max {report['max_kl']:.2e} "
            f"mean {report['mean_kl']:.2e} (tolerance {report.get('tolerance', float('nan')):.2e})"
        )
    else:
        lines.append("no teacher targets recomputed (no teachers, or no frames asked for)")
    if "embedding_mean_cosine" in report:
        lines.append(
            f"embeddings: {report['embedding_bytes_per_frame']} B/frame = "
            f"{report['embedding_bytes_per_dim']:.3f} B/dim; cosine of the cached to the "
            f"recomputed: mean {report['embedding_mean_cosine']:.5f}, "
            f"min {report['embedding_min_cosine']:.5f}"
        )
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
    if not (0 <= start < stop <= row_count) or step < 1:
        raise ShardError(f"--rows {text!r}: the video has rows 0..{row_count - 1}")
    return np.arange(start, stop, step)


def save_rows(
    shards: ShardSet, video_id: str, rows_text: str, out_dir: str, source: str = "auto"
) -> tuple[list[str], str]:
    """Write the frames stage two decodes for the given rows as ``out_dir/<row>.png`` (the
    store's size, uncropped). Returns the files written and where the frames came from."""
    import cv2

    from distinit.pipeline.frame_source import open_frame_source

    rows = parse_rows(rows_text, len(shards.times(video_id)))  # an unknown id: a clear error
    config = shards.provenance.get("config", {})
    size = shards.store.size if shards.store else tuple(config.get("store_size", (171, 128)))
    frames = open_frame_source(shards, (int(size[0]), int(size[1])), prefer=source)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for row, frame in zip(rows, frames(video_id, rows), strict=True):
        path = os.path.join(out_dir, f"{int(row)}.png")
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
    probs = softmax(shards.logits(video_id)[t.name])  # (N, C)
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
