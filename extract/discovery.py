"""The videos of ``--videos`` (at least one) and their split across ranks."""

from __future__ import annotations

import hashlib
import os

from distinit.pipeline.errors import ConfigError
from distinit.pipeline.video_files import VIDEO_EXTENSIONS, find_videos


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
