"""What ``distinit inspect`` reports about shards: summaries, top classes, verification."""

from __future__ import annotations

import os
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
        "provenance": shards.provenance,
        "videos": videos,
    }


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"{s['directory']}: {s['videos_ok']} videos ok, {s['videos_failed']} failed, "
        f"{s['frames']} frames, {s['bytes'] / 1e6:.2f} MB",
        "teachers: "
        + ", ".join(
            f"{t['name']} ({t['classes']} {'dims' if t.get('kind') == 'embedding' else 'classes'})"
            for t in s["teachers"]
        ),
        f"decoder: {s['provenance'].get('ffmpeg_version', '?')}; "
        f"{s['provenance'].get('frame_geometry', '?')}",
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
        raise ShardError(f"{shards.directory}: the shards hold embeddings only, no classes")
    if teacher is None:
        return logits[0]
    if teacher not in names:
        raise ShardError(f"teacher {teacher!r} has no logits in these shards (they have {names})")
    return logits[names.index(teacher)]


def video_top(shards: ShardSet, video_id: str, teacher: str | None, k: int) -> dict[str, Any]:
    """The teacher's classes averaged over a video's frames (mean of per-frame softmax)."""
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

    problems = shards.verify_checksums()
    report: dict[str, Any] = {"frames_checked": 0, "max_abs_logit_diff": 0.0, "max_kl": 0.0,
                              "mean_kl": 0.0, "problems": problems}  # fmt: skip
    videos = shards.ok_videos()
    if problems or n <= 0 or not videos:
        return report
    config = shards.provenance.get("config", {})
    root = shards.provenance.get("videos_root", "")
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


def format_verify(report: dict[str, Any]) -> str:
    lines = [
        "checksums: every chunk of every shard read"
        + (" — damage found" if report["problems"] else ", all intact"),
        f"recomputed {report['frames_checked']} frames: largest logit difference "
        f"{report['max_abs_logit_diff']:.4f}, KL max {report['max_kl']:.2e} "
        f"mean {report['mean_kl']:.2e} (tolerance {report.get('tolerance', float('nan')):.2e})",
    ]
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


def plot_timeline(
    shards: ShardSet, video_id: str, teacher: str | None, k: int, out_png: str
) -> None:
    """A PNG of the probability of the video's top-k classes over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
