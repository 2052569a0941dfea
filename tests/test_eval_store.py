"""`distinit eval --store`: clips come from a frame store of the dataset, not its source videos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from distinit.eval.command import eval_command
from distinit.extract.config import ExtractConfig
from distinit.extract.runner import run_extract
from distinit.pipeline.errors import DatasetError
from tests.eval_support import STUDENT, TINY, make_eval_data


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("eval_store")
    data = make_eval_data(base, seed=2)
    store = base / "store"
    summary = run_extract(
        ExtractConfig(
            videos=str(data["root"]), out=str(store), teachers=("none",), store_size=(40, 32)
        )
    )
    assert summary.failed == 0 and summary.done > 0
    return {**data, "store": store}


def _args(data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "--dataset", str(data["manifest"]), "--root", str(data["root"]), "--splits",
        str(data["root"] / "splits"), "--mode", "linear", "--init", "scratch", "--student",
        STUDENT, "--out", str(out), *TINY, *extra,
    ]  # fmt: skip


def test_eval_reads_the_store_and_never_the_source_videos(
    stored: dict[str, Path], tmp_path: Path
) -> None:
    # Replace every source video by bytes no decoder accepts: only the store can serve clips.
    root = tmp_path / "broken"
    shutil.copytree(stored["root"], root)
    videos = [p for p in root.rglob("*") if p.suffix in (".avi", ".mp4")]
    assert videos
    for p in videos:
        p.write_bytes(b"not a video")
    data = {**stored, "root": root}
    out = tmp_path / "with_store"
    result = CliRunner().invoke(eval_command, _args(data, out, "--store", str(stored["store"])))
    assert result.exit_code == 0, result.output + repr(result.exception)
    protocol = json.loads((out / "results.json").read_text())["protocol"]
    assert protocol["store"] == str(stored["store"]) and "frame store" in protocol["frames"]
    without = CliRunner().invoke(eval_command, _args(data, tmp_path / "without"))
    assert without.exit_code != 0 and "do not decode" in str(without.exception)


def test_a_store_that_cannot_serve_the_protocol_is_refused(
    stored: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    wrong_size = CliRunner().invoke(
        eval_command, _args(stored, out, "--store", str(stored["store"]), "--resize", "64x48")
    )
    assert isinstance(wrong_size.exception, DatasetError)
    assert "frames are 40x32" in str(wrong_size.exception) and not out.exists()
    fewer = tmp_path / "fewer"
    shutil.copytree(stored["root"], fewer)
    dropped = sorted(p for p in fewer.rglob("*") if p.suffix in (".avi", ".mp4"))[0]
    dropped.unlink()  # the store then lacks one video of the split
    partial = tmp_path / "partial"
    run_extract(
        ExtractConfig(videos=str(fewer), out=str(partial), teachers=("none",), store_size=(40, 32))
    )
    missing = CliRunner().invoke(eval_command, _args(stored, out, "--store", str(partial)))
    assert isinstance(missing.exception, DatasetError)
    assert "not in it" in str(missing.exception) and not out.exists()
