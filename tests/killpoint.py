"""Run the distinit CLI so that it stops inside a chosen file write, for a test to kill -9 there.

    python tests/killpoint.py PATTERN MARKER distinit-arguments...

Every atomic write in distinit fsyncs its temporary file before renaming it. Here ``os.fsync``
is wrapped: when the file being synced is a temporary one whose name contains PATTERN, its path
is written to MARKER and the process sleeps, half-way through that write, until it is killed.
"""

from __future__ import annotations

import os
import runpy
import sys
import time

pattern, marker = sys.argv[1], sys.argv[2]
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
sys.argv = ["distinit", *sys.argv[3:]]
runpy.run_module("distinit.pipeline.cli", run_name="__main__", alter_sys=True)
