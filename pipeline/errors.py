"""Domain errors. The CLI maps every subclass of :class:`DistinitError` to a one-line message."""

from __future__ import annotations

import difflib


class DistinitError(Exception):
    """Base of every error distinit raises on purpose (bad input, bad config, bad files)."""


class ConfigError(DistinitError):
    """A command's configuration is invalid."""


class UnknownNameError(DistinitError):
    """A registry was asked for a name it does not know."""

    def __init__(self, kind: str, name: str, known: list[str], listed_by: str = "") -> None:
        """``listed_by`` names where the full list is shown (a command), for registries too long
        to print in one line; without it the known names are listed."""
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else "."
        shown = f"{listed_by} lists all {len(known)}" if listed_by else ", ".join(sorted(known))
        super().__init__(f"unknown {kind} {name!r}{hint} Known: {shown}.")
        self.kind, self.name, self.known = kind, name, known


class FFmpegNotFoundError(DistinitError):
    """No ffmpeg binary on PATH and none in the imageio-ffmpeg wheel."""


class VideoDecodeError(DistinitError):
    """ffmpeg could not decode a video (or decoded no frame of it)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


class ShardError(DistinitError):
    """A shard file or directory does not honour the shard contract."""


class WeightsError(DistinitError):
    """Model weights are missing, unreadable, unsafe or do not fit the model."""


class CheckpointError(DistinitError):
    """A training checkpoint is missing, unreadable, unsafe or incompatible."""


class DatasetError(DistinitError):
    """A labelled dataset's layout or split files do not match its manifest."""


class NonFiniteLossError(DistinitError):
    """Training produced a NaN or infinite loss."""


class Interrupted(DistinitError):
    """A run stopped on SIGINT or SIGTERM after saving its state; exits 128 + the signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
