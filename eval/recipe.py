"""Which input eval gives the student: the one place flags, checkpoint and defaults meet.

A distilled checkpoint carries its input recipe (``train.checkpoint.InputRecipe``), and eval
feeds the student what it was distilled on unless told otherwise:

* ``--clip-len``, ``--frame-step``, ``--resize`` and ``--crop`` may differ for fine-tuning (a
  longer clip, another resolution): a flag that changes the checkpoint's value is said in one
  line on stderr, and ``results.json`` records both values.
* What the weights cannot take differently is refused in one line: another modality, another
  RGB normalisation, and for flow another resize or frame step (flow is pixels per frame at the
  resize, between frames that far apart).
* A checkpoint written before the recipe was recorded: its train config's clip length, stride,
  resize and crop where present (its shards taken to hold every native frame), eval's defaults
  otherwise, said in one line.
* Scratch and inflated students take :data:`~distinit.eval.config.BASELINE_INPUT`.

A flag left out is None in :class:`~distinit.eval.config.EvalConfig`: that is how "given"
and "defaulted" are told apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distinit.eval.config import BASELINE_INPUT, EvalConfig
from distinit.pipeline.clip_rules import input_channels
from distinit.pipeline.errors import CheckpointError, ConfigError
from distinit.pipeline.frame_geometry import format_size
from distinit.train.checkpoint import FinalCheckpoint, InputRecipe
from distinit.train.students import student_spec


@dataclass(frozen=True)
class EvalInput:
    """The resolved input of one eval run, and how it was decided."""

    modality: str
    clip_len: int
    frame_step: int  # native frames between consecutive clip frames
    resize: tuple[int, int]  # (width, height)
    crop: int
    notes: tuple[str, ...] = ()  # one line each, for stderr
    record: dict[str, Any] = field(default_factory=dict)  # results.json protocol.input_recipe

    def values(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in BASELINE_INPUT}


def resolve_input(cfg: EvalConfig, ckpt: FinalCheckpoint | None) -> EvalInput:
    """The student's input for ``cfg``, from its flags and ``ckpt`` (None for the baselines);
    refuses, in one line, an input the student cannot take."""
    given = cfg.given_input()
    if ckpt is None:
        resolved = EvalInput(
            modality=cfg.modality or "rgb",
            **{**BASELINE_INPUT, **given},
            record={"source": "eval defaults and flags"},
        )
        _check_fits(resolved, cfg.student)
        return resolved
    assert cfg.checkpoint is not None
    path = cfg.checkpoint
    modality = _checkpoint_modality(cfg, ckpt)
    recipe = ckpt.recipe
    notes: list[str] = []
    if recipe is None:
        own, assumed = _assumed(ckpt)
        notes.append(f"{path} records no input recipe (an older checkpoint): assuming {assumed}")
        record: dict[str, Any] = {"source": "assumed", "assumed": assumed}
    else:
        _check_normalisation(path, ckpt.student, recipe)
        own, unknown_step = _recipe_values(recipe)
        record = {"source": "checkpoint"}
        if unknown_step is not None:
            notes.append(f"{path}: {unknown_step}")
            record["frame_step_note"] = unknown_step
    used = {**own, **given}
    if modality == "flow":
        _check_flow(path, own, used)
    changed = [k for k in given if k in own and given[k] != own[k]]
    if changed:
        shown = ", ".join(f"{_flag(k, used[k])} (its own: {_shown(k, own[k])})" for k in changed)
        notes.append(f"eval input differs from {path}'s recipe: {shown}")
    record["checkpoint"] = {k: _json(v) for k, v in own.items()}
    record["overridden"] = {
        k: {"used": _json(used[k]), "checkpoint": _json(own[k])} for k in changed
    }
    resolved = EvalInput(
        modality=modality,
        **{**BASELINE_INPUT, **used},
        notes=tuple(notes),
        record=record,
    )
    _check_fits(resolved, ckpt.student)
    return resolved


def _recipe_values(recipe: InputRecipe) -> tuple[dict[str, Any], str | None]:
    """The checkpoint's own input values, and why its frame step is not among them (if not)."""
    own: dict[str, Any] = {
        "clip_len": recipe.clip_len,
        "resize": recipe.resize,
        "crop": recipe.crop,
    }
    step = recipe.native_frame_step
    if step is not None:
        own["frame_step"] = step
        return own, None
    return own, (
        f"its clip frames were {recipe.frame_stride} shard row(s) apart, in shards sampled at "
        f"{recipe.shard_fps:g} fps: no fixed native frame step; eval takes every native frame "
        "unless --frame-step says otherwise"
    )


