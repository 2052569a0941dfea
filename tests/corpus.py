"""A corpus of broken and unusual videos beside good ones, generated at test time with ffmpeg."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.videogen import generator_ffmpeg, make_index_video, make_lavfi_video

OK, FAILED, EITHER = "ok", "failed", "ok-or-failed"


def _ffmpeg(*args: str) -> None:
    subprocess.run([generator_ffmpeg(), "-nostdin", "-loglevel", "error", "-y", *args], check=True)


def make_corpus(root: Path, *, heavy: bool = True) -> dict[str, str]:
    """Write the corpus under ``root``; returns ``{video id: expected status}``.

    ``EITHER`` marks damaged files that ffmpeg may partly decode: they must end either with
    frames or with a one-line reason, never with a crash or a lost good video.
    """
    root.mkdir(parents=True)
    (root / "sub").mkdir()
    expected: dict[str, str] = {}

    make_index_video(root / "good one.mp4", 60)
    make_index_video(root / "sub" / "é clip.avi", 10, codec="mpeg4")
    make_lavfi_video(root / "-dash.mkv", seconds=0.2)
    make_lavfi_video(root / 'it\'s "quoted".webm', seconds=0.2, extra=("-c:v", "libvpx-vp9"))
    make_lavfi_video(root / "single.mp4", seconds=0.04)
    make_lavfi_video(root / "movie.mov", seconds=0.2)
    expected.update(dict.fromkeys(
        ["good one.mp4", "sub/é clip.avi", "-dash.mkv", "it's \"quoted\".webm", "single.mp4",
         "movie.mov"], OK))  # fmt: skip

    (root / "empty.mp4").write_bytes(b"")
    (root / "notes.mp4").write_text("not a video at all\n")
    good = (root / "good one.mp4").read_bytes()
    # MP4 with its moov atom at the end cut off: nothing decodable.
    moov_last = root / "moov_last.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=25:duration=1", "-pix_fmt", "yuv420p",
            str(moov_last))  # fmt: skip
    data = moov_last.read_bytes()
    (root / "truncated.mp4").write_bytes(data[: data.rfind(b"moov") - 4])
    moov_last.unlink()
    _ffmpeg("-f", "lavfi", "-i", "sine=duration=0.3", str(root / "audio_only.mp4"))
    expected.update(
        dict.fromkeys(["empty.mp4", "notes.mp4", "truncated.mp4", "audio_only.mp4"], FAILED)
    )

    avi = (root / "sub" / "é clip.avi").read_bytes()
    (root / "truncated.avi").write_bytes(avi[: len(avi) // 2])
    # Garbage over packets in the middle of the media data, container index intact.
    damaged = bytearray(good)
    mdat, moov = good.find(b"mdat"), good.find(b"moov")
    middle = mdat + (moov - mdat) // 2
    damaged[middle : middle + 600] = bytes(range(200)) * 3
    (root / "damaged_middle.mp4").write_bytes(bytes(damaged))
    expected.update(dict.fromkeys(["truncated.avi", "damaged_middle.mp4"], EITHER))

    _ffmpeg("-f", "lavfi", "-i", "color=c=red:size=1x1:rate=5:duration=0.4", "-c:v", "ffv1",
            str(root / "one_pixel.mkv"))  # fmt: skip
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=4001x3:rate=5:duration=0.4", "-c:v", "ffv1",
            str(root / "wide_4001x3.mkv"))  # fmt: skip
    _ffmpeg("-display_rotation", "90", "-i", str(root / "good one.mp4"), "-c", "copy",
            str(root / "rotated_phone.mp4"))  # fmt: skip
    # Variable frame rate: 10 frames at 25 fps, then 5 fps.
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=25:duration=1",
            "-vf", "setpts='if(lt(N,10),N/25,0.4+(N-10)/5)/TB'", "-fps_mode", "vfr",
            "-pix_fmt", "yuv420p", str(root / "vfr.mp4"))  # fmt: skip
    expected.update(dict.fromkeys(
        ["one_pixel.mkv", "wide_4001x3.mkv", "rotated_phone.mp4", "vfr.mp4"], OK))  # fmt: skip
    if heavy:
        _ffmpeg(
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=7680x4320:rate=1:duration=1",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            str(root / "eight_k.mp4"),
        )
        expected["eight_k.mp4"] = OK

    (root / "folder.mp4").mkdir()  # a directory named like a video is not a video
    (root / "loop").symlink_to(root, target_is_directory=True)  # a symlink loop must not hang
    return expected
