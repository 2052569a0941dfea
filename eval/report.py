"""Results on disk: ``results.json``, a markdown table, confusion matrices, and ``--compare``
(with late fusion of an RGB and a flow run: the mean of their video-level softmaxes)."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from distinit.eval.metrics import VideoProbs, load_video_probs
from distinit.pipeline.atomic import atomic_write
from distinit.pipeline.errors import DatasetError
from distinit.pipeline.paths import inside
from distinit.train.events import EventLog

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


def write_results(out: Path, results: dict[str, Any], *, tensorboard: bool = False) -> Path:
    """``results.json`` and its markdown table; with ``tensorboard``, each split's accuracies as
    TensorBoard scalars (step = split number) in ``out`` too."""
    path = atomic_write(out / RESULTS_NAME, results)
    atomic_write(out / TABLE_NAME, markdown_table(results))
    if tensorboard:
        # A re-run evaluates every split again: all earlier events of ``out`` are hidden.
        events = EventLog(out, purge_step=0)
        try:
            for row in results["per_split"]:
                events.write(int(row["split"]), {"accuracy": {m: row[m] for m in METRICS}})
        finally:
            events.close()
    return path


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def top5_text(value: float, num_classes: int, unit: str = "") -> str:
    """Top-5 accuracy as a percentage (followed by ``unit``), or why it says nothing: with five
    classes or fewer every label is among the top five, so it is 100% whatever the model does."""
    if num_classes <= 5:
        return f"trivial ({num_classes} classes)"
    return _pct(value) + unit


def num_classes_of(results: dict[str, Any]) -> int | None:
    """The classes a run was scored on (None for a result that does not say)."""
    classes = results.get("classes")
    if isinstance(classes, list) and classes:
        return len(classes)
    rows = results.get("per_split") or [{}]
    count = rows[0].get("num_classes")
    return int(count) if count is not None else None


def _top5(value: float, num_classes: int | None) -> str:
    return _pct(value) if num_classes is None else top5_text(value, num_classes)


def markdown_table(results: dict[str, Any]) -> str:
    head = (
        f"# {results['dataset']} — init {results['init']} ({results['student']}), "
        f"modality {results['modality']}, mode {results['mode']}\n\n"
        "| split | clip top-1 | clip top-5 | video top-1 | video top-5 | test videos |\n"
        "|---|---|---|---|---|---|\n"
    )
    n = num_classes_of(results)
    rows = [
        f"| {s['split']} | {_pct(s['clip_top1'])} | {_top5(s['clip_top5'], n)} | "
        f"{_pct(s['video_top1'])} | {_top5(s['video_top5'], n)} | {s['num_test_videos']} |"
        for s in results["per_split"]
    ]
    if len(results["per_split"]) > 1:
        rows.append(
            f"| mean | {_pct(results['clip_top1'])} | {_top5(results['clip_top5'], n)} | "
            f"{_pct(results['video_top1'])} | {_top5(results['video_top5'], n)} | "
            f"{results['num_test_videos']:.0f} |"
        )
    p = results["protocol"]
    foot = (
        f"\nProtocol: {p['clips_per_video']} clips/video of {p['clip_len']} frames, "
        f"{p['crops_per_clip']} centre crop {p['crop']}px, epochs {p['epochs']}, lr {p['lr']}, "
        f"{'full batch' if results['mode'] == 'linear' else 'batch ' + str(p['batch_size'])}; "
        f"allow-partial {results['allow_partial']}.\n"
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
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    atomic_write(path, png.getvalue())
    plt.close(fig)


def load_results(out: Path) -> dict[str, Any]:
    path = out / RESULTS_NAME if out.is_dir() else out
    if not path.is_file():
        raise DatasetError(f"{out}: no {RESULTS_NAME} (not a finished distinit eval output)")
    try:
        results: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
    missing = [k for k in ("dataset", "init", "mode", "modality", *METRICS) if k not in results]
    if missing:
        raise DatasetError(f"{path}: not a distinit eval result (lacks {', '.join(missing)})")
    return results


def compare_table(outs: list[Path]) -> str:
    """One markdown table of several runs (the paper's scratch / inflated / DistInit view)."""
    runs = [(out, load_results(out)) for out in outs]
    lines = [
        "| run | dataset | root | classes | test videos | student | init | modality | mode | "
        "splits | clip top-1 | video top-1 | video top-5 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for out, r in runs:
        splits = ",".join(str(s["split"]) for s in r.get("per_split", []))
        n = num_classes_of(r)
        lines.append(
            f"| {out} | {r['dataset']} | {_root(r)} | {n if n is not None else '?'} | "
            f"{_test_videos(r)} | {r.get('student', '?')} | {r['init']} | "
            f"{modality_of(r)} | {r['mode']} | "
            f"{splits} | {_pct(r['clip_top1'])} | {_pct(r['video_top1'])} | "
            f"{_top5(r['video_top5'], n)} |"
        )
    notes = _protocol_differences([r for _, r in runs])
    fusion, fusion_notes = fusion_tables(runs)
    notes += fusion_notes
    return "\n".join(lines) + "\n" + fusion + "".join(f"\nNote: {n}" for n in notes)


def modality_of(results: dict[str, Any]) -> str:
    return str(results["modality"])


def _split_ids(results: dict[str, Any]) -> list[int]:
    return [int(s["split"]) for s in results.get("per_split", [])]


def _probs_path(out: Path, split_row: dict[str, Any]) -> Path:
    folder = out if out.is_dir() else out.parent  # RUNS may name results.json itself
    if "video_probs" not in split_row:
        raise DatasetError(f"{out}: split {split_row['split']} names no video_probs file")
    what = f"{out}: split {split_row['split']}'s video_probs"
    return inside(folder, str(split_row["video_probs"]), what, DatasetError)


def _aligned(rgb: VideoProbs, flow: VideoProbs) -> tuple[np.ndarray, np.ndarray] | str:
    """Flow probabilities in the RGB run's video order, or why the two cannot be fused."""
    if rgb.classes != flow.classes:
        return "their class lists differ"
    if sorted(rgb.ids) != sorted(flow.ids):
        only = sorted(set(rgb.ids) ^ set(flow.ids))
        return f"their test videos differ ({len(only)} in one run only, e.g. {only[:1]})"
    order = {vid: i for i, vid in enumerate(flow.ids)}
    idx = np.array([order[vid] for vid in rgb.ids])
    if not np.array_equal(rgb.labels, flow.labels[idx]):
        return "the same videos carry different labels"
    return rgb.probs, flow.probs[idx]


def fused_top1(rgb: VideoProbs, flow_probs: np.ndarray) -> float:
    """Video top-1 of the late fusion: argmax of the mean of the two (V, C) softmaxes."""
    fused = (rgb.probs.astype(np.float64) + flow_probs.astype(np.float64)) / 2
    return float((fused.argmax(axis=1) == rgb.labels).mean())


def fusion_tables(runs: list[tuple[Path, dict[str, Any]]]) -> tuple[str, list[str]]:
    """A table per (RGB run, flow run) pair on the same dataset and splits: RGB, flow and fused
    video top-1 per split (and their mean). Pairs that cannot be fused are explained in notes."""
    rgb_runs = [(o, r) for o, r in runs if modality_of(r) == "rgb"]
    flow_runs = [(o, r) for o, r in runs if modality_of(r) == "flow"]
    text, notes = "", []
    for rgb_out, rgb in rgb_runs:
        for flow_out, flow in flow_runs:
            pair = f"{rgb_out} + {flow_out}"
            if rgb["dataset"] != flow["dataset"] or _split_ids(rgb) != _split_ids(flow):
                notes.append(f"no fusion of {pair}: different dataset or splits")
                continue
            rows, accs, why = [], [], ""
            for r_row, f_row in zip(rgb["per_split"], flow["per_split"], strict=True):
                try:
                    p_rgb = load_video_probs(_probs_path(rgb_out, r_row))
                    p_flow = load_video_probs(_probs_path(flow_out, f_row))
                except DatasetError as exc:
                    why = str(exc)
                    break
                aligned = _aligned(p_rgb, p_flow)
                if isinstance(aligned, str):
                    why = f"split {r_row['split']}: {aligned}"
                    break
                rgb_probs, flow_probs = aligned
                acc = (
                    float((rgb_probs.argmax(axis=1) == p_rgb.labels).mean()),
                    float((flow_probs.argmax(axis=1) == p_rgb.labels).mean()),
                    fused_top1(p_rgb, flow_probs),
                )
                accs.append(acc)
                rows.append(
                    f"| {r_row['split']} | {_pct(acc[0])} | {_pct(acc[1])} | {_pct(acc[2])} | "
                    f"{len(p_rgb.ids)} |"
                )
            if why:
                notes.append(f"no fusion of {pair}: {why}")
                continue
            if len(accs) > 1:
                m = np.mean(accs, axis=0)
                rows.append(f"| mean | {_pct(m[0])} | {_pct(m[1])} | {_pct(m[2])} | |")
            text += (
                f"\nLate fusion (mean of video softmaxes), RGB {rgb_out} + flow {flow_out}:\n\n"
                "| split | RGB video top-1 | flow video top-1 | fused video top-1 | videos |\n"
                "|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
            )
    return text, notes


def _root(results: dict[str, Any]) -> str:
    return str(results.get("config", {}).get("root", "?"))


def _test_videos(results: dict[str, Any]) -> str:
    count = results.get("num_test_videos")
    return "?" if count is None else f"{count:g}"  # a mean over splits may be fractional


def _protocol_differences(runs: list[dict[str, Any]]) -> list[str]:
    """What differs between runs (the data they were scored on, the protocol): such rows are
    not directly comparable."""
    notes = []
    seen = {
        "dataset": {str(r.get("dataset")) for r in runs},
        "dataset root": {_root(r) for r in runs},
        "number of classes": {str(num_classes_of(r)) for r in runs},
        "number of test videos": {_test_videos(r) for r in runs},
    }
    for what, values in seen.items():
        if len(values) > 1:
            notes.append(f"{what} differs between runs: {sorted(values)}")
    for key in ("clip_len", "frame_step", "resize", "clips_per_video", "crop", "epochs", "lr",
                "batch_size"):  # fmt: skip
        values = {str(r.get("protocol", {}).get(key)) for r in runs}
        if len(values) > 1:
            notes.append(f"protocol {key} differs between runs: {sorted(values)}")
    if any(r.get("allow_partial") for r in runs):
        notes.append("some runs used --allow-partial (a subset of the dataset)")
    return notes
