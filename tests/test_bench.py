"""The benchmarks' own rules: one stated duration, and a warning for a figure whose repeats
disagree too much to trust."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from click.testing import CliRunner

from distinit.extract.bench import teacher_only
from distinit.pipeline.bench import EXTRACT_BENCH_DURATION, Repeats, bench


def test_a_figure_whose_repeats_spread_too_wide_is_warned_about(
    capsys: pytest.CaptureFixture[str],
) -> None:
    timing = Repeats()
    assert timing.best("steady", [1.0, 1.2], lower_is_better=True) == 1.0
    assert timing.best("steady rate", [50.0, 45.0], lower_is_better=False) == 50.0
    assert capsys.readouterr().out == "" and timing.summary() is None
    assert timing.best("decode only, 2 workers", [2.0, 1.0], lower_is_better=True) == 1.0
    line = capsys.readouterr().out
    assert line.startswith("warning: decode only, 2 workers: its 2 repeats are 2.00x apart")
    assert line.count("\n") == 1 and timing.unsteady == {"decode only, 2 workers": 2.0}
    summary = timing.summary()
    assert summary is not None and "1 figures were unsteady (decode only, 2 workers)" in summary


class _SlowSecondPass:
    """A teacher runner whose timed passes take 10 ms and then 100 ms."""

    def __init__(self) -> None:
        self.call_frames: int | None = 8
        self.calls = 0

    def run_views(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.calls > 1:  # the first call is the warm-up
            time.sleep(0.01 if self.calls == 2 else 0.1)
        return {}


def test_teacher_timings_go_through_the_spread_check(capsys: pytest.CaptureFixture[str]) -> None:
    timing, runner = Repeats(), _SlowSecondPass()
    seconds = teacher_only(runner, np.zeros((4, 2, 2, 3)), 4, timing, "teacher only, batch 4")  # type: ignore[arg-type]
    assert 0.01 <= seconds < 0.1  # the faster pass
    assert runner.call_frames == 8  # timed at 4 frames a call, then put back
    assert "warning: teacher only, batch 4: its 2 repeats are" in capsys.readouterr().out


def test_bench_extract_states_one_duration() -> None:
    group, command = (
        " ".join(CliRunner().invoke(bench, args).output.split())  # undo click's wrapping
        for args in (["--help"], ["extract", "--help"])
    )
    durations = re.compile(r"[~\d][\d.~-]* (?:min|minutes|CPU-minutes)\b")
    stated = set(durations.findall(EXTRACT_BENCH_DURATION))
    assert stated and set(durations.findall(group)) == stated == set(durations.findall(command))
