"""Which students there are and which clips each can take, without torch: a config is checked,
and ``--help`` lists the students, before the networks' registry (which imports torch) loads.

:data:`distinit.train.students.STUDENTS` builds a network for every name here.
"""

from __future__ import annotations

from dataclasses import dataclass

from distinit.pipeline.errors import ConfigError, UnknownNameError


@dataclass(frozen=True)
class StudentInput:
    """The clip sizes one student network takes."""

    min_clip_len: int = 1
    fixed_input: tuple[int, int] | None = None  # (clip_len, crop) the network only takes
    min_crop: int = 1

    def check(self, name: str, clip_len: int, crop: int) -> None:
        """Refuse, in one line, a clip size this network cannot take."""
        if self.fixed_input is not None and (clip_len, crop) != self.fixed_input:
            frames, side = self.fixed_input
            raise ConfigError(
                f"{name} takes only {frames}x{side}x{side} clips (--clip-len {frames} "
                f"--crop {side}), got {clip_len}x{crop}x{crop}"
            )
        if clip_len < self.min_clip_len:
            raise ConfigError(f"{name} needs --clip-len >= {self.min_clip_len}")
        if crop < self.min_crop:
            raise ConfigError(f"{name} needs --crop >= {self.min_crop}, got {crop}")

    def describe(self) -> str:
        """The rule as a user reads it, e.g. ``crop >= 32``; empty when any clip will do."""
        if self.fixed_input is not None:
            frames, side = self.fixed_input
            return (
                f"{frames}x{side}x{side} clips only: --clip-len {frames} --crop {side} and a "
                f"--resize at least {side} high"
            )
        rules = [f"clip length >= {self.min_clip_len}"] * (self.min_clip_len > 1)
        rules += [f"crop >= {self.min_crop}"] * (self.min_crop > 1)
        return ", ".join(rules)


STUDENT_INPUTS: dict[str, StudentInput] = {
    "r3d_18": StudentInput(),
    "mc3_18": StudentInput(),
    "r2plus1d_18": StudentInput(),
    "s3d": StudentInput(min_clip_len=8),
    # Positional embeddings learnt for one grid: 16 frames of 224x224.
    "mvit_v2_s": StudentInput(fixed_input=(16, 224)),
    # Three 2x patch merges after the 4x patch embedding: below 32 px the last stage is empty.
    "swin3d_t": StudentInput(min_clip_len=2, min_crop=32),
}


def student_input(name: str) -> StudentInput:
    if name not in STUDENT_INPUTS:
        raise UnknownNameError("student", name, list(STUDENT_INPUTS))
    return STUDENT_INPUTS[name]


def students_help() -> str:
    """Every student with its clip rule, for ``--student``'s help."""
    named = [
        f"{name} ({rule})" if (rule := inputs.describe()) else name
        for name, inputs in STUDENT_INPUTS.items()
    ]
    return "Student network: " + ", ".join(named) + "."