def _assumed(ckpt: FinalCheckpoint) -> tuple[dict[str, Any], str]:
    """An old checkpoint's input: its train config's clip, stride, resize and crop where
    recorded (eval's defaults otherwise), its shards taken to hold every native frame (their
    --fps was not recorded) and its RGB normalised by the student's statistics."""
    config = ckpt.config
    own: dict[str, Any] = {}
    for key, name in (("clip_len", "clip_len"), ("frame_step", "frame_stride"), ("crop", "crop")):
        if name in config:
            own[key] = int(config[name])
    if "resize" in config:
        own["resize"] = (int(config["resize"][0]), int(config["resize"][1]))
    v = {**BASELINE_INPUT, **own}
    source = "its train config, eval's defaults where it has none" if own else "eval's defaults"
    norm = "" if ckpt.modality == "flow" else f", RGB normalised by {ckpt.student}'s mean/std"
    assumed = (
        f"clips of {v['clip_len']} frames every {v['frame_step']} native frame(s), "
        f"{format_size(v['resize'])} frames, {v['crop']}px crop ({source}; shards of every "
        f"native frame){norm}"
    )
    return v, assumed


def _checkpoint_modality(cfg: EvalConfig, ckpt: FinalCheckpoint) -> str:
    if ckpt.in_channels != input_channels(ckpt.modality):
        raise CheckpointError(
            f"{cfg.checkpoint}: a {ckpt.modality} student with {ckpt.in_channels} input "
            f"channels (expected {input_channels(ckpt.modality)})"
        )
    if cfg.modality is not None and cfg.modality != ckpt.modality:
        raise ConfigError(
            f"--modality {cfg.modality} contradicts {cfg.checkpoint}, a {ckpt.modality} "
            "student (a checkpoint's modality is its own; drop --modality)"
        )
    return ckpt.modality


def _check_normalisation(path: Path, student: str, recipe: InputRecipe) -> None:
    """The student is evaluated with its architecture's statistics: refuse a checkpoint that
    was distilled with others (its first layer learnt that input)."""
    if recipe.mean is None and recipe.std is None:
        return
    spec = student_spec(student)
    if (
        recipe.mean is None
        or recipe.std is None
        or not (_close(recipe.mean, spec.mean) and _close(recipe.std, spec.std))
    ):
        raise CheckpointError(
            f"{path} was distilled on RGB normalised by mean {recipe.mean} std {recipe.std}; "
            f"eval normalises {student} by mean {spec.mean} std {spec.std} and cannot feed it "
            "what it learnt"
        )


def _close(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= 1e-6 for x, y in zip(a, b, strict=True))


def _check_flow(path: Path, own: dict[str, Any], used: dict[str, Any]) -> None:
    """Flow is in pixels per frame at the resize, between frames ``frame_step`` apart: neither
    may differ from what the student was distilled on."""
    if "resize" in own and tuple(used["resize"]) != tuple(own["resize"]):
        w, h = own["resize"]
        raise ConfigError(
            f"{path} was distilled on flow of {w}x{h} frames (pixels per frame at that size); "
            f"pass --resize {w}x{h}, not {format_size(used['resize'])}"
        )
    if "frame_step" not in own:
        raise ConfigError(
            f"{path} was distilled on flow between frames of shards sampled at --fps, which is "
            "no fixed native frame step: eval cannot compute the flow it was distilled on"
        )
    if used["frame_step"] != own["frame_step"]:
        raise ConfigError(
            f"{path} was distilled on flow between frames {own['frame_step']} apart; "
            f"pass --frame-step {own['frame_step']}, not {used['frame_step']}"
        )


def _check_fits(resolved: EvalInput, student: str) -> None:
    if resolved.crop > min(resolved.resize):
        raise ConfigError(
            f"--crop {resolved.crop} does not fit in --resize {format_size(resolved.resize)}"
        )
    if resolved.modality == "flow" and resolved.clip_len < 2:
        raise ConfigError("a flow student needs --clip-len >= 2: one frame has no motion")
    student_spec(student).check_input(resolved.clip_len, resolved.crop)


def _flag(key: str, value: Any) -> str:
    return f"--{key.replace('_', '-')} {_shown(key, value)}"


def _shown(key: str, value: Any) -> str:
    return format_size(value) if key == "resize" else str(value)


def _json(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
