"""Atomic file writes, for every stage.

A temporary name unique to this process (pid and a random tag, so two ranks never share one),
flushed and fsynced, then renamed over the destination: a crash or ``kill -9`` at any moment leaves
the old file or the new one, never half of one.
"""

from __future__ import annotations

import io
import json
import os
import socket
import uuid
from pathlib import Path
from typing import Any

# torch is imported where torch.save needs it: the shard contract and the CLI write files here
# without paying for torch.


def _temporary(path: Path) -> Path:
    # pid and a random tag: two ranks (or two processes) writing one file never share a temp name
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _write_bytes(path: str | os.PathLike[str], data: bytes | memoryview) -> Path:
    path = Path(path)
    tmp = _temporary(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write(
    path: str | os.PathLike[str], content: bytes | str | Any, *, indent: int | None = 2
) -> Path:
    """Write bytes, text (UTF-8), or any other value as JSON, atomically."""
    if isinstance(content, bytes):
        data = content
    elif isinstance(content, str):
        data = content.encode("utf-8")
    else:
        data = (json.dumps(content, indent=indent) + "\n").encode("utf-8")
    return _write_bytes(path, data)


def atomic_torch_save(path: str | os.PathLike[str], obj: Any) -> Path:
    """``torch.save`` atomically."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return _write_bytes(path, buffer.getbuffer())


def probe_writable(directory: Path) -> None:
    """Create and remove a file in ``directory`` (raises OSError when this process may not).

    The probe's name carries this host, this process and a random tag, and is created
    exclusively: ranks on several hosts writing one directory (containers on them often share
    pids) never write over or remove one another's probe."""
    tag = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    probe = directory / f".write-test-{tag}"
    with open(probe, "xb"):
        pass
    probe.unlink()
