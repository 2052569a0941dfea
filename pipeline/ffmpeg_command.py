"""The ffmpeg command line of a decode: raw RGB frames on stdout, a ``showinfo`` line per frame on
stderr.

One decode can produce several *views* of every frame (e.g. the teacher's crop and the student's
whole resized frame): ffmpeg splits the decoded frame, scales each branch, pads them to one width
and stacks them vertically, so all views travel through one pipe in one process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import ffmpeg

from distinit.pipeline.ffmpeg_binary import ffmpeg_binary
from distinit.pipeline.frame_geometry import FrameGeometry


def stacked_size(geometries: Sequence[FrameGeometry]) -> tuple[int, int]:
    """(width, height) of the frame that carries every view, stacked top to bottom."""
    return max(g.width for g in geometries), sum(g.height for g in geometries)


def _fit(stream: Any, geometry: FrameGeometry) -> Any:
    """The filters that fit a decoded frame into ``geometry``."""
    flags = geometry.interpolation  # ffmpeg's swscale names them as we do
    if geometry.resize_shorter is None:
        return stream.filter("scale", geometry.width, geometry.height, flags=flags)
    side = geometry.resize_shorter
    stream = stream.filter("scale", side, side, force_original_aspect_ratio="increase", flags=flags)
    return stream.filter("crop", geometry.width, geometry.height)


def ffmpeg_command(
    path: str, geometries: Sequence[FrameGeometry], *, seek: float | None, threads: int
) -> list[str]:
    input_args: dict[str, object] = {"threads": threads}
    if seek is not None and seek > 0:
        input_args["ss"] = f"{seek:.6f}"
    # "file:" keeps names with colons or leading dashes from being read as protocols or options.
    stream = ffmpeg.input("file:" + os.path.abspath(path), **input_args)["v:0"]
    stream = stream.filter("showinfo", checksum=0)
    if len(geometries) == 1:
        stream = _fit(stream, geometries[0])
    else:
        # Scale each branch in the decoder's pixel format (as a single view is), then go to RGB
        # so views of odd widths pad and stack losslessly.
        width, _ = stacked_size(geometries)
        split = stream.split()
        branches = []
        for k, g in enumerate(geometries):
            branch = _fit(split[k], g).filter("format", "rgb24")
            if g.width < width:
                branch = branch.filter("pad", width, g.height, 0, 0)
            branches.append(branch)
        stream = ffmpeg.filter(branches, "vstack", inputs=len(branches))
    out = stream.output(
        "pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough"
    ).global_args("-nostdin", "-hide_banner", "-loglevel", "info")
    return list(out.compile(cmd=ffmpeg_binary()))
