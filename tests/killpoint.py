"""Run the distinit CLI with a hook at a chosen moment, for tests of interruptions and races.

    python tests/killpoint.py pause PATTERN MARKER distinit-arguments...
    python tests/killpoint.py gather DIR N distinit-arguments...

``pause``: every atomic write in distinit fsyncs its temporary file before renaming it. Here
``os.fsync`` is wrapped: when the file being synced is a temporary one whose name contains
PATTERN, its path is written to MARKER and the process sleeps, half-way through that write,
until the test kills it.

``gather``: ``write_manifest`` is wrapped so that N processes call it at the same moment, as
ranks finishing together would, and then rename their manifest at the same moment too (unless
the writers take turns, which holds each at that second meeting point for half a second).
"""

from __future__ import annotations

import os
import runpy
import sys
import time
from typing import Any

mode = sys.argv[1]
if mode == "pause":
    pattern, marker = sys.argv[2], sys.argv[3]
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        name = os.path.basename(path)
        if pattern in name and name != pattern and "tmp" in name:
            with open(marker + ".part", "w") as fh:
                fh.write(path)
            os.replace(marker + ".part", marker)
            time.sleep(600)
        real_fsync(fd)

    os.fsync = fsync
elif mode == "gather":
    import distinit.pipeline.shards as shards

    gather_dir, count = sys.argv[2], int(sys.argv[3])
    real_write_manifest, real_replace = shards.write_manifest, os.replace

    def meet(point: str, timeout: float) -> None:
        folder = os.path.join(gather_dir, point)
        os.makedirs(folder, exist_ok=True)
        open(os.path.join(folder, str(os.getpid())), "w").close()
        deadline = time.monotonic() + timeout
        while len(os.listdir(folder)) < count and time.monotonic() < deadline:
            time.sleep(0.0005)

    def write_manifest(*args: Any, **kwargs: Any) -> Any:
        meet("write", 120)
        return real_write_manifest(*args, **kwargs)

    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        if os.path.basename(dst) == "manifest.json":
            meet("rename", 0.5)
        real_replace(src, dst, **kwargs)

    shards.write_manifest = write_manifest  # before the CLI imports the extract runner
    os.replace = replace
else:
    raise SystemExit(f"unknown mode {mode!r}")
sys.argv = ["distinit", *sys.argv[4:]]
runpy.run_module("distinit.pipeline.cli", run_name="__main__", alter_sys=True)
