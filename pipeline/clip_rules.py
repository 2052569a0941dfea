"""The clip rules, in one place for training, evaluation and the agreement check.

A clip is ``clip_len`` rows of one video taken every ``stride`` rows from ``start``:

* Window: rows ``start, start + stride, ...``; its *span* is ``(clip_len - 1) * stride + 1`` rows.
  Training draws ``start`` uniformly from every start whose window fits; testing takes ``k``
  uniformly spaced starts from the first to the last that fits.
* Short videos (fewer rows than the span; many HMDB51 clips are 10-20 frames) *loop*: clip frame
  ``i`` is row ``(start + i * stride) mod rows``, with ``start = 0``. The clip replays the video
  rather than freezing on a padded frame; a looped video's ``k`` test clips are identical.
* Crop and flip: a random ``crop`` square and a coin-flip horizontal mirror when augmenting, the
  centre square and no flip otherwise. Drawn in the order start, x, y, flip from one generator.
  Shards with views (``pipeline/views.py``) replace x, y and flip by one uniformly drawn view.
* Modality (:func:`clip_input`): RGB is cropped as decoded; flow is computed on the whole resized
  frames, then cropped and flipped with dx negated.

Where the frames of those rows come from (frame store or source video) is
``pipeline/frame_source.py``'s business, not this module's.
"""

from __future__ import annotations

import numpy as np

from distinit.pipeline.flow import FLOW_CHANNELS, clip_to_flow
from distinit.pipeline.views import ViewSet


def window_span(clip_len: int, stride: int) -> int:
    """Rows from a window's first frame to its last, inclusive."""
    return (clip_len - 1) * stride + 1


def is_short(row_count: int, clip_len: int, stride: int) -> bool:
    """Whether a video has fewer rows than one window spans (it is then looped)."""
    return row_count < window_span(clip_len, stride)


def window_rows(row_count: int, clip_len: int, stride: int, start: int) -> np.ndarray:
    """Rows of the window at ``start``; a video too short for the window loops."""
    if row_count < 1:
        raise ValueError("a video without frames has no window")
    rows = start + stride * np.arange(clip_len)
    return rows % row_count


def random_start(rng: np.random.Generator, row_count: int, clip_len: int, stride: int) -> int:
    """A uniformly random start among those whose window fits (0 for a short video)."""
    span = window_span(clip_len, stride)
    return int(rng.integers(0, row_count - span + 1)) if row_count >= span else 0


def uniform_starts(row_count: int, clip_len: int, stride: int, k: int) -> np.ndarray:
    """``k`` starts spread evenly from the first to the last window that fits (all 0 if none)."""
    last = max(row_count - window_span(clip_len, stride), 0)
    return np.round(np.linspace(0, last, k)).astype(np.int64)


def draw_crop(rng: np.random.Generator, size: tuple[int, int], crop: int) -> tuple[int, int, bool]:
    """``(x, y, flip)`` of a random ``crop`` square in a ``(width, height)`` frame."""
    width, height = size
    x = int(rng.integers(0, width - crop + 1))
    y = int(rng.integers(0, height - crop + 1))
    return x, y, bool(rng.random() < 0.5)


def draw_view(rng: np.random.Generator, views: ViewSet) -> int:
    """A uniformly random view of the shards' views: its box and flip are the clip's crop."""
    return int(rng.integers(0, len(views)))


def centre_crop(size: tuple[int, int], crop: int) -> tuple[int, int, bool]:
    """``(x, y, flip)`` of the centre ``crop`` square, unflipped."""
    width, height = size
    return (width - crop) // 2, (height - crop) // 2, False


def input_channels(modality: str) -> int:
    """Channels of the student's input for ``modality`` (its first convolution's in_channels)."""
    if modality == "rgb":
        return 3
    if modality == "flow":
        return FLOW_CHANNELS
    raise ValueError(f"modality must be rgb or flow, got {modality!r}")


def clip_input(
    frames: np.ndarray, modality: str, crop_x: int, crop_y: int, crop: int, flip: bool
) -> np.ndarray:
    """What the student sees of a clip: the one path from decoded frames to a clip array.

    ``frames`` is ``(T, H, W, 3)`` uint8 at the resize resolution (the whole frame, uncropped).
    Returns the ``crop`` square at ``(crop_x, crop_y)``, mirrored left-right when ``flip``:

    * ``"rgb"``: ``(T, crop, crop, 3)`` uint8, as decoded (the student normalises it).
    * ``"flow"``: ``(T, crop, crop, 2)`` float32 (dx, dy) in [-1, 1], already the student's input.

    Flow is computed on the whole resized frames and cropped afterwards, not on the crop: a
    pixel's flow then does not depend on where the crop fell (the crop's edges keep the context
    DIS needs, so train's random crops and eval's centre crop see the same field there). A flip
    mirrors the field and negates dx, exactly what the flow of the mirrored frames is, without
    relying on DIS being mirror-symmetric (it is not, to the last bit).
    """
    if modality == "flow":
        x: np.ndarray = clip_to_flow(frames)  # (T, H, W, 2) float32
    elif modality == "rgb":
        x = frames  # (T, H, W, 3) uint8
    else:
        raise ValueError(f"modality must be rgb or flow, got {modality!r}")
    x = x[:, crop_y : crop_y + crop, crop_x : crop_x + crop]
    if flip:
        x = x[:, :, ::-1]
        if modality == "flow":
            x = x * np.array([-1.0, 1.0], dtype=np.float32)  # mirrored motion: dx -> -dx
    return np.ascontiguousarray(x)
