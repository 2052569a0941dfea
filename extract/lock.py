"""An advisory lock so two extractions cannot write the same rank of one shard directory."""

from __future__ import annotations

from pathlib import Path

from distinit.pipeline.runtime import DirectoryLock


class RankLock(DirectoryLock):
    """The run-directory lock on ``OUT/.lock-<index>-of-<num>``: ranks of one extraction each
    hold their own, a second process for the same rank is refused."""

    def __init__(self, out: Path, shard_index: int, num_shards: int) -> None:
        super().__init__(
            out,
            "another distinit extract is already writing here "
            "(give each process its own --shard-index/--num-shards to run several)",
            name=f".lock-{shard_index}-of-{num_shards}",
        )
