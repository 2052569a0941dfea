"""Views: the exact crops of a frame that the student may see, each with its own cached target.

Image teachers are neither crop- nor flip-invariant, so a target is valid only for the pixels it
was computed on. Stage one therefore runs every teacher on each *view* of every frame: a
``crop`` x ``crop`` box of the student's frame (``size``, the frame store's geometry: the whole
source frame stretched to e.g. 171x128), mirrored or not. Stage two draws one view per clip and
crops exactly that box, so the student always learns the teacher's output on what it sees.

Positions (:meth:`ViewSet.grid`) span the crop's free range on each axis that has one, ends
included: ``positions`` boxes on an ``nx`` x ``ny`` grid whose shape follows the ratio of the
free ranges (6 positions in a 171x128 frame with a 112 crop: x in {0, 30, 59}, y in {0, 16}).
With ``mirror`` each position comes unflipped and flipped. View ``k`` of a shard is row ``k`` of
its view table; :meth:`ViewSet.source_boxes` maps the boxes onto a video's source pixels.

The teacher sees a view through a *canvas*: the whole source frame stretched to ``size`` times
an integer ``scale`` (:func:`canvas_scale`), so each view is an integer-aligned box of the canvas
covering exactly the source region of its store box, resized to the teacher's input with the
teacher's own interpolation (no resize at all when the box already is that size: 2 x 112 = 224).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from distinit.pipeline.errors import ConfigError
from distinit.pipeline.frame_geometry import FrameGeometry, format_size

DEFAULT_POSITIONS = 6
DEFAULT_CROP = 112  # train's --crop default


@dataclass(frozen=True)
class View:
    """A ``crop`` square at ``(x, y)`` of the student's frame, mirrored when ``flip``."""

    x: int
    y: int
    flip: bool


