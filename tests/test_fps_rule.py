"""``distinit extract --fps``: the first native frame at or after each grid point n/fps, never
duplicated, checked on shards made from an NTSC-rate (30000/1001 fps) source.

A 25 fps source at ``--fps 5`` puts every kept frame exactly on the grid, where "nearest" or
"last before" would pick the same frames; at 30000/1001 and 7 fps the rules disagree, and above
the native rate a rule that duplicated frames would show. The expected indices are computed here
with exact fractions from the source's own frame times (frame i at i * 1001/30000 s).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from distinit.pipeline.shards import ShardSet
from distinit.train.checkpoint import load_final
from tests.videogen import make_index_video

NATIVE = 60  # frames, about 2 s
FRAME = Fraction(1001, 30000)  # seconds between native frames
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def first_at_or_after(fps: int) -> list[int]:
    """The promised rule, from scratch: for n = 0, 1, ... while n/fps is within the video, the
    first native frame i with i * FRAME >= n/fps; each native frame kept at most once."""
    kept: list[int] = []
    n = 0
    while Fraction(n, fps) <= (NATIVE - 1) * FRAME:
        i = next(i for i in range(NATIVE) if i * FRAME >= Fraction(n, fps))
        if not kept or kept[-1] != i:
            kept.append(i)
        n += 1
    return kept


def nearest(fps: int) -> list[int]:
    """A rule the test must tell apart from the promised one."""
    grid = [Fraction(n, fps) for n in range(int((NATIVE - 1) * FRAME * fps) + 1)]
    return sorted({min(range(NATIVE), key=lambda i: abs(i * FRAME - g)) for g in grid})


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("fps_rule")
    (root / "videos").mkdir()
    make_index_video(root / "videos" / "ntsc.mp4", NATIVE, fps="30000/1001")
    outs = {fps: root / f"fps{fps}" for fps in (7, 40)}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distinit.pipeline.cli",
                "extract",
                "--videos",
                str(root / "videos"),
                "--out",
                str(out),
                "--fps",
                str(fps),
                "--workers",
                "1",
                # one view: the frame rule is the same for any number of them
                "--views",
                "1",
                "--no-mirror-views",
            ],
            env=ENV,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        for fps, out in outs.items()
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    return outs


def test_below_the_native_rate_keeps_the_first_frame_at_or_after_each_grid_point(
    shards: dict[int, Path],
) -> None:
    expected = first_at_or_after(7)
    assert expected != nearest(7), "the source must tell the rule from 'nearest'"
    s = ShardSet(shards[7])
    assert s.frame_indices("ntsc.mp4").tolist() == expected
    np.testing.assert_allclose(s.times("ntsc.mp4"), [float(i * FRAME) for i in expected], atol=1e-4)
    assert s.records["ntsc.mp4"].native_frames == NATIVE


def test_above_the_native_rate_keeps_every_frame_once(shards: dict[int, Path]) -> None:
    expected = first_at_or_after(40)
    assert expected == list(range(NATIVE))  # the rule itself: no frame twice, none skipped
    s = ShardSet(shards[40])
    assert s.frame_indices("ntsc.mp4").tolist() == expected
    assert s.records["ntsc.mp4"].row_count == NATIVE


def test_training_runs_on_fps_shards(shards: dict[int, Path], tmp_path: Path) -> None:
    """Stage two on shards made with --fps: clips are the kept rows, decoded by their times."""
    out = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "distinit.pipeline.cli", "train", "--targets", str(shards[7]),
         "--out", str(out), "--student", "mc3_18", "--clip-len", "4", "--resize", "40x32",
         "--crop", "32", "--batch-size", "2", "--max-steps", "2", "--workers", "0",
         "--device", "cpu"],
        env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = load_final(out / "final.pt")
    assert ckpt.step == 2 and ckpt.config["targets"] == str(shards[7])
    steps = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2] and all(np.isfinite(s["loss"]) for s in steps)
