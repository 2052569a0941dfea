"""``distinit export``: the click command; the work is :mod:`distinit.export.bundle`'s."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("export", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder for model.safetensors, config.json and README.md (new or empty).",
)
@click.option(
    "--results",
    type=click.Path(path_type=Path),
    default=None,
    help="An eval results.json of this checkpoint: its accuracies go into the model card.",
)
@click.option("--force", is_flag=True, help="Overwrite the export files in a non-empty --out.")
def export(checkpoint: Path, out: Path, results: Path | None, force: bool) -> None:
    """Export RUN/final.pt as torchvision weights (safetensors), config.json and a model card.

    \b
      distinit export RUN/final.pt --out EXPORT
      distinit export RUN/final.pt --out EXPORT --results OUT/results.json
    """
    from distinit.export.bundle import export_checkpoint

    done = export_checkpoint(checkpoint, out, results=results, force=force)
    for path in done.files:
        click.echo(f"wrote {path}")
