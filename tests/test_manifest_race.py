"""Ranks that finish together all regenerate one ``manifest.json``: it must always be whole.

Four processes, twenty rounds: in each round every process writes its own shard into one fresh
directory and at once regenerates the manifest, released together by a barrier, as ranks of one
extraction finish together. Whatever the interleaving, no writer may fail and the manifest left
behind must be valid JSON listing every shard (the last writer saw them all).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import traceback
from pathlib import Path

import numpy as np

from distinit.pipeline.shards import (
    FORMAT_NAME,
    MANIFEST_NAME,
    ShardWriter,
    TeacherInfo,
    VideoRecord,
    quantize,
)

RANKS = 4
ROUNDS = 20
TEACHER = TeacherInfo("t", 3, ("a", "b", "c"), "0" * 64, "synthetic", "none")


def _rank(root: str, rank: int, barrier: mp.synchronize.Barrier, errors: mp.Queue) -> None:
    from distinit.pipeline.shards import write_manifest

    rows = np.arange(5)
    for r in range(ROUNDS):
        directory = Path(root) / f"round{r:02d}"
        barrier.wait()
        try:
            writer = ShardWriter(directory / f"shard-r{rank}.h5", [TEACHER], {})
            logits = quantize(np.eye(3, dtype=np.float32)[rows % 3])
            writer.add_video(
                VideoRecord(id=f"v{rank}.mp4", status="ok"), rows / 25.0, rows, {"t": logits}
            )
            writer.close()
            write_manifest(directory, {"rank": rank})
        except BaseException:  # reported to the parent: a writer must never fail
            errors.put(f"rank {rank} round {r}: {traceback.format_exc()}")


def test_four_ranks_finishing_together_leave_a_whole_manifest(tmp_path: Path) -> None:
    for r in range(ROUNDS):
        (tmp_path / f"round{r:02d}").mkdir()
    ctx = mp.get_context("spawn")
    barrier, errors = ctx.Barrier(RANKS), ctx.Queue()
    procs = [
        ctx.Process(target=_rank, args=(str(tmp_path), k, barrier, errors)) for k in range(RANKS)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert not failures, failures[0]
    assert [p.exitcode for p in procs] == [0] * RANKS
    for r in range(ROUNDS):
        directory = tmp_path / f"round{r:02d}"
        manifest = json.loads((directory / MANIFEST_NAME).read_text())
        assert manifest["format"] == FORMAT_NAME
        assert sorted(s["file"] for s in manifest["shards"]) == [
            f"shard-r{k}.h5" for k in range(RANKS)
        ], f"round {r}: the manifest misses a finished shard"
        assert sorted(v["id"] for v in manifest["videos"]) == [f"v{k}.mp4" for k in range(RANKS)]
        assert [p.name for p in directory.iterdir() if p.name.endswith(".tmp")] == []
