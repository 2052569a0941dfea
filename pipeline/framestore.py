"""The frame store's codec: the student's frames as H.264 groups of pictures, decoded in process.

Stage one keeps every cached row's frame at the student's size (default 171x128) so that stage two
reads clips *by row*, without the source videos and without a subprocess per clip. Rows are coded
in GOPs of at most ``gop`` consecutive rows of one video; each GOP is a self-contained H.264
bitstream (its own encoder, so it starts with SPS/PPS and an IDR frame and references nothing
outside itself), stored as bytes in the shard (see ``pipeline/shards/``). Reading row r decodes
its GOP from the start up to r.

Format choice (the README's benchmark table has the figures): 4:2:0 chroma alone caps RGB PSNR
near 41 dB even losslessly, so frames are coded 4:4:4 (``yuv444p``, High 4:4:4 profile) at CRF
16, a fraction of JPEG's bytes at the same quality. ``tune=psnr,fastdecode``: psnr turns off the
psychovisual tuning that spends bits on what looks sharp rather than what is close; fastdecode
codes without CABAC and the deblocking filter, which trades a few more bytes for faster decoding.
Decoding is the largest cost of a training clip and is paid on every clip of every epoch; coding
is paid once, in stage one's decode threads beside the teachers, and the ``veryfast`` preset
keeps it cheap. Odd sizes are padded by repeating the last column/row and cropped back. PyAV (the
``av`` wheel bundles FFmpeg with libx264) is the codec on both sides.

Colour: BT.601 limited range, the convention of SD video, converted here in both directions with
one matrix pair (:data:`RGB_TO_YUV`, :data:`YUV_TO_RGB`) by OpenCV's per-pixel affine transform over
a whole GOP at once rather than a swscale call per frame, because stage two converts every frame
of every clip.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any, cast

import av
import cv2
import numpy as np
from av.video.codeccontext import VideoCodecContext

from distinit.pipeline.errors import ShardError

CODEC = "h264"


def _bt601_limited() -> tuple[np.ndarray, np.ndarray]:
    """``(RGB_TO_YUV, YUV_TO_RGB)``: 3x4 affine maps (``[matrix | offset]``) between 8-bit RGB
    and BT.601 limited-range Y'CbCr (Y' in 16..235, Cb/Cr in 16..240), exact inverses."""
    kr, kb = 0.299, 0.114
    kg = 1.0 - kr - kb
    luma = np.array([kr, kg, kb])
    to_yuv = np.stack(
        [
            luma * 219 / 255,
            (np.array([0.0, 0.0, 1.0]) - luma) / (2 * (1 - kb)) * 224 / 255,
            (np.array([1.0, 0.0, 0.0]) - luma) / (2 * (1 - kr)) * 224 / 255,
        ]
    )
    offset = np.array([16.0, 128.0, 128.0])
    to_rgb = np.linalg.inv(to_yuv)
    return (
        np.concatenate([to_yuv, offset[:, None]], axis=1),
        np.concatenate([to_rgb, (-to_rgb @ offset)[:, None]], axis=1),
    )


RGB_TO_YUV, YUV_TO_RGB = _bt601_limited()


def _affine(pixels: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``matrix`` (3x4) applied to every pixel of ``(..., W, 3)`` uint8 images, rounded and
    clipped to uint8; one OpenCV call for the whole stack."""
    flat = pixels.reshape(-1, pixels.shape[-2], 3)
    return cast(np.ndarray, cv2.transform(flat, matrix)).reshape(pixels.shape)


