"""One evaluation run: every requested split, one initialisation, one mode, and its reports."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import torch
import torch.distributed as dist

from distinit.eval.config import EvalConfig
from distinit.eval.datasets import ClipProtocol, check_store
from distinit.eval.finetune import STATE_NAME, FinetuneSettings, finetune, recompute_bn_stats
from distinit.eval.initialise import HEAD, build_student, check_init_inputs
from distinit.eval.manifests import Manifest, load_manifest
from distinit.eval.metrics import save_video_probs, score_clips, video_probabilities
from distinit.eval.predict import clip_outputs
from distinit.eval.probe import FeatureCache, compute_features, train_linear
from distinit.eval.recipe import EvalInput
from distinit.eval.report import mean_over_splits, plot_confusion, top5_text, write_results
from distinit.eval.sources import undecodable
from distinit.eval.splits import (
    SplitData,
    VideoItem,
    describe_undecodable,
    load_split,
    partial_refusal,
)
from distinit.pipeline import runtime
from distinit.pipeline.directory_lock import lock_run_directory
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.progress import ProgressLine, eta_seconds, format_duration
from distinit.train.step import amp_enabled, autocast

log = logging.getLogger(__name__)

Echo = Callable[[str], None]


# Where files lie and how fast they are read: not part of what a fine-tuning state belongs to.
_NOT_FINGERPRINTED = (
    "out",
    "device",
    "workers",
    "checkpoint",
    "inflate_weights",
    "tensorboard",
    "drop_resume_state",
)


def fingerprint(cfg: EvalConfig, split: int, protocol: ClipProtocol) -> str:
    """The recipe a fine-tuning state must match to be resumed (not where files lie, where it
    runs or how fast): the config and the clip protocol it resolved to."""
    keep = {k: v for k, v in cfg.to_json().items() if k not in _NOT_FINGERPRINTED}
    keep["split"] = split
    keep["protocol"] = protocol.describe()
    return _digest(keep)


def init_weights_id(init_info: dict[str, Any]) -> str:
    """The initial weights by content (a checkpoint's sha256, never its path)."""
    return _digest({k: v for k, v in init_info.items() if k != "checkpoint"})


def _digest(value: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class _Job:
    """What every part of one evaluation run works with."""

    cfg: EvalConfig
    echo: Echo  # silent on every rank but 0: one report per run
    manifest: Manifest
    inputs: EvalInput  # the clip recipe, resolved from the checkpoint and the options
    proc: runtime.Process
    device: torch.device


def run(cfg: EvalConfig, echo: Echo) -> dict[str, Any]:
    manifest = load_manifest(cfg.dataset)
    inputs = check_init_inputs(cfg)
    proc, device = runtime.start(cfg.device)
    try:
        return _run(_Job(cfg, echo if proc.is_main else _silent, manifest, inputs, proc, device))
    finally:
        runtime.stop(proc)


def _run(job: _Job) -> dict[str, Any]:
    cfg, echo, manifest, inputs, proc = job.cfg, job.echo, job.manifest, job.inputs, job.proc
    if proc.is_main:
        for note in inputs.notes:  # what was taken or changed of the checkpoint's recipe
            log.warning("%s", note)
    if proc.distributed and cfg.mode == "linear":
        raise ConfigError("--mode linear runs in one process; start it without torchrun or srun")

    # Every split is checked before anything is written, so a bad layout leaves no OUT behind.
    def load_splits(undecodable: dict[str, str] | None = None) -> list[tuple[int, SplitData]]:
        return [
            (
                split,
                load_split(
                    manifest,
                    cfg.root,
                    split,
                    splits_dir=cfg.splits_dir,
                    allow_partial=cfg.allow_partial,
                    undecodable=undecodable,
                ),
            )
            for split in cfg.splits
        ]

    splits = load_splits()
    videos = [i for _, d in splits for i in d.train + d.test]
    if cfg.store is not None:
        check_store(cfg.store, inputs.resize, videos)
    else:
        # Every video is decoded once now: all that fail are named together, before any work.
        failed = _index_sources(videos, cfg.workers, echo)
        if failed and not cfg.allow_partial:
            raise partial_refusal(manifest.name, [describe_undecodable(failed)])
        if failed:  # left out of every split, and named in results.json's partial_notes
            splits = load_splits(failed)
    cfg.out.mkdir(parents=True, exist_ok=True)
    lock = lock_run_directory(cfg.out, "eval", proc)
    try:
        return _evaluate(job, splits)
    finally:
        if lock is not None:
            lock.release()


@contextlib.contextmanager
def _counting_line(what: str, echo: Echo) -> Iterator[Callable[[int, int], None]]:
    """A progress line for a pass counted in items: ``what: done/total  elapsed  ETA``, from
    the first item on (rank 0 only), so no stage of a run is silent for long."""
    line = ProgressLine()
    began = time.monotonic()

    def progress(done: int, total: int) -> None:
        if echo is _silent:  # ranks other than 0 stay quiet
            return
        elapsed = time.monotonic() - began
        line.update(
            f"{what} {done}/{total}  elapsed {format_duration(elapsed)}  "
            f"ETA {format_duration(eta_seconds(done, total, elapsed))}",
            final=done == total,
        )

    try:
        yield progress
    finally:
        line.close()


def _index_sources(videos: list[VideoItem], workers: int, echo: Echo) -> dict[str, str]:
    """Decode every source video once (its frame index, ``eval/sources.py``) with a progress
    line; returns the ones that do not decode."""
    with _counting_line("checking videos:", echo) as progress:
        return undecodable(videos, workers=workers, progress=progress)


def _evaluate(job: _Job, splits: list[tuple[int, SplitData]]) -> dict[str, Any]:
    cfg, echo = job.cfg, job.echo
    protocol = clip_protocol(cfg, job.inputs)
    videos_per_batch = max(1, cfg.batch_size // cfg.clips_per_video)
    per_split: list[dict[str, Any]] = []
    init_info: dict[str, Any] = {}
    notes: list[str] = []
    classes: list[str] = []
    for split, data in splits:
        notes += data.notes
        classes = data.classes
        echo(
            f"split {split}: {len(data.classes)} classes, {len(data.train)} train / "
            f"{len(data.test)} test videos"
        )
        logits: torch.Tensor | None
        if cfg.mode == "linear":
            logits, init_info = _linear(job, data, protocol, videos_per_batch)
        else:
            logits, init_info = _finetune(job, data, protocol, videos_per_batch)
        if logits is None:
            continue  # a non-zero rank: rank 0 gathers the predictions and reports
        row = _score_split(job, data, logits, f"{init_info['init']} {cfg.mode}")
        per_split.append(row)
        if cfg.drop_resume_state:  # the split's predictions are on disk: its state has served
            (cfg.out / f"split{split}" / STATE_NAME).unlink(missing_ok=True)
        echo(
            f"split {split}: clip top-1 {100 * row['clip_top1']:.1f}%  "
            f"video top-1 {100 * row['video_top1']:.1f}%  video top-5 "
            f"{top5_text(row['video_top5'], len(data.classes), '%')}"
        )
    if not job.proc.is_main:
        return {}
    results = _results(job, protocol, init_info, per_split, notes, classes)
    write_results(cfg.out, results, tensorboard=cfg.tensorboard)
    return results


def _score_split(job: _Job, data: SplitData, logits: torch.Tensor, method: str) -> dict[str, Any]:
    """The split's row of ``results.json``, with its video probabilities and confusion matrix
    written beside it. ``logits``: (V, K, C), every test video's K clips."""
    cfg, split = job.cfg, data.split
    labels = torch.tensor([item.label for item in data.test])
    scores = score_clips(logits, labels)
    probs_file = save_video_probs(
        cfg.out / f"split{split}",
        ids=[item.rel for item in data.test],
        labels=labels,
        probs=video_probabilities(logits),
        classes=data.classes,
    )
    plot_confusion(
        cfg.out / f"confusion_split{split}.png",
        scores.confusion,
        data.classes,
        f"{job.manifest.name} split {split}: {method} (video top-1 {100 * scores.video_top1:.1f}%)",
    )
    return {
        "split": split,
        **scores.summary(),
        "clips_per_video": cfg.clips_per_video,
        "num_train_videos": len(data.train),
        "test_videos_per_rank": [len(share) for share in _shares(data.test, job.proc)],
        "num_classes": len(data.classes),
        "confusion_png": f"confusion_split{split}.png",
        "video_probs": str(probs_file.relative_to(cfg.out)),
    }


def _silent(_: str) -> None:
    pass


def clip_protocol(cfg: EvalConfig, inputs: EvalInput) -> ClipProtocol:
    """The clips of this run: the resolved input, K test clips, from the store if given."""
    return ClipProtocol(
        clip_len=inputs.clip_len,
        clips_per_video=cfg.clips_per_video,
        resize=inputs.resize,
        crop=inputs.crop,
        modality=inputs.modality,
        store=str(cfg.store) if cfg.store is not None else None,
        frame_step=inputs.frame_step,
    )


def _linear(
    job: _Job, data: SplitData, protocol: ClipProtocol, videos_per_batch: int
) -> tuple[torch.Tensor, dict[str, Any]]:
    cfg, echo = job.cfg, job.echo
    student, info = build_student(cfg, len(data.classes))
    cache = FeatureCache(cfg.out, {**info, **protocol.describe()})

    line = ProgressLine()
    # The current pass (training videos, then test videos): when and at which count its first
    # report came; the rate is measured from there.
    pass_start = {"time": 0.0, "done": 0, "last": 0}

    def progress(done: int, total: int) -> None:
        if echo is _silent:  # ranks other than 0 stay quiet
            return
        if done <= pass_start["last"] or not pass_start["time"]:
            pass_start.update(time=time.monotonic(), done=done)
        pass_start["last"] = done
        elapsed = time.monotonic() - pass_start["time"]
        eta = eta_seconds(done - pass_start["done"], total - pass_start["done"], elapsed)
        line.update(
            f"features: {done}/{total} videos  elapsed {format_duration(elapsed)}  "
            f"ETA {format_duration(eta)}",
            final=done == total,
        )

    def features(items: list[VideoItem]) -> torch.Tensor:  # (V, K, D)
        return compute_features(
            student, items, protocol, cache, device=job.device,
            videos_per_batch=videos_per_batch, workers=cfg.workers, progress=progress,
        )  # fmt: skip

    echo(f"features: {len(data.train) + len(data.test)} videos (cached in {cache.path})")
    try:
        train_feats, test_feats = features(data.train), features(data.test)
    finally:
        line.close()
    k = train_feats.shape[1]
    train_labels = torch.tensor([item.label for item in data.train]).repeat_interleave(k)
    head = train_linear(
        train_feats.flatten(0, 1),
        train_labels,
        len(data.classes),
        epochs=cfg.effective_epochs,
        lr=cfg.effective_lr,
        weight_decay=cfg.effective_weight_decay,
        seed=cfg.seed,
    )
    with torch.no_grad():
        logits = head(test_feats.flatten(0, 1)).view(len(data.test), k, -1)  # (V, K, C)
    return logits, info


def finetune_settings(cfg: EvalConfig) -> FinetuneSettings:
    return FinetuneSettings(
        epochs=cfg.effective_epochs,
        lr=cfg.effective_lr,
        weight_decay=cfg.effective_weight_decay,
        batch_size=cfg.batch_size,
        workers=cfg.workers,
        seed=cfg.seed,
        amp=cfg.amp,
    )


def _finetune(
    job: _Job, data: SplitData, protocol: ClipProtocol, videos_per_batch: int
) -> tuple[torch.Tensor | None, dict[str, Any]]:
    """Fine-tune on every rank (DDP), then each rank tests its share of the test videos; rank 0
    gets every video's logits in ``data.test`` order, the other ranks ``None``."""
    cfg, echo, proc, device = job.cfg, job.echo, job.proc, job.device
    student, info = build_student(cfg, len(data.classes))
    state_dir = cfg.out / f"split{data.split}"
    state_dir.mkdir(parents=True, exist_ok=True)
    student = finetune(
        student,
        data.train,
        protocol,
        finetune_settings(cfg),
        proc=proc,
        device=device,
        state_dir=state_dir,
        fingerprint=fingerprint(cfg, data.split, protocol),
        init_weights=init_weights_id(info),
        progress=echo,
    )
    if cfg.precise_bn:
        # Every rank makes the same pass with the same (DDP-synchronised) weights, so every rank
        # ends with the statistics one process would compute.
        with _counting_line("precise BN: training clips", echo) as bn_progress:
            recompute_bn_stats(
                student,
                data.train,
                protocol,
                device=device,
                batch_size=cfg.batch_size,
                workers=cfg.workers,
                seed=cfg.seed,
                progress=bn_progress,
            )
    student.eval()
    use_amp = amp_enabled(cfg.amp, device)

    def logits_of(clips: torch.Tensor) -> torch.Tensor:
        x = student.normalize(clips.to(device))
        with autocast(device, use_amp):
            return student(x)[HEAD]

    with _counting_line("testing: videos", echo) as test_progress:
        logits = clip_outputs(
            logits_of,
            _shares(data.test, proc)[proc.rank],
            protocol,
            videos_per_batch=videos_per_batch,
            workers=cfg.workers,
            progress=test_progress,
        )
    return _gathered(logits, len(data.test), proc), info


def _gathered(mine: torch.Tensor, videos: int, proc: runtime.Process) -> torch.Tensor | None:
    """Every rank's logits of its share (:func:`_shares`), in test order on rank 0; ``None`` on
    the other ranks."""
    if not proc.distributed:
        return mine
    gathered: list[torch.Tensor | None] = [None] * proc.world_size
    dist.all_gather_object(gathered, mine)
    if proc.rank != 0:
        return None
    order = [i for r in range(proc.world_size) for i in range(r, videos, proc.world_size)]
    stacked = torch.cat([t for t in gathered if t is not None])
    restored = torch.empty_like(stacked)
    restored[torch.tensor(order)] = stacked
    return restored


def _shares(items: list[VideoItem], proc: runtime.Process) -> list[list[VideoItem]]:
    """Each rank's test videos: every ``world_size``-th one, starting at the rank."""
    return [items[r :: proc.world_size] for r in range(proc.world_size)]


def _protocol(cfg: EvalConfig, clips: ClipProtocol, inputs: EvalInput) -> dict[str, Any]:
    """The whole protocol of the run, as results.json records it: clips, input, training."""
    protocol = clips.describe()
    protocol.update(
        {
            "input_recipe": inputs.record,  # where clip_len, frame_step, resize, crop came from
            "mode": cfg.mode,
            "epochs": cfg.effective_epochs,
            "lr": cfg.effective_lr,
            "weight_decay": cfg.effective_weight_decay,
            "batch_size": cfg.batch_size,
            "seed": cfg.seed,
        }
    )
    if cfg.mode == "linear":
        protocol["classifier"] = (
            "logistic regression on standardised frozen features of the K clips of each "
            "training video, full-batch Adam"
        )
        return protocol
    protocol.update(finetune_settings(cfg).describe())
    protocol["bn_stats"] = (
        "re-estimated after fine-tuning: one pass over a random clip of every training video"
        if cfg.precise_bn
        else "running averages from training"
    )
    return protocol


def _results(
    job: _Job,
    clips: ClipProtocol,
    init_info: dict[str, Any],
    per_split: list[dict[str, Any]],
    notes: list[str],
    classes: list[str],
) -> dict[str, Any]:
    headline = per_split[0] if len(per_split) == 1 else mean_over_splits(per_split)
    cfg, modality = job.cfg, job.inputs.modality
    protocol = _protocol(cfg, clips, job.inputs)
    return {
        "dataset": job.manifest.name,
        "manifest": job.manifest.source,
        "split": cfg.split,
        "init": init_info.get("init", cfg.init),
        "student": init_info.get("student", cfg.student),
        "checkpoint": str(cfg.checkpoint) if cfg.checkpoint is not None else None,
        "mode": cfg.mode,
        "modality": modality,
        **{k: headline[k] for k in ("clip_top1", "clip_top5", "video_top1", "video_top5")},
        "num_test_videos": headline["num_test_videos"],
        "clips_per_video": cfg.clips_per_video,
        "per_split": per_split,
        "protocol": protocol,
        "init_details": init_info,
        "allow_partial": cfg.allow_partial,
        "partial_notes": notes,
        "classes": classes,
        "config": cfg.to_json(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
