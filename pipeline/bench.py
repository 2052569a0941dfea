"""``distinit bench``: throughput figures of each stage, printed with the machine they came from."""

from __future__ import annotations

import os
import platform

import click

from distinit.pipeline.cli import LazyGroup

BENCHES = {
    "extract": (
        "distinit.extract.bench:bench_extract",
        "Stage one: decode, teacher, end to end (~2 min on CPU).",
    ),
    "train": ("distinit.train.bench:bench_train", "Stage two: data loader vs synthetic clips."),
}


def machine_description() -> str:
    """One line naming the machine, so figures are never read without their context."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} intra-op threads"
    )


@click.group(cls=LazyGroup, lazy=BENCHES)
def bench() -> None:
    """Measure throughput on this machine (figures, not pass/fail tests)."""
