"""TensorBoard event files: the metrics train logs (``log.jsonl``) and eval reports
(``results.json``), as scalars, when ``--tensorboard`` asks for them.

Optional: the ``tensorboard`` package (``pip install 'distinit[tensorboard]'``) is imported
only here and only when asked; without it ``--tensorboard`` is refused in one line before
anything runs. The events go into the run's own folder, so ``tensorboard --logdir RUNS`` shows
each run (or eval output) under its directory name.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distinit.pipeline.errors import ConfigError


def require_tensorboard() -> None:
    """Refuse ``--tensorboard`` where the package is missing (torch's writer needs it)."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "--tensorboard needs the tensorboard package: pip install 'distinit[tensorboard]' "
            "(or pip install tensorboard)"
        )


def scalars(entry: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """``(tag, value)`` of every number in ``entry``; nested dicts become ``outer/inner`` tags
    (``loss_per_teacher/objects``), so a new field of a log entry needs no change here."""
    for key, value in entry.items():
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from scalars(value, f"{tag}/")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield tag, float(value)


class EventLog:
    """One writer of event files into ``directory``.

    ``purge_step``: the first step this writer will log; TensorBoard then hides what earlier
    event files hold from that step on (what an interrupted invocation logged past the step a
    resumed run restarts after), so the steps it repeats are not shown twice.
    """

    def __init__(self, directory: Path, purge_step: int | None = None) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(directory), purge_step=purge_step)

    def write(self, step: int, entry: dict[str, Any]) -> None:
        for tag, value in scalars(entry):
            self._writer.add_scalar(tag, value, global_step=step)

    def close(self) -> None:
        self._writer.close()  # flushes: the events of a finished run are all on disk
