"""Which ffmpeg binary distinit runs, and its version.

A system ffmpeg on PATH wins (users often build one with extra codecs); otherwise the static binary
shipped in the ``imageio-ffmpeg`` wheel. ffprobe is never needed.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

from distinit.pipeline.errors import FFmpegNotFoundError

FFMPEG_ENV = "DISTINIT_FFMPEG"


@functools.lru_cache(maxsize=1)
def ffmpeg_binary() -> str:
    """Path of the ffmpeg executable: ``$DISTINIT_FFMPEG``, then PATH, then imageio-ffmpeg."""
    explicit = os.environ.get(FFMPEG_ENV)
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise FFmpegNotFoundError(f"${FFMPEG_ENV}={explicit} is not an executable file")
        return explicit
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    try:
        import imageio_ffmpeg
    except ImportError as exc:
        raise FFmpegNotFoundError(
            "ffmpeg not found: install it (apt-get install ffmpeg) or pip install imageio-ffmpeg"
        ) from exc
    try:
        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except RuntimeError as exc:
        raise FFmpegNotFoundError(f"ffmpeg not found: {exc}") from exc


@functools.lru_cache(maxsize=1)
def ffmpeg_version() -> str:
    """``ffmpeg version X`` from ``ffmpeg -version`` (recorded in shard provenance)."""
    out = subprocess.run(
        [ffmpeg_binary(), "-hide_banner", "-version"],
        capture_output=True,
        text=True,
        check=False,
    )
    first = out.stdout.splitlines()[0] if out.stdout else "ffmpeg version unknown"
    return first.split(" Copyright")[0].strip()
