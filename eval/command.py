"""``distinit eval``: fine-tune or linearly probe an initialisation on a labelled video dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from distinit.eval.config import EvalConfig
from distinit.pipeline.options import config_from, config_options


@click.command("eval")
@click.argument("runs", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--compare",
    is_flag=True,
    help="Print one table of the eval outputs RUNS; an RGB and a flow run on the same test "
    "videos also get their late fusion (mean of the two video-level softmaxes).",
)
@config_options(EvalConfig, replay="OUT/results.json (eval writes it with the accuracies)")
def eval_command(runs: tuple[Path, ...], compare: bool, **params: Any) -> None:
    """Fine-tune or linearly probe a student on HMDB51 / UCF101 / a class-folder dataset.

    \b
      distinit eval --dataset hmdb51 --root HMDB51 --checkpoint RUN/final.pt --out OUT
      distinit eval --dataset hmdb51 --root HMDB51 --init inflated --out OUT_INFL
      distinit eval --config OUT/results.json --out OUT_LINEAR --mode linear
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
    cfg = config_from(EvalConfig, params)
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
