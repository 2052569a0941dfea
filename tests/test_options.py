"""Options made from config fields (distinit.pipeline.options) and ``--config FILE`` replay."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from distinit.pipeline.cli import cli
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.options import (
    AMP,
    RESIZE,
    Flag,
    config_from,
    config_options,
    opt,
    read_saved_config,
)


def _double(value: int, _: object) -> int:
    return 2 * value


@dataclasses.dataclass(frozen=True)
class Toy:
    name: str = opt(flag="A name.")
    size: tuple[int, int] = opt((171, 128), RESIZE)
    amp: bool = opt(True, AMP)
    loud: bool = opt(False, "Shout.")
    mode: str = opt("a", "Mode.", choices=("a", "b"))
    tags: tuple[str, ...] = opt((), "A tag (repeatable).", name="--tag")
    steps: int = opt(3, "Steps, doubled.", parse=_double)
    limit: float | None = opt(None, "A limit.")
    rank: int = opt(0, "Not replayed.", replay=False)


def _toy_command(seen: list[Toy]) -> click.Command:
    @click.command()
    @config_options(Toy, replay="TOY.json")
    def toy(**params: Any) -> None:
        seen.append(config_from(Toy, params))

    return toy


def _invoke(args: list[str]) -> tuple[click.testing.Result, list[Toy]]:
    seen: list[Toy] = []
    return CliRunner().invoke(_toy_command(seen), args), seen


def test_every_field_becomes_its_option_with_type_default_and_help() -> None:
    result, _ = _invoke(["--help"])
    text = " ".join(result.output.split())
    for part in (
        "--name TEXT A name. [required unless --config]",
        "--size WxH Frame size WIDTHxHEIGHT",
        "[default: 171x128]",
        "--amp / --no-amp",
        "--loud / --no-loud Shout.",
        "--mode [a|b]",
        "--tag TEXT",
        "--config FILE Replay the config saved in TOY.json",
    ):
        assert part in text, result.output
    assert "no-loud]" not in text  # a flag that is off by default shows no default


def test_given_options_are_typed_and_parsed() -> None:
    args = ["--name", "x", "--size", "64x48", "--no-amp", "--tag", "p", "--tag", "q"]
    result, seen = _invoke([*args, "--steps", "5", "--limit", "2"])
    assert result.exit_code == 0, result.output
    assert seen == [Toy("x", (64, 48), False, False, "a", ("p", "q"), 10, 2.0, 0)]
    defaults, seen = _invoke(["--name", "y"])
    assert seen == [Toy("y", steps=6)]  # parse applies to the default too


def test_a_missing_required_option_is_a_usage_error() -> None:
    result, seen = _invoke([])
    assert result.exit_code == 2 and not seen
    assert "Missing option '--name'" in result.output


def test_config_replays_a_file_and_given_options_override_it(tmp_path: Path) -> None:
    saved = tmp_path / "toy.json"
    values = {"name": "s", "size": [32, 24], "amp": False, "loud": True, "tags": ["t"]}
    saved.write_text(json.dumps({**values, "steps": 7, "limit": None, "rank": 5}))
    result, seen = _invoke(["--config", str(saved)])
    assert result.exit_code == 0, result.output
    # Replayed as saved (steps is a field value: not parsed again); rank is not replayed.
    assert seen == [Toy("s", (32, 24), False, True, "a", ("t",), 7, None, 0)]
    _, seen = _invoke(["--config", str(saved), "--no-loud", "--name", "n", "--steps", "1"])
    assert seen == [Toy("n", (32, 24), False, False, "a", ("t",), 2, None, 0)]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "not a JSON file"),
        ("[1, 2]", "not a saved config"),
        ('{"name": "x", "colour": 1}', "unknown fields: colour"),
        ('{"name": 3}', "name cannot be 3"),
        ('{"size": "big"}', "size cannot be 'big'"),
    ],
)
def test_a_bad_config_file_is_one_line_naming_it(tmp_path: Path, content: str, reason: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(ConfigError, match=rf"^--config {bad}: .*{reason}"):
        read_saved_config(str(bad), Toy)


def test_a_flag_is_written_once() -> None:
    assert Flag(help="x").flag("batch_size") == "--batch-size"
    assert Flag(help="x", name="--teacher").flag("teachers") == "--teacher"


# --- The commands' own configs. ------------------------------------------------------------------


class _Captured(Exception):
    pass


@pytest.fixture
def captured_train(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """``distinit train`` stopped right after it built its config."""
    from distinit.train import command

    seen: list[Any] = []

    def capture(cfg: Any) -> None:
        seen.append(cfg)
        raise _Captured

    monkeypatch.setattr(command, "_check_inputs", capture)
    return seen


def _train_config(tmp_path: Path) -> Any:
    from distinit.train.config import TrainConfig

    return TrainConfig(
        targets=str(tmp_path / "shards"),
        out=str(tmp_path / "run"),
        student="mc3_18",
        resize=(64, 48),
        crop=32,
        clip_len=4,
        lr=0.02,
        grad_clip=None,
        teacher_weights=(("objects", 1.0), ("scenes", 0.5)),
        init_from=str(tmp_path / "init" / "final.pt"),
        tensorboard=True,
        max_steps=7,
    )


def test_a_saved_train_config_replays_to_the_same_config(
    tmp_path: Path, captured_train: list[Any]
) -> None:
    from distinit.train.command import train

    cfg = _train_config(tmp_path)
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps(cfg.to_json()))
    result = CliRunner().invoke(train, ["--config", str(saved)])
    assert isinstance(result.exception, _Captured), result.output
    assert captured_train == [cfg]
    flags = ["--lr", "0.05", "--no-tensorboard", "--out", str(tmp_path / "run2")]
    flags += ["--grad-clip", "1"]
    result = CliRunner().invoke(train, ["--config", str(saved), *flags])
    assert isinstance(result.exception, _Captured), result.output
    changed = {"lr": 0.05, "tensorboard": False, "out": str(tmp_path / "run2"), "grad_clip": 1.0}
    assert captured_train[1] == dataclasses.replace(cfg, **changed)


def test_a_train_config_made_with_relative_paths_replays_from_another_directory(
    tmp_path: Path, captured_train: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from distinit.train.command import train

    (tmp_path / "work").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    cfg = dataclasses.replace(_train_config(tmp_path), targets="shards", out="run", videos="v")
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps(cfg.replayable_json()))
    monkeypatch.chdir(tmp_path / "elsewhere")
    result = CliRunner().invoke(train, ["--config", str(saved)])
    assert isinstance(result.exception, _Captured), result.output
    work = tmp_path / "work"
    assert (captured_train[0].targets, captured_train[0].out, captured_train[0].videos) == (
        str(work / "shards"), str(work / "run"), str(work / "v"),
    )  # fmt: skip


def test_train_flags_alone_give_the_config_they_say(
    tmp_path: Path, captured_train: list[Any]
) -> None:
    from distinit.train.command import train

    cfg = _train_config(tmp_path)
    args = ["--targets", cfg.targets, "--out", cfg.out, "--student", "mc3_18", "--resize",
            "64x48", "--crop", "32", "--clip-len", "4", "--lr", "0.02", "--grad-clip", "0",
            "--teacher-weight", "scenes=0.5", "--teacher-weight", "objects=1",
            "--init-from", cfg.init_from, "--tensorboard", "--max-steps", "7"]  # fmt: skip
    result = CliRunner().invoke(train, args)
    assert isinstance(result.exception, _Captured), result.output
    assert captured_train == [cfg]


def test_extract_replays_its_manifest_and_eval_its_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distinit.eval import runner as eval_runner
    from distinit.eval.config import EvalConfig
    from distinit.extract import runner as extract_runner
    from distinit.extract.config import ExtractConfig

    seen: list[Any] = []

    def capture(cfg: Any, *args: Any, **kwargs: Any) -> None:
        seen.append(cfg)
        raise _Captured

    monkeypatch.setattr(extract_runner, "run_extract", capture)
    monkeypatch.setattr(eval_runner, "run", capture)
    videos = tmp_path / "videos"
    videos.mkdir()
    extract_cfg = ExtractConfig(
        videos=str(videos), out=str(tmp_path / "shards"), views=None, store_size=(64, 48),
        teacher_weights={"efficientnet_lite0": "/w.pth"}, fps=2.0,
    )  # fmt: skip
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"format": "x", "config": extract_cfg.to_json()}))
    eval_cfg = EvalConfig(
        dataset="hmdb51", root=tmp_path, out=tmp_path / "out", init="scratch", resize=(64, 48),
        crop=32,
        amp=False, split="all",
    )  # fmt: skip
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"video_top1": 0.5, "config": eval_cfg.to_json()}))
    for argv in (["extract", "--config", str(manifest)], ["eval", "--config", str(results)]):
        result = CliRunner().invoke(cli, argv)
        assert isinstance(result.exception, _Captured), result.output
    assert seen == [extract_cfg, eval_cfg]
    result = CliRunner().invoke(cli, ["eval", "--config", str(results), "--mode", "linear"])
    assert seen[-1] == dataclasses.replace(eval_cfg, mode="linear")
    assert isinstance(result.exception, _Captured)


def test_eval_keeps_its_no_amp_spelling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from distinit.eval import runner as eval_runner

    seen: list[Any] = []
    monkeypatch.setattr(eval_runner, "run", lambda cfg, echo: seen.append(cfg) or {})
    args = ["eval", "--dataset", "hmdb51", "--root", str(tmp_path), "--out", str(tmp_path / "o"),
            "--init", "scratch", "--no-amp"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert seen[0].amp is False and seen[0].init == "scratch"


def test_a_config_of_another_command_is_one_line_naming_the_file(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"config": {"videos": "V", "videos_per_shard": 200}}))
    result = subprocess.run(
        [sys.executable, "-m", "distinit.pipeline.cli", "train", "--config", str(manifest)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"Error: --config {manifest}: not a config of this command (unknown fields: "
        "videos_per_shard); extract replays SHARDS/manifest.json, train RUN/config.json, "
        "eval OUT/results.json"
    ]


@pytest.mark.parametrize(
    "command",
    ["extract", "inspect", "train", "eval", "export", "teachers", "bench", "bench extract",
     "bench train", "demo"],
)  # fmt: skip
def test_every_command_help_works(command: str) -> None:
    result = CliRunner().invoke(cli, [*command.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: ")
