"""``distinit eval``: fine-tune or linearly probe an initialisation on a labelled video dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from distinit.eval.config import (
    BASELINE_INPUT,
    DEFAULTS,
    INITS,
    MODALITIES,
    MODES,
    SPLITS,
    EvalConfig,
)
from distinit.pipeline.cli import FRAME_SIZE
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.frame_geometry import format_size
from distinit.pipeline.runtime import DEFAULT_LOADER_WORKERS


@click.command("eval")
@click.argument("runs", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--compare",
    is_flag=True,
    help="Print one table of the eval outputs RUNS; an RGB and a flow run on the same test "
    "videos also get their late fusion (mean of the two video-level softmaxes).",
)
@click.option(
    "--dataset",
    help="hmdb51, ucf101, folder, or the path of a manifest .json. folder: one sub-folder of "
    "videos per class; with --splits DIR its trainlist0N.txt/testlist0N.txt define split N, "
    "else split N puts a fixed, hash-chosen 30% of each class's videos in test. "
    "[required unless --compare]",
)
@click.option(
    "--root",
    type=click.Path(path_type=Path),
    help="Dataset root (class folders). [required unless --compare]",
)
@click.option(
    "--store",
    type=click.Path(path_type=Path),
    default=None,
    help="Frame store of the dataset (distinit extract --videos ROOT --teacher none --out DIR): "
    "clips are read by row from it instead of decoding the source videos every epoch.",
)
@click.option(
    "--splits",
    "splits_dir",
    type=click.Path(path_type=Path),
    help="Folder where split files are looked for [default: --root].",
)
@click.option(
    "--split",
    type=click.Choice(SPLITS),
    default="1",
    show_default=True,
    help="Split to run; 'all' runs 1, 2, 3 and reports the mean.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Output folder (results.json, results.md, confusion PNGs). [required unless --compare]",
)
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    help="Distilled student RUN/final.pt (implies --init checkpoint).",
)
@click.option(
    "--init",
    type=click.Choice(INITS),
    default=None,
    help="Baseline initialisation: scratch, or inflated (ImageNet ResNet-18, I3D-style) "
    "[default: checkpoint when --checkpoint is given].",
)
@click.option(
    "--student",
    default="r3d_18",
    show_default=True,
    help="Architecture for --init scratch/inflated: r3d_18, mc3_18, r2plus1d_18, s3d, "
    "mvit_v2_s (16x224x224 clips only), swin3d_t; inflated only for the three ResNets "
    "(they have a 2D ImageNet ResNet-18 counterpart).",
)
@click.option(
    "--modality",
    type=click.Choice(MODALITIES),
    default=None,
    help="Student input for --init scratch/inflated: rgb frames, or flow (DIS optical flow "
    "between consecutive frames, 2 channels; inflated averages the RGB first conv over colour) "
    "[default: rgb; a checkpoint's own, which a different value contradicts].",
)
@click.option(
    "--inflate-weights",
    type=click.Path(path_type=Path),
    help="Local 2D ResNet-18 state dict for --init inflated.",
)
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default="finetune",
    show_default=True,
    help="finetune: all layers and a new head; linear: frozen backbone, linear classifier.",
)
@click.option(
    "--epochs",
    type=int,
    default=None,
    help=f"Epochs of fine-tuning, or full-batch optimizer steps of the linear probe "
    f"[default: {DEFAULTS['finetune']['epochs']} finetune, {DEFAULTS['linear']['epochs']} linear].",
)
@click.option(
    "--lr",
    type=float,
    default=None,
    help=f"Peak learning rate [default: {DEFAULTS['finetune']['lr']} finetune, "
    f"{DEFAULTS['linear']['lr']} linear].",
)
@click.option(
    "--weight-decay",
    type=float,
    default=None,
    help=f"L2 weight decay [default: {DEFAULTS['finetune']['weight_decay']} finetune, "
    f"{DEFAULTS['linear']['weight_decay']} linear].",
)
@click.option(
    "--batch-size", type=int, default=32, show_default=True, help="Clips per step (global)."
)
@click.option(
    "--clip-len",
    type=int,
    default=None,
    help=f"Frames per clip [default: the checkpoint's; {BASELINE_INPUT['clip_len']} for "
    "--init scratch/inflated]. Every input flag that changes a checkpoint's recipe is said on "
    "stderr and recorded in results.json.",
)
@click.option(
    "--frame-step",
    type=int,
    default=None,
    help="Native frames between consecutive clip frames [default: the checkpoint's (its "
    f"--frame-stride, when its shards held every native frame); {BASELINE_INPUT['frame_step']} "
    "for --init scratch/inflated].",
)
@click.option(
    "--clips-per-video",
    type=int,
    default=10,
    show_default=True,
    help="K uniformly spaced test clips per video.",
)
@click.option(
    "--resize",
    type=FRAME_SIZE,
    default=None,
    help="Frames are resized to WxH pixels [default: the checkpoint's; "
    f"{format_size(BASELINE_INPUT['resize'])} for --init scratch/inflated].",
)
@click.option(
    "--crop",
    type=int,
    default=None,
    help=f"Square crop side, pixels [default: the checkpoint's; {BASELINE_INPUT['crop']} for "
    "--init scratch/inflated].",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option(
    "--workers",
    type=int,
    default=DEFAULT_LOADER_WORKERS,
    show_default=f"one per core, at most 4; here {DEFAULT_LOADER_WORKERS}",
    help="Clip loader processes.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seeds the head and clip sampling."
)
@click.option(
    "--allow-partial",
    is_flag=True,
    help="Accept missing classes/videos and other counts (recorded in results).",
)
@click.option("--no-amp", is_flag=True, help="Disable mixed precision on CUDA.")
@click.option(
    "--precise-bn/--no-precise-bn",
    default=True,
    show_default=True,
    help="Finetune: re-estimate BatchNorm statistics on training clips before testing.",
)
@click.option(
    "--drop-resume-state",
    is_flag=True,
    help="Finetune: delete each split's finetune.pt once its results are written (~254 MB for "
    "r3d_18); running the same command again then fine-tunes again.",
)
@click.option(
    "--tensorboard",
    is_flag=True,
    help="Also write each split's accuracies as TensorBoard event files into --out; needs "
    "pip install 'distinit[tensorboard]'.",
)
def eval_command(runs: tuple[Path, ...], compare: bool, **options: Any) -> None:
    """Fine-tune or linearly probe a student on HMDB51 / UCF101 / a class-folder dataset.

    \b
      distinit eval --dataset hmdb51 --root HMDB51 --checkpoint RUN/final.pt --out OUT
      distinit eval --dataset hmdb51 --root HMDB51 --init inflated --out OUT_INFL
      distinit eval --compare OUT_SCRATCH OUT_INFL OUT
      distinit eval --compare OUT_RGB OUT_FLOW        (adds RGB + flow late fusion)
    """
    if compare:
        if not runs:
            raise click.UsageError("--compare needs eval output folders")
        from distinit.eval.report import compare_table

        click.echo(compare_table(list(runs)))
        return
    if runs:
        raise click.UsageError(f"unexpected arguments {list(runs)} (did you mean --compare?)")
    for name in ("dataset", "root", "out"):
        if options[name] is None:
            raise click.UsageError(f"--{name} is required")
    cfg = _config(options)
    if cfg.tensorboard:
        from distinit.train.events import require_tensorboard

        require_tensorboard()  # before any work, not after hours of fine-tuning
    from distinit.eval.runner import run

    results = run(cfg, click.echo)
    if not results:
        return  # a torchrun rank other than 0: rank 0 reports
    click.echo(f"results: {cfg.out / 'results.json'}")
    click.echo(
        f"{results['dataset']} {results['init']} {results['modality']} {results['mode']}: "
        f"video top-1 {100 * results['video_top1']:.1f}%  "
        f"clip top-1 {100 * results['clip_top1']:.1f}%"
    )


def _config(options: dict[str, Any]) -> EvalConfig:
    init = options.pop("init")
    if init is None:
        init = "checkpoint" if options["checkpoint"] is not None else None
    if init is None:
        raise ConfigError("give either --checkpoint RUN/final.pt or --init scratch|inflated")
    amp = not options.pop("no_amp")
    return EvalConfig(init=init, amp=amp, **options)
