"""Which files are videos: the extensions every stage looks for, and the walk that finds them
under a folder (as ids relative to it)."""

from __future__ import annotations

import os
from pathlib import Path

VIDEO_EXTENSIONS = frozenset(
    {
        ".mp4",
        ".avi",
        ".mkv",
        ".webm",
        ".mov",
        ".m4v",
        ".mpg",
        ".mpeg",
        ".flv",
        ".wmv",
        ".ts",
        ".3gp",
        ".ogv",
        ".mts",
        ".m2ts",
        ".vob",
        ".gif",
    }
)


def find_videos(root: str | os.PathLike[str]) -> list[str]:
    """Video files under ``root``, as sorted POSIX paths relative to it (the video ids).

    Directory symlinks are not followed (a link loop cannot hang the walk); a directory whose name
    ends in a video extension is not a video. Ids are relative paths, never bare stems, so
    ``a/clip.mp4`` and ``b/clip.mp4`` stay distinct.
    """
    found: list[str] = []
    # os.path on strings, not a Path per file: a dataset has hundreds of thousands of them.
    for dirpath, _dirnames, filenames in os.walk(root, followlinks=False):
        folder = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if folder == "." else folder + "/"
        for name in filenames:
            if os.path.splitext(name)[1].lower() not in VIDEO_EXTENSIONS:
                continue
            if os.path.isfile(os.path.join(dirpath, name)):  # drops dangling links, sockets
                found.append(prefix + name)
    return sorted(found)
