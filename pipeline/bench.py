"""``distinit bench``: throughput figures of each stage, printed with the machine they came from."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence

import click

from distinit.pipeline.cli import LazyGroup

# How long `bench extract` takes, for its help and the group's (the README says how it was found).
EXTRACT_BENCH_DURATION = "about 10 min on 2 idle CPU cores; --skip-memory saves about 3"

BENCHES = {
    "extract": (
        "distinit.extract.bench:bench_extract",
        f"Stage one: decode, teacher, end to end ({EXTRACT_BENCH_DURATION}).",
    ),
    "train": ("distinit.train.bench:bench_train", "Stage two: data loader vs synthetic clips."),
    "memory": (
        "distinit.extract.memory_bench:bench_memory",
        "Stage one: peak memory for a long video against a short one.",
    ),
    "scale": (
        "distinit.pipeline.scale_bench:bench_scale",
        "Extract, resume, manifest, inspect and train start-up at 1k and 10k videos.",
    ),
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


# Repeats of one figure further apart than this (max/min) are not to be trusted.
SPREAD_LIMIT = 1.25


class Repeats:
    """The figure of each timed measurement repeated on a machine that may be busy: the best
    repeat (other load only ever slows a run), with a warning line when the repeats are more than
    :data:`SPREAD_LIMIT` apart. Such a spread says the load was heavy enough that even the best
    repeat may be slowed, and ratios between figures can contradict each other."""

    def __init__(self) -> None:
        self.unsteady: dict[str, float] = {}  # figure -> max/min of its repeats

    def best(self, figure: str, values: Sequence[float], *, lower_is_better: bool) -> float:
        spread = max(values) / min(values)
        if spread > SPREAD_LIMIT:
            self.unsteady[figure] = spread
            click.echo(
                f"warning: {figure}: its {len(values)} repeats are {spread:.2f}x apart "
                f"(max/min, trusted up to {SPREAD_LIMIT}); the machine is busy"
            )
        return min(values) if lower_is_better else max(values)

    def summary(self) -> str | None:
        """One closing line naming the unsteady figures, or None."""
        if not self.unsteady:
            return None
        return (
            f"warning: {len(self.unsteady)} figures were unsteady "
            f"({', '.join(self.unsteady)}): re-run on an idle machine before quoting them"
        )


@click.group(cls=LazyGroup, lazy=BENCHES)
def bench() -> None:
    """Measure throughput on this machine (figures, not pass/fail tests)."""
