"""A fault of the machine while a video is extracted (a decoder killed by a signal, too many open
files, a full disk) stops the run and is never recorded as the video's: the next run redoes the
video, and every video ends complete with its exact frame count."""

from __future__ import annotations

import errno
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from distinit.extract import decoding
from distinit.extract.config import ExtractConfig
from distinit.extract.runner import run_extract
from distinit.pipeline import ffmpeg_stderr, video
from distinit.pipeline.errors import MachineFaultError
from distinit.pipeline.ffmpeg_binary import FFMPEG_ENV, ffmpeg_binary, ffmpeg_version
from distinit.pipeline.shards import ShardSet
from tests.videogen import make_index_video

FRAMES = {"a.mp4": 30, "long.mp4": 60}
STORE = (40, 32)  # one view, 3840 bytes a frame through the pipe


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    for name, frames in FRAMES.items():
        make_index_video(root / name, frames, size=48)
    return root


def _config(videos: Path, out: Path) -> ExtractConfig:
    return ExtractConfig(videos=str(videos), out=str(out), teachers=("none",), store_size=STORE,
                         workers=1)  # fmt: skip


@pytest.fixture
def use_ffmpeg(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Point ``$DISTINIT_FFMPEG`` at a binary for the rest of the test."""

    def use(path: str | None) -> None:
        if path is None:
            monkeypatch.delenv(FFMPEG_ENV, raising=False)
        else:
            monkeypatch.setenv(FFMPEG_ENV, path)
        ffmpeg_binary.cache_clear()
        ffmpeg_version.cache_clear()

    yield use
    monkeypatch.delenv(FFMPEG_ENV, raising=False)
    ffmpeg_binary.cache_clear()
    ffmpeg_version.cache_clear()


def _killing_ffmpeg(directory: Path, real: str, after_bytes: int) -> str:
    """An ffmpeg that, for long.mp4, sends ``after_bytes`` of output and is then killed by
    SIGKILL, as the out-of-memory killer does; for anything else the real one."""
    path = directory / "ffmpeg"
    path.write_text(
        "#!/bin/bash\n"
        'case "$*" in\n'
        f'  *long.mp4*) "{real}" "$@" | head -c {after_bytes}; kill -KILL $$ ;;\n'
        f'  *) exec "{real}" "$@" ;;\n'
        "esac\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def _assert_complete(out: Path) -> None:
    s = ShardSet(out)
    assert {r.id: (r.status, r.row_count) for r in s.ok_videos()} == {
        name: ("ok", frames) for name, frames in FRAMES.items()
    }
    assert all(not r.error for r in s.ok_videos())
    assert s.frame_indices("long.mp4").tolist() == list(range(FRAMES["long.mp4"]))


@pytest.mark.parametrize("frames_sent", [0, 10])
def test_a_decoder_killed_mid_video_is_redone_by_the_next_run(
    videos: Path, tmp_path: Path, use_ffmpeg: Any, frames_sent: int
) -> None:
    use_ffmpeg(None)
    real = ffmpeg_binary()
    use_ffmpeg(_killing_ffmpeg(tmp_path, real, frames_sent * STORE[0] * STORE[1] * 3))
    out = tmp_path / "out"
    with pytest.raises(MachineFaultError, match=r"long\.mp4: ffmpeg was killed by SIGKILL"):
        run_extract(_config(videos, out))
    # What finished before the fault is kept; the killed video is not recorded at all.
    assert "long.mp4" not in ShardSet(out).records
    use_ffmpeg(real)
    again = run_extract(_config(videos, out))
    assert again.done == 1 and again.failed == 0
    _assert_complete(out)


def test_a_killed_decoder_stops_the_cli_in_one_line(videos: Path, tmp_path: Path) -> None:
    real = ffmpeg_binary()
    argv = [sys.executable, "-m", "distinit.pipeline.cli", "extract", "--videos", str(videos),
            "--out", str(tmp_path / "out"), "--teacher", "none", "--store-size", "40x32",
            "--workers", "1"]  # fmt: skip
    env = {**os.environ, FFMPEG_ENV: _killing_ffmpeg(tmp_path, real, 10 * 3840)}
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "long.mp4: ffmpeg was killed by SIGKILL" in errors[0]
    assert "run the same command again" in errors[0]


def test_too_many_open_files_while_decoding_is_not_the_videos_fault(
    videos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_popen = subprocess.Popen

    def popen(cmd: list[str], *args: Any, **kwargs: Any) -> Any:
        if any("long.mp4" in part for part in cmd):
            raise OSError(errno.EMFILE, "Too many open files")
        return real_popen(cmd, *args, **kwargs)

    monkeypatch.setattr(video.subprocess, "Popen", popen)
    out = tmp_path / "out"
    with pytest.raises(MachineFaultError, match=r"long\.mp4: Too many open files \(EMFILE\)"):
        run_extract(_config(videos, out))
    assert "long.mp4" not in ShardSet(out).records
    monkeypatch.setattr(video.subprocess, "Popen", real_popen)
    assert run_extract(_config(videos, out)).done == 1
    _assert_complete(out)


def test_a_full_disk_while_coding_frames_is_not_the_videos_fault(
    videos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_encode = decoding.encode_gop
    calls = []

    def encode(*args: Any, **kwargs: Any) -> bytes:
        calls.append(1)
        if len(calls) == 4:  # a.mp4 is two GOPs of 16 frames: this is long.mp4's second
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(decoding, "encode_gop", encode)
    out = tmp_path / "out"
    with pytest.raises(MachineFaultError, match=r"No space left on device \(ENOSPC\)"):
        run_extract(_config(videos, out))
    assert "long.mp4" not in ShardSet(out).records
    monkeypatch.setattr(decoding, "encode_gop", real_encode)
    assert run_extract(_config(videos, out)).done == 1
    _assert_complete(out)


def test_a_timestamp_that_never_comes_is_not_the_videos_fault(
    videos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ffmpeg's showinfo lines stop reaching the reader (as on a machine too loaded to run it).
    monkeypatch.setattr(video, "TIMESTAMP_TIMEOUT", 0.2)
    monkeypatch.setattr(ffmpeg_stderr, "_SHOWINFO", re.compile(r"a line ffmpeg never prints"))
    out = tmp_path / "out"
    with pytest.raises(MachineFaultError, match=r"a\.mp4: ffmpeg sent a frame but no timestamp"):
        run_extract(_config(videos, out))
    assert not list(out.glob("*.h5"))  # nothing recorded
    monkeypatch.undo()
    run_extract(_config(videos, out))
    _assert_complete(out)
