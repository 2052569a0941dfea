"""Results on disk: ``results.json``, a markdown table, confusion matrices, and ``--compare``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from distinit.pipeline.errors import DatasetError

log = logging.getLogger(__name__)

RESULTS_NAME = "results.json"
TABLE_NAME = "results.md"
METRICS = ("clip_top1", "clip_top5", "video_top1", "video_top5")


def mean_over_splits(per_split: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean of each accuracy over splits; counts are averaged too (they may differ)."""
    mean: dict[str, Any] = {m: float(np.mean([s[m] for s in per_split])) for m in METRICS}
    mean["num_test_videos"] = float(np.mean([s["num_test_videos"] for s in per_split]))
    mean["clips_per_video"] = per_split[0]["clips_per_video"]
    return mean


def write_results(out: Path, results: dict[str, Any]) -> Path:
    path = out / RESULTS_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    (out / TABLE_NAME).write_text(markdown_table(results), encoding="utf-8")
    return path


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def markdown_table(results: dict[str, Any]) -> str:
    head = (
        f"# {results['dataset']} — init {results['init']} ({results['student']}), "
        f"mode {results['mode']}\n\n"
        "| split | clip top-1 | clip top-5 | video top-1 | video top-5 | test videos |\n"
        "|---|---|---|---|---|---|\n"
    )
    rows = [
        f"| {s['split']} | {_pct(s['clip_top1'])} | {_pct(s['clip_top5'])} | "
        f"{_pct(s['video_top1'])} | {_pct(s['video_top5'])} | {s['num_test_videos']} |"
        for s in results["per_split"]
    ]
    if len(results["per_split"]) > 1:
        rows.append(
            f"| mean | {_pct(results['clip_top1'])} | {_pct(results['clip_top5'])} | "
            f"{_pct(results['video_top1'])} | {_pct(results['video_top5'])} | "
            f"{results['num_test_videos']:.0f} |"
        )
    p = results["protocol"]
    foot = (
        f"\nProtocol: {p['clips_per_video']} clips/video of {p['clip_len']} frames, "
        f"{p['crops_per_clip']} centre crop {p['crop']}px, epochs {p['epochs']}, lr {p['lr']}, "
        f"batch {p['batch_size']}; allow-partial {results['allow_partial']}.\n"
    )
    return head + "\n".join(rows) + "\n" + foot


def plot_confusion(path: Path, confusion: np.ndarray, classes: list[str], title: str) -> None:
    """Row-normalised video-level confusion matrix as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    norm = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    side = max(4.0, 0.22 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(side, side))
    image = ax.imshow(norm, vmin=0, vmax=1, cmap="viridis")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, classes, rotation=90, fontsize=6)
    ax.set_yticks(ticks, classes, fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load_results(out: Path) -> dict[str, Any]:
    path = out / RESULTS_NAME if out.is_dir() else out
    if not path.is_file():
        raise DatasetError(f"{out}: no {RESULTS_NAME} (not a finished distinit eval output)")
    try:
        results: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
    missing = [k for k in ("dataset", "init", "mode", *METRICS) if k not in results]
    if missing:
        raise DatasetError(f"{path}: not a distinit eval result (lacks {', '.join(missing)})")
    return results


def compare_table(outs: list[Path]) -> str:
    """One markdown table of several runs (the paper's scratch / inflated / DistInit view)."""
    runs = [(out, load_results(out)) for out in outs]
    lines = [
        "| run | dataset | student | init | mode | splits | clip top-1 | video top-1 | "
        "video top-5 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for out, r in runs:
        splits = ",".join(str(s["split"]) for s in r.get("per_split", []))
        lines.append(
            f"| {out} | {r['dataset']} | {r.get('student', '?')} | {r['init']} | {r['mode']} | "
            f"{splits} | {_pct(r['clip_top1'])} | {_pct(r['video_top1'])} | "
            f"{_pct(r['video_top5'])} |"
        )
    notes = _protocol_differences([r for _, r in runs])
    return "\n".join(lines) + "\n" + "".join(f"\nNote: {n}" for n in notes)


def _protocol_differences(runs: list[dict[str, Any]]) -> list[str]:
    """Protocol fields that differ between runs: such rows are not directly comparable."""
    notes = []
    for key in ("dataset",):
        values = {str(r.get(key)) for r in runs}
        if len(values) > 1:
            notes.append(f"{key} differs between runs: {sorted(values)}")
    for key in ("clip_len", "clips_per_video", "crop", "epochs", "lr", "batch_size"):
        values = {str(r.get("protocol", {}).get(key)) for r in runs}
        if len(values) > 1:
            notes.append(f"protocol {key} differs between runs: {sorted(values)}")
    if any(r.get("allow_partial") for r in runs):
        notes.append("some runs used --allow-partial (a subset of the dataset)")
    return notes
