from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from distinit.pipeline.errors import ConfigError
from distinit.train.config import TrainConfig, parse_teacher_weight


def _cfg(**kw: object) -> TrainConfig:
    return TrainConfig(**{"targets": "S", "out": "R", **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"student": "resnet50"}, "unknown student"),
        ({"targets": "R/"}, "--out must not be the --targets directory"),
        ({"clip_len": 0}, "--clip-len must be at least 1, got 0"),
        ({"student": "s3d", "clip_len": 4}, "s3d needs --clip-len >= 8"),
        ({"crop": 200}, "larger than the resized frame"),
        ({"lr": 0.0}, "--lr must be positive, got 0.0"),
        ({"temperature": -1.0}, "--temperature must be positive, got -1.0"),
        ({"momentum": 1.0}, "momentum"),
        ({"optimizer": "adam"}, "--optimizer must be one of"),
        ({"target_frames": "all"}, "--target-frames must be one of"),
        ({"max_steps": 0}, "--max-steps must be at least 1"),
        ({"device": "gpu"}, "device must be"),
        ({"teacher_weights": (("a", 1.0), ("a", 2.0))}, "weighted twice"),
        ({"teacher_weights": (("a", -1.0),)}, "non-negative"),
        ({"workers": -1}, "--workers must not be negative, got -1"),
        ({"grad_clip": 0.0}, "--grad-clip must be positive"),
    ],
)
def test_invalid_configs_are_refused(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _cfg(**kw)


def test_json_round_trip_and_resume_comparison() -> None:
    cfg = _cfg(teacher_weights=(("objects", 0.5),), resize=(64, 48), crop=32)
    again = TrainConfig.from_json(cfg.to_json())
    assert again == cfg
    assert cfg.weight_of("objects") == 0.5 and cfg.weight_of("scenes") == 1.0
    # Where things are and how often they are reported may change; the recipe may not.
    moved = _cfg(teacher_weights=(("objects", 0.5),), resize=(64, 48), crop=32, workers=0)
    assert moved.resume_mismatches(cfg.to_json()) == []
    assert _cfg(lr=0.1).resume_mismatches(cfg.to_json()) == [
        "crop",
        "lr",
        "resize",
        "teacher_weights",
    ]


def test_option_parsers() -> None:
    assert parse_teacher_weight("places365=0.25") == ("places365", 0.25)
    for bad in ("places365", "=1", "a=b"):
        with pytest.raises(ConfigError):
            parse_teacher_weight(bad)


@pytest.mark.parametrize(
    "command, option",
    [
        ("train", "--resize"),
        ("eval", "--resize"),
        ("extract", "--store-size"),
        ("bench train", "--resize"),
    ],  # fmt: skip
)
def test_a_malformed_frame_size_is_one_line_naming_its_option(
    tmp_path: Path, command: str, option: str
) -> None:
    from click.testing import CliRunner

    from distinit.pipeline.cli import cli
    from distinit.pipeline.options import FRAME_SIZE

    assert FRAME_SIZE.convert(" 171 x 128 ", None, None) == (171, 128)
    for bad in ("171", "171*128", "wide"):
        out = tmp_path / f"out_{bad}"
        out_option = "--json-out" if command == "bench train" else "--out"
        args = [*command.split(), option, bad, out_option, str(out)]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, result.output
        error = [line for line in result.output.splitlines() if line.startswith("Error")]
        assert error == [
            f"Error: Invalid value for '{option}': size must look like 171x128 "
            f"(width x height), got '{bad}'"
        ], result.output
        assert "Traceback" not in result.output and not out.exists()


def test_command_module_is_light_and_train_never_imports_extract() -> None:
    code = (
        "import sys, distinit.train.command; assert 'torch' not in sys.modules, 'torch'; "
        "import distinit.train.loop, distinit.train.bench; "
        "assert not [m for m in sys.modules if m.startswith('distinit.extract')], 'extract'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_every_student_network_has_an_input_rule_and_a_line_in_the_help() -> None:
    from distinit.train.config import STUDENT
    from distinit.train.student_inputs import STUDENT_INPUTS
    from distinit.train.students import STUDENTS

    assert list(STUDENTS) == list(STUDENT_INPUTS)
    assert all(name in STUDENT.help for name in STUDENTS)


def test_a_config_is_checked_without_torch() -> None:
    # The student's clip rule included: a wrong clip size is refused before torch loads.
    code = (
        "import sys\n"
        "from distinit.pipeline.errors import ConfigError\n"
        "from distinit.train.config import TrainConfig\n"
        "try:\n"
        "    TrainConfig(targets='t', out='o', student='mvit_v2_s', clip_len=8)\n"
        "except ConfigError as exc:\n"
        "    assert 'mvit_v2_s takes only 16x224x224' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('accepted')\n"
        "assert 'torch' not in sys.modules, 'torch'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
