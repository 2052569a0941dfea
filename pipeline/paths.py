"""Relative paths read from files a user may have received (shard video ids, results files,
split lists) stay under the root they are joined onto.

A video id ``../../etc/x`` or ``/etc/x`` in a shard, or a results file naming ``../../x``, would
otherwise reach outside the videos or results directory. The check is on the path as written
(no ``..`` part, not absolute), not on where symbolic links lead: a dataset folder of links, as
``distinit demo`` makes, stays allowed.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

from distinit.pipeline.errors import DistinitError

_ROOTED = ("/", "\\")  # an absolute POSIX path, a Windows root or UNC share
_MARKS = (":", "..", "\0")  # a Windows drive, a parent, a NUL


def check_relative(relative: str, what: str, error: type[DistinitError]) -> str:
    """``relative`` if it names a place under any root; else ``error`` in one line naming
    ``what`` it is (e.g. "video id in shard-0000.h5")."""
    if relative and not relative.startswith(_ROOTED) and not any(c in relative for c in _MARKS):
        return relative  # nothing that could root it, name a drive or climb: a plain path
    posix, windows = PurePosixPath(relative), PureWindowsPath(relative)
    if (
        not relative
        or posix.is_absolute()
        or windows.is_absolute()
        or windows.drive
        or ".." in posix.parts
        or ".." in windows.parts
        or "\0" in relative
    ):
        raise error(f"{what} {relative!r} is not a path inside its directory; refusing it")
    return relative


def inside(root: Path, relative: str, what: str, error: type[DistinitError]) -> Path:
    """``root / relative``, refused (``error``) when ``relative`` would leave ``root``."""
    return root / check_relative(relative, what, error)