@dataclass(frozen=True)
class ViewSet:
    """The views of one shard directory, in the geometry of the student's frames."""

    size: tuple[int, int]  # (width, height) of the student's frame (the store size)
    crop: int
    views: tuple[View, ...]

    def __post_init__(self) -> None:
        width, height = self.size
        _check_crop(self.size, self.crop)
        for v in self.views:
            if not (0 <= v.x <= width - self.crop and 0 <= v.y <= height - self.crop):
                raise ConfigError(f"view at ({v.x}, {v.y}) lies outside {format_size(self.size)}")

    @classmethod
    def grid(
        cls, size: tuple[int, int], crop: int, positions: int = DEFAULT_POSITIONS,
        mirror: bool = True,
    ) -> ViewSet:  # fmt: skip
        """``positions`` crop positions spanning the free range of each axis (see the module
        docstring), each unflipped and, with ``mirror``, flipped."""
        if positions < 1:
            raise ConfigError(f"--views must be at least 1, got {positions}")
        width, height = size
        _check_crop(size, crop)
        free = (width - crop, height - crop)
        nx, ny = _grid_shape(positions, free)
        xs = _spread(free[0], nx)
        ys = _spread(free[1], ny)
        flips = (False, True) if mirror else (False,)
        views = tuple(View(x, y, flip) for flip in flips for y in ys for x in xs)
        return cls(size, crop, views)

    def __len__(self) -> int:
        return len(self.views)

    @property
    def positions(self) -> int:
        return len({(v.x, v.y) for v in self.views})

    @property
    def mirrored(self) -> bool:
        return any(v.flip for v in self.views)

    def store_boxes(self) -> np.ndarray:
        """``(K, 4)`` int64 ``x0, y0, x1, y1`` of each view in the student's frame (x1, y1
        exclusive)."""
        return np.array(
            [(v.x, v.y, v.x + self.crop, v.y + self.crop) for v in self.views], dtype=np.int64
        ).reshape(-1, 4)

    def source_boxes(self, width: int, height: int) -> np.ndarray:
        """``(K, 4)`` float64 ``x0, y0, x1, y1`` of each view in a ``width`` x ``height``
        source frame: the region the stretched store frame's box covers."""
        scale = np.array([width / self.size[0], height / self.size[1]] * 2)
        return self.store_boxes() * scale

    def describe(self) -> str:
        mirrors = ", each also mirrored" if self.mirrored else ""
        return (
            f"{len(self)} views: {self.positions} positions of a {self.crop}x{self.crop} crop "
            f"in the {format_size(self.size)} frame{mirrors}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "size": list(self.size),
            "crop": self.crop,
            "views": [[v.x, v.y, int(v.flip)] for v in self.views],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ViewSet:
        views = tuple(View(int(x), int(y), bool(f)) for x, y, f in d["views"])
        return cls((int(d["size"][0]), int(d["size"][1])), int(d["crop"]), views)

    @classmethod
    def from_table(
        cls, size: tuple[int, int], crop: int, boxes: np.ndarray, flips: np.ndarray
    ) -> ViewSet:
        """The views of a shard's view table (``boxes`` as :meth:`store_boxes` gives them)."""
        boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
        if np.any(boxes[:, 2] - boxes[:, 0] != crop) or np.any(boxes[:, 3] - boxes[:, 1] != crop):
            raise ConfigError(f"a view box is not a {crop}x{crop} square")
        views = tuple(
            View(int(b[0]), int(b[1]), bool(f)) for b, f in zip(boxes, flips, strict=True)
        )
        return cls(size, crop, views)


def _check_crop(size: tuple[int, int], crop: int) -> None:
    if not 1 <= crop <= min(size):
        raise ConfigError(
            f"--crop {crop} does not fit the {format_size(size)} frame (--store-size)"
        )


def default_crop(size: tuple[int, int]) -> int:
    """Train's crop for a frame of ``size``: 112 of 128, the same 7/8 of the shorter side."""
    return max(1, round(min(size) * DEFAULT_CROP / 128))


def _grid_shape(positions: int, free: tuple[int, int]) -> tuple[int, int]:
    """``(nx, ny)`` with ``nx * ny == positions``: an axis without free range gets one
    position; otherwise both get at least two, shaped like the free ranges."""
    fx, fy = free
    if positions == 1:
        return 1, 1
    if fx == 0 and fy == 0:
        raise ConfigError("the crop fills the whole frame: there is room for one view only")
    if fy == 0:
        return positions, 1
    if fx == 0:
        return 1, positions
    shapes = [(nx, positions // nx) for nx in range(2, positions // 2 + 1) if positions % nx == 0]
    if not shapes:
        raise ConfigError(
            f"--views {positions} cannot span both axes of the crop's free range; use a "
            "product of two numbers of at least 2 (4, 6, 8, 9, ...) or 1"
        )
    ratio = math.log(fx / fy)
    return min(shapes, key=lambda s: abs(math.log(s[0] / s[1]) - ratio))


def _spread(free: int, n: int) -> list[int]:
    """``n`` distinct offsets from 0 to ``free`` inclusive, evenly spaced (the middle for one)."""
    if n == 1:
        return [free // 2]
    if n > free + 1:
        raise ConfigError(
            f"{n} crop positions on an axis with {free + 1} possible offsets; use fewer --views"
        )
    return [int(v) for v in np.round(np.linspace(0, free, n))]


def canvas_scale(crop: int, teacher_sizes: list[int]) -> int:
    """The integer factor by which the teachers' canvas is larger than the student's frame:
    enough that a view box has at least the largest teacher input's resolution."""
    return max(1, math.ceil(max(teacher_sizes) / crop))


def canvas_geometry(size: tuple[int, int], scale: int) -> FrameGeometry:
    """The teachers' decode: the whole frame stretched to ``size * scale`` (the student's frame,
    ``scale`` times finer), so a store box ``b`` is canvas box ``b * scale``."""
    return FrameGeometry(size[0] * scale, size[1] * scale)


def nearest_view_iou(views: ViewSet, samples: int = 20000, seed: int = 0) -> float:
    """Mean IoU of a uniformly random training crop (today's augmentation) with the nearest
    view's box: how much of the crop diversity the views keep (1.0: all of it)."""
    width, height = views.size
    rng = np.random.default_rng(seed)
    xs = rng.integers(0, width - views.crop + 1, samples)
    ys = rng.integers(0, height - views.crop + 1, samples)
    boxes = np.array(sorted({(v.x, v.y) for v in views.views}))
    dx = np.abs(xs[:, None] - boxes[None, :, 0])
    dy = np.abs(ys[:, None] - boxes[None, :, 1])
    inter = np.clip(views.crop - dx, 0, None) * np.clip(views.crop - dy, 0, None)
    iou = inter / (2 * views.crop**2 - inter)
    return float(iou.max(axis=1).mean())