@dataclass(frozen=True)
class StoreFormat:
    """How a shard's frame store is coded; recorded in the shard and checked when read."""

    width: int
    height: int
    gop: int = 16
    crf: int = 16
    preset: str = "veryfast"
    tune: str = "psnr,fastdecode"
    pix_fmt: str = "yuv444p"
    codec: str = CODEC

    def __post_init__(self) -> None:
        if self.width < 2 or self.height < 2:
            raise ValueError(f"store size must be at least 2x2, got {self.width}x{self.height}")
        if self.gop < 1:
            raise ValueError(f"gop must be positive, got {self.gop}")

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def describe(self) -> str:
        return (
            f"{self.codec} {self.pix_fmt} CRF {self.crf} ({self.preset}, tune {self.tune}), "
            f"{self.width}x{self.height}, GOPs of {self.gop} rows"
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StoreFormat:
        # Stores written before the tune was recorded were all coded with tune=psnr.
        fmt = cls(**{"tune": "psnr", **d})
        if fmt.codec != CODEC:
            raise ShardError(f"frame store codec {fmt.codec!r} is not one distinit reads")
        return fmt


def _pad_even(frames: np.ndarray) -> np.ndarray:
    """x264 wants even sizes: repeat the last column/row (cropped away again when decoding)."""
    if frames.shape[2] % 2:
        frames = np.concatenate([frames, frames[:, :, -1:]], axis=2)
    if frames.shape[1] % 2:
        frames = np.concatenate([frames, frames[:, -1:]], axis=1)
    return frames


def encode_gop(frames: np.ndarray, fmt: StoreFormat) -> bytes:
    """One GOP: ``(n, H, W, 3)`` uint8 RGB at the store size -> a self-contained H.264 stream."""
    if frames.ndim != 4 or frames.shape[1:] != (fmt.height, fmt.width, 3):
        raise ValueError(f"frames {frames.shape} do not match the store size {fmt.size}")
    if not 1 <= len(frames) <= fmt.gop:
        raise ValueError(f"a GOP holds 1..{fmt.gop} frames, got {len(frames)}")
    padded = _pad_even(frames)
    ctx = cast(VideoCodecContext, av.CodecContext.create("libx264", "w"))
    ctx.width, ctx.height = padded.shape[2], padded.shape[1]
    ctx.pix_fmt = fmt.pix_fmt
    ctx.time_base = Fraction(1, 25)  # nominal: rows carry their own timestamps in the shard
    ctx.thread_count = 1  # stage one runs many of these at once, one per decode worker
    ctx.colorspace = 6  # AVCOL_SPC_SMPTE170M (BT.601): tagged, so other players agree
    ctx.color_range = 1  # AVCOL_RANGE_MPEG (limited)
    ctx.options = {
        "crf": str(fmt.crf),
        "preset": fmt.preset,
        "tune": fmt.tune,
        "bframes": "0",  # frames come out in row order, each GOP decodes front to back
        "keyint": str(fmt.gop),
        "rc-lookahead": "0",
    }
    if fmt.pix_fmt != "yuv444p":
        raise ValueError(f"the frame store codes yuv444p, not {fmt.pix_fmt}")
    planes = _affine(padded, RGB_TO_YUV).transpose(0, 3, 1, 2)  # (n, 3, H, W): Y, Cb, Cr
    packets: list[bytes] = []
    for i, plane in enumerate(planes):
        picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(plane), format="yuv444p")
        picture.pts = i
        packets.extend(bytes(p) for p in ctx.encode(picture))
    packets.extend(bytes(p) for p in ctx.encode(None))
    return b"".join(packets)


def decode_gop(blob: bytes, fmt: StoreFormat, positions: np.ndarray) -> np.ndarray:
    """Frames at ``positions`` (indices into the GOP, any order, may repeat) of one GOP:
    ``(len(positions), H, W, 3)`` uint8 RGB. Decodes up to the last one wanted."""
    positions = np.asarray(positions, dtype=np.int64)
    wanted = set(positions.tolist())
    last = max(wanted)
    ctx = cast(VideoCodecContext, av.CodecContext.create(fmt.codec, "r"))
    ctx.thread_count = 1  # a clip is a few GOPs: threads would cost more than they save
    planes: dict[int, np.ndarray] = {}
    n = 0
    try:
        for packet in [*ctx.parse(blob), *ctx.parse(None), None]:
            for picture in ctx.decode(packet):
                if n in wanted:  # copy out only the frames asked for
                    if picture.format.name != "yuv444p":
                        raise ShardError(
                            f"frame store: a GOP decodes to {picture.format.name}, not yuv444p"
                        )
                    planes[n] = picture.to_ndarray()  # (3, H', W') Y, Cb, Cr, padded size
                n += 1
            if n > last:
                break
    except av.error.FFmpegError as exc:
        raise ShardError(f"frame store: a GOP does not decode ({exc})") from exc
    if n <= last:
        raise ShardError(f"frame store: a GOP holds {n} frames, frame {last} wanted")
    yuv = np.stack([planes[int(k)][:, : fmt.height, : fmt.width] for k in positions])
    return _affine(np.ascontiguousarray(yuv.transpose(0, 2, 3, 1)), YUV_TO_RGB)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of uint8 images ``a`` against ``b`` from their pooled squared error."""
    return psnr_from_mse(float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of uint8 images whose mean squared error is ``mse`` (pooled by the caller,
    e.g. over more frames than fit in memory at once)."""
    return float("inf") if mse == 0 else 10.0 * float(np.log10(255.0**2 / mse))
