"""The shard files one process holds open: bounded, least recently used closed first, never
shared across a fork."""

from __future__ import annotations

import os
import resource
from collections import OrderedDict
from pathlib import Path

import h5py
import numpy as np

MAX_OPEN_SHARDS = 32
# HDF5 keeps a chunk cache per open dataset, 1 MiB by default: with several datasets per shard
# and tens of shards per loader worker that is hundreds of MiB of cache for reads that rarely
# come back to a chunk. 256 KiB still holds the few chunks one clip's rows span (a 1000-class
# teacher's logits chunk is 64 KiB, a store chunk 32 KiB).
CHUNK_CACHE_BYTES = 256 * 1024


def default_max_open() -> int:
    """Shard files a process keeps open at most: :data:`MAX_OPEN_SHARDS`, and never more than a
    quarter of its open-file limit (``ulimit -n``), which torch, pipes and libraries share."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_OPEN_SHARDS
    return max(1, min(MAX_OPEN_SHARDS, soft // 4))


class OpenShard:
    """One open shard file with what is looked up in it once: dataset handles (an h5py path
    lookup costs about as much as reading a clip's targets) and the frame store's GOP table."""

    def __init__(self, path: Path) -> None:
        self.file = h5py.File(path, "r", rdcc_nbytes=CHUNK_CACHE_BYTES)
        self._datasets: dict[str, h5py.Dataset] = {}
        self._gops: tuple[np.ndarray, np.ndarray] | None = None

    def dataset(self, path: str) -> h5py.Dataset:
        if path not in self._datasets:
            self._datasets[path] = self.file[path]
        return self._datasets[path]

    def gop_table(self) -> tuple[np.ndarray, np.ndarray]:
        if self._gops is None:
            self._gops = (self.dataset("store/gop_row")[()], self.dataset("store/gop_offset")[()])
        return self._gops


class OpenShards:
    """The shard files this process has open: the ``max_open`` used most recently (LRU), so a
    set of a thousand shards read by several loader workers stays within the open-file limit.
    Handles belong to the process that opened them: after a fork the child opens its own."""

    def __init__(self, directory: Path, max_open: int | None) -> None:
        self.directory = directory
        self.max_open = default_max_open() if max_open is None else max_open
        if self.max_open < 1:
            raise ValueError(f"max_open must be at least 1, got {self.max_open}")
        self._shards: OrderedDict[str, OpenShard] = OrderedDict()
        self._pid = os.getpid()

    def get(self, shard: str) -> OpenShard:
        if os.getpid() != self._pid:  # forked: never touch the parent's handles
            self._shards, self._pid = OrderedDict(), os.getpid()
        if shard in self._shards:
            self._shards.move_to_end(shard)
            return self._shards[shard]
        while len(self._shards) >= self.max_open:
            _, oldest = self._shards.popitem(last=False)
            oldest.file.close()
        self._shards[shard] = OpenShard(self.directory / shard)
        return self._shards[shard]

    def count(self) -> int:
        return len(self._shards) if os.getpid() == self._pid else 0

    def close(self) -> None:
        if os.getpid() == self._pid:
            for open_shard in self._shards.values():
                open_shard.file.close()
        self._shards = OrderedDict()

    def empty_copy(self) -> OpenShards:
        return OpenShards(self.directory, self.max_open)
