"""``RUN/log.jsonl`` (one JSON object per logged step), its optional TensorBoard mirror, and the
loss-curve PNG drawn from it."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from distinit.pipeline.atomic import atomic_write
from distinit.train.events import EventLog

LOG_NAME = "log.jsonl"
CURVE_NAME = "loss.png"


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut short by a kill: everything after it is unreliable
    return out


def run_losses(path: Path) -> tuple[float | None, float | None]:
    """The first and last logged total loss of the whole run (every invocation of it), so a
    resumed or already finished run reports the same span as an uninterrupted one."""
    entries = read_log(path)
    if not entries:
        return None, None
    return float(entries[0]["loss"]), float(entries[-1]["loss"])


def truncate_log(path: Path, keep_until_step: int) -> None:
    """Drop entries past the step a resumed run restarts from (they will be logged again)."""
    entries = [e for e in read_log(path) if e["step"] <= keep_until_step]
    atomic_write(path, "".join(json.dumps(e) + "\n" for e in entries))


class RunLog:
    """Where a training step's metrics are logged: a line of ``log.jsonl`` and, with
    ``tensorboard``, the same numbers as TensorBoard scalars in the run directory (see
    :mod:`distinit.train.events`). ``keep_until_step``: the step a resumed run restarts after;
    what an earlier invocation logged past it is hidden, as :func:`truncate_log` drops it."""

    def __init__(self, path: Path, *, tensorboard: bool = False, keep_until_step: int = 0) -> None:
        self.path = path
        self._events = (
            EventLog(path.parent, purge_step=keep_until_step + 1) if tensorboard else None
        )
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held for the whole run

    def write(self, entry: dict[str, Any]) -> None:
        self._fh.write(json.dumps(entry) + "\n")
        self._fh.flush()
        if self._events is not None:
            self._events.write(int(entry["step"]), {k: v for k, v in entry.items() if k != "step"})

    def close(self) -> None:
        self._fh.close()
        if self._events is not None:
            self._events.close()


def plot_loss(log_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    entries = read_log(log_path)
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [e["step"] for e in entries]
    losses = [e["loss"] for e in entries]
    window = smoothing_window(len(losses))
    ax.plot(steps, losses, label="total", color="C0", alpha=0.35 if window > 1 else 1.0)
    if window > 1:
        ax.plot(steps, smooth(losses, window), label=f"total, mean of {window} steps", color="C0")
    teachers = sorted(entries[0]["loss_per_teacher"]) if entries else []
    if len(teachers) > 1:
        for t in teachers:
            per = [e["loss_per_teacher"][t] for e in entries]
            ax.plot(steps, smooth(per, window), label=t, alpha=0.7)
    ax.set_xlabel("step")
    ax.set_ylabel("KL(teacher || student) x T²")
    ax.set_title(f"{log_path.parent.name}: distillation loss, {steps[-1] if steps else 0} steps")
    ax.legend()
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=100)
    atomic_write(png_path, image.getvalue())
    plt.close(fig)


def smoothing_window(n: int) -> int:
    """Steps averaged in the plotted curve: about a twentieth of the run (1 for short runs)."""
    return max(1, n // 20)


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing mean over ``window`` entries (shorter at the start), so step noise does not hide
    the trend; the raw curve is drawn beside it."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out
