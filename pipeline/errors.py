"""Domain errors. The CLI maps every subclass of :class:`DistinitError` to a one-line message.

An error raised in a DataLoader worker reaches the main process rebuilt by torch as
``type(exc)(text)``, from one string, and errors cross processes pickled: so every subclass can
be built from its message alone (the first argument; the others are optional) and pickles with
its attributes.
"""

from __future__ import annotations

import difflib
import signal
from typing import Any


class DistinitError(Exception):
    """Base of every error distinit raises on purpose (bad input, bad config, bad files)."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception pickles as cls(*args): with a structured constructor that rebuilds another
        # message (or fails); restore the message and the attributes as they are instead.
        return (_rebuild, (type(self), str(self), self.__dict__))


def _rebuild(cls: type[DistinitError], message: str, attrs: dict[str, Any]) -> DistinitError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(attrs)
    return err


def one_line(exc: DistinitError) -> str:
    """The error's own message. A DataLoader worker's error reaches the main process as the
    same type whose message is "Caught X in DataLoader worker process N. Original Traceback
    ...", ending with the original ``module.X: message`` line: that message is what to print."""
    text = str(exc)
    if "\nOriginal Traceback" in text:
        prefix, _, message = text.rstrip().splitlines()[-1].partition(": ")
        if prefix.rsplit(".", 1)[-1] == type(exc).__name__:
            return message
    return text


class ConfigError(DistinitError):
    """A command's configuration is invalid."""


class UnknownNameError(DistinitError):
    """A registry was asked for a name it does not know."""

    def __init__(
        self,
        kind: str,
        name: str | None = None,
        known: list[str] | None = None,
        listed_by: str = "",
    ) -> None:
        """``listed_by`` names where the full list is shown (a command), for registries too long
        to print in one line; without it the known names are listed. ``kind`` alone is a whole
        message (rebuilt)."""
        self.kind, self.name, self.known = kind, name or "", known or []
        if name is None:
            super().__init__(kind)
            return
        close = difflib.get_close_matches(name, self.known, n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else "."
        shown = (
            f"{listed_by} lists all {len(self.known)}"
            if listed_by
            else ", ".join(sorted(self.known))
        )
        super().__init__(f"unknown {kind} {name!r}{hint} Known: {shown}.")


class FFmpegNotFoundError(DistinitError):
    """No ffmpeg binary on PATH and none in the imageio-ffmpeg wheel."""


class VideoDecodeError(DistinitError):
    """ffmpeg could not decode a video (or decoded no frame of it)."""

    def __init__(self, path: str, reason: str | None = None) -> None:
        """``path`` alone is a whole message (rebuilt)."""
        super().__init__(path if reason is None else f"{path}: {reason}")
        self.path, self.reason = path, reason if reason is not None else path


class ShardError(DistinitError):
    """A shard file or directory does not honour the shard contract."""


class MachineFaultError(DistinitError):
    """The machine failed, not the data: memory, open files, disk space, a decoder killed by a
    signal, a pipe that timed out (see :mod:`distinit.pipeline.faults`). Nothing is recorded
    against the video or shard involved; the same command, run again once the cause is gone,
    redoes it."""


class WeightsError(DistinitError):
    """Model weights are missing, unreadable, unsafe or do not fit the model."""


class CheckpointError(DistinitError):
    """A training checkpoint is missing, unreadable, unsafe or incompatible."""


class DatasetError(DistinitError):
    """A labelled dataset's layout or split files do not match its manifest."""


class TooManyBadClipsError(DistinitError):
    """More clips than a run tolerates could not be read (their videos do not decode)."""


class NonFiniteLossError(DistinitError):
    """Training produced a NaN or infinite loss."""


class Interrupted(DistinitError):
    """A run stopped on SIGINT or SIGTERM after saving its state (exit status: see
    :mod:`distinit.pipeline.stopping`)."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = int(signum)
