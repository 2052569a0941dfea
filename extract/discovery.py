"""Finding videos under ``--videos`` and splitting them across ranks."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from distinit.pipeline.errors import ConfigError
from distinit.pipeline.video import VIDEO_EXTENSIONS


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


def require_videos(root: str | os.PathLike[str]) -> list[str]:
    """:func:`find_videos`, where finding none is an error naming the extensions looked for.

    Checked before anything is written, so a wrong ``--videos`` leaves no output behind.
    """
    found = find_videos(root)
    if not found:
        raise ConfigError(
            f"--videos {root}: no videos found (looked recursively for "
            + ", ".join(sorted(VIDEO_EXTENSIONS))
            + ")"
        )
    return found


def rank_of(video_id: str, num_shards: int) -> int:
    """A stable owner rank for a video: the same on every machine and every re-run.

    A cryptographic digest, not CRC32: CRC is linear, so names differing in one character (the
    usual ``clip_001``, ``clip_002``) can all land on the same rank.
    """
    digest = hashlib.blake2b(video_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % num_shards


def videos_for_rank(video_ids: list[str], num_shards: int, shard_index: int) -> list[str]:
    return [v for v in video_ids if rank_of(v, num_shards) == shard_index]
