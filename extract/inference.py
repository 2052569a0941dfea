"""Running teachers on batches of decoded frames, as fast as the device allows.

Frames are decoded once for all teachers, and each teacher makes its inputs from that decode
(:class:`TeacherInput`: square boxes of the decode, each resized to the teacher's input size with
its own interpolation, mirrored where asked), so the shard records exactly what was done. Two
decodes exist: with views (``pipeline/views.py``) the whole frame stretched to the student's
frame times an integer scale, one box per view, so each target is the teacher on exactly a crop
the student sees; without (``--views recipe``) the teacher's own recipe, one centre box
covering the widest field of view any teacher crops (:func:`decode_geometry`). Frames arrive as one
``(B, H, W, 3)`` uint8 array; permuting it to NCHW gives a channels-last tensor for free, the
layout convolutions run fastest in. Teachers run under ``torch.inference_mode`` and, when asked,
autocast to bf16/fp16; targets come back as float32.

Every teacher call has one shape (:attr:`TeacherRunner.call_frames`): a frame's targets must not
depend on how many frames shared its call, or the same command would write other shards on
another run. On CPU that shape is fixed (:data:`CPU_CALL_FRAMES`); on CUDA it is the batch size,
measured at start-up on the first real frames (:func:`calibrate_batch_size`) unless
``--batch-size`` is given.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distinit.extract.teachers import Teacher
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.frame_geometry import INTERPOLATIONS, FrameGeometry
from distinit.pipeline.shards import TeacherInfo, target_key
from distinit.pipeline.views import View, ViewSet, canvas_geometry, canvas_scale

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# Frames per teacher call on CPU, whatever the batch size. oneDNN picks kernels and blockings by
# the batch dimension, so a frame's logits move with the size of its call, enough to move an int8
# step, and a size timed at start-up would depend on the machine's load. At one shape a frame's
# logits depend on the frame alone, not on its place in the call or its neighbours (tested). 8:
# eager CPU rates are flat around it (the README's benchmark has the figures).
CPU_CALL_FRAMES = 8
# Calibration candidates on CUDA: the batch doubles until it no longer fits or stops paying.
CUDA_BATCH_SIZES = (32, 64, 128, 256, 512, 1024)
CUDA_CALIBRATION_REPEATS = 3
CUDA_SATURATION_GAIN = 1.05  # a doubling adding under 5% throughput has saturated the GPU


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("fp16 on CPU is slow and unsupported by many kernels; use bf16 or fp32")
    return precision


def decode_geometry(teachers: Sequence[Teacher]) -> FrameGeometry:
    """One decode serves every teacher: a centre square covering the widest field of view any
    teacher crops (``crop / resize`` of the shorter side), at a resolution no teacher lacks.
    A single teacher is decoded exactly at its own recipe, with its own interpolation (teachers
    that disagree share a bilinear decode and each resizes its box with its own)."""
    widest = max(_field(t) for t in teachers)
    if widest > 1.0:
        raise ConfigError("a teacher's crop is larger than its resized frame")
    side = max(round(t.resize_size * widest) for t in teachers)
    for t in teachers:
        _check_interpolation(t)
    modes = {t.interpolation for t in teachers}
    shared = modes.pop() if len(modes) == 1 else "bilinear"
    return FrameGeometry(side, side, max(side, round(side / widest)), shared)


def _field(teacher: Teacher) -> float:
    """The fraction of the shorter side a teacher's centre crop covers."""
    return teacher.crop_size / teacher.resize_size


@dataclass(frozen=True)
class Box:
    """One square input cut from the shared decode: ``side`` pixels at ``(left, top)``,
    mirrored left-right when ``flip``."""

    left: int
    top: int
    side: int
    flip: bool = False


@dataclass(frozen=True)
class TeacherInput:
    """What is done to the shared decode to make one teacher's inputs (then normalised): each
    box, resized to ``size`` (the teacher's input size)."""

    boxes: tuple[Box, ...]
    size: int
    interpolation: str

    def describe(self, geometry: FrameGeometry, teacher: Teacher, views: ViewSet | None) -> str:
        steps = [f"RGB uint8 decoded by ffmpeg: {geometry.describe()}"]
        side = self.boxes[0].side
        if views is not None:
            scale = side // views.crop
            steps.append(
                f"one {side}x{side} box per view (the view's store box x {scale}"
                f"{', mirrored for mirrored views' if views.mirrored else ''})"
            )
        elif side != geometry.width:
            steps.append(f"centre crop {side}x{side}")
        if self.size != side:
            steps.append(f"resize to {self.size}x{self.size} ({self.interpolation}, antialiased)")
        steps.append(teacher.normalisation)
        own = (
            f"resize shorter side to {teacher.resize_size} ({teacher.interpolation}), "
            f"centre crop {teacher.crop_size}"
        )
        return ", ".join(steps) + f" [the teacher's own recipe: {own}]"


def teacher_input(
    teacher: Teacher, geometry: FrameGeometry, views: ViewSet | None = None
) -> TeacherInput:
    """The boxes of the shared decode the teacher runs on: one per view of ``views`` (the
    decode is then the views' canvas), else one centre box covering exactly the teacher's own
    field of view."""
    _check_interpolation(teacher)
    if views is not None:
        scale = geometry.width // views.size[0]
        boxes = tuple(view_box(v, views.crop, scale) for v in views.views)
        return TeacherInput(boxes, teacher.crop_size, teacher.interpolation)
    decoded_field = geometry.width / (geometry.resize_shorter or geometry.width)
    crop = min(geometry.width, round(geometry.width * _field(teacher) / decoded_field))
    centre = Box((geometry.width - crop) // 2, (geometry.height - crop) // 2, crop)
    return TeacherInput((centre,), teacher.crop_size, teacher.interpolation)


def _check_interpolation(teacher: Teacher) -> None:
    if teacher.interpolation not in INTERPOLATIONS:
        raise ConfigError(
            f"teacher {teacher.name}: interpolation {teacher.interpolation!r} is not one of "
            f"{', '.join(INTERPOLATIONS)}"
        )


def view_box(view: View, crop: int, scale: int) -> Box:
    """The canvas box of a view: its store box, ``scale`` times finer."""
    return Box(view.x * scale, view.y * scale, crop * scale, view.flip)


def views_geometry(teachers: Sequence[Teacher], views: ViewSet) -> FrameGeometry:
    """The canvas the teachers' views are cut from (see ``pipeline/views.py``)."""
    return canvas_geometry(views.size, canvas_scale(views.crop, [t.crop_size for t in teachers]))


def split_classifier(teacher: Teacher) -> tuple[nn.Module, nn.Linear | None]:
    """``(trunk, classifier)``: the trunk maps an input to the pooled embedding (the input of
    the final linear classifier), so one forward pass gives both target kinds. A teacher without
    class names has no classifier: its output is its embedding.

    The teacher's own model is left whole (it still gives logits: the benchmark's naive baseline
    and any later runner use it): the trunk is a copy of its module tree that shares every
    parameter and buffer, with the classifier replaced by the identity. So no weight is
    duplicated, and ``.to(device)`` on either moves both.
    """
    if not teacher.has_classifier:
        return teacher.model, None
    n = len(teacher.class_names)
    last: tuple[str, nn.Linear] | None = None
    for name, module in teacher.model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == n:
            last = (name, module)
    if last is None:
        raise ConfigError(
            f"teacher {teacher.name}: its classifier is not a final linear layer with {n} "
            "outputs, so it has no pooled embedding to cache; use its logits alone"
        )
    path, classifier = last
    shared = {id(t): t for t in (*teacher.model.parameters(), *teacher.model.buffers())}
    trunk = copy.deepcopy(teacher.model, shared)
    parent_path, _, attr = path.rpartition(".")
    trunk.get_submodule(parent_path).register_module(attr, nn.Identity())
    return trunk, classifier


class _TeacherOnFrames(nn.Module):
    """One teacher with its input transform: (B, 3, H, W) uint8 decode -> its targets on each
    of its boxes ``(logits or None, embedding or None)``, both from one pass through the
    trunk. Asked for logits alone, ``trunk`` is the whole network and ``classifier`` None."""

    def __init__(
        self,
        trunk: nn.Module,
        classifier: nn.Linear | None,
        teacher: Teacher,
        plan: TeacherInput,
        kinds: tuple[str, ...],
        trunk_per_box: bool = False,
    ) -> None:
        super().__init__()
        self.trunk = trunk
        self.trunk_per_box = trunk_per_box
        self.classifier = classifier
        self.plan = plan
        self.want_logits = "logits" in kinds
        self.want_embedding = "embedding" in kinds
        self.mean: torch.Tensor
        self.inv_std: torch.Tensor
        self.register_buffer("mean", torch.tensor(teacher.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer(
            "inv_std", 1.0 / torch.tensor(teacher.std).view(1, 3, 1, 1), persistent=False
        )

    def prepare(self, frames: torch.Tensor, box: Box) -> torch.Tensor:
        """The teacher's normalised input from one box of the decode ``(B, 3, H, W)``."""
        x = frames[..., box.top : box.top + box.side, box.left : box.left + box.side].float()
        if box.flip:
            x = x.flip(-1)
        if self.plan.size != box.side:
            x = F.interpolate(
                x, size=(self.plan.size, self.plan.size), mode=self.plan.interpolation,
                antialias=True,
            )  # fmt: skip
            if self.plan.interpolation == "bicubic":
                x = x.clamp(0.0, 255.0)  # bicubic overshoots; an image stays in 0..255
        return ((x - self.mean) * self.inv_std).contiguous(memory_format=torch.channels_last)

    def forward(
        self, frames: torch.Tensor, boxes: tuple[Box, ...] | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Targets of every box (the plan's unless given), box-major: ``(K * B, C)``. All boxes
        go through the trunk as one batch, or with ``trunk_per_box`` one box's B frames at a time:
        on CPU a batch of K * B images spills every activation out of cache and makes the
        allocator map and unmap each one afresh; a trunk call of B images is also the one shape a
        call ever has, whatever K."""
        if self.trunk_per_box:
            out = torch.cat([self.trunk(self.prepare(frames, b)) for b in boxes or self.plan.boxes])
        else:
            out = self.trunk(torch.cat([self.prepare(frames, b) for b in boxes or self.plan.boxes]))
        if not self.want_embedding:  # logits alone: the trunk is the whole network
            return out, None
        logits = None
        if self.want_logits and self.classifier is not None:
            logits = self.classifier(out)
        return logits, out


class TeacherRunner:
    """Holds teachers on a device and maps uint8 frame batches to float32 targets, keyed by
    target (:func:`~distinit.pipeline.shards.target_key`: the teacher's name for logits,
    ``name:embedding`` for its embedding).

    ``kinds`` names the target kinds wanted of each teacher (logits when not listed). With
    ``views`` every teacher runs on each view of every frame (:meth:`run_views`); without, on
    its own centre recipe (one view). With ``compile=True`` each teacher (with its input
    transform) goes through ``torch.compile``: a one-off cost of tens of seconds that can double
    the CPU frame rate (see ``distinit bench extract``).

    Every call of a teacher runs exactly :attr:`call_frames` frames: a shorter batch is padded with
    black frames and a longer one split (see :data:`CPU_CALL_FRAMES`), so one compiled shape
    serves the run and a frame's targets do not depend on the batch it came in. It is
    :data:`CPU_CALL_FRAMES` off CUDA and ``batch_size`` on CUDA (None: batches run as given, as
    the calibration runs them).
    """

    def __init__(
        self,
        teachers: Sequence[Teacher],
        device: torch.device,
        precision: str,
        *,
        compile: bool = False,
        batch_size: int | None = None,
        eager_if_compile_fails: bool = False,
        kinds: dict[str, tuple[str, ...]] | None = None,
        views: ViewSet | None = None,
    ) -> None:
        self.teachers = list(teachers)
        self.views = views
        self.kinds = {t.name: (kinds or {}).get(t.name, ("logits",)) for t in self.teachers}
        self.device = device
        self.precision = precision
        self.compiled = False
        self.call_frames: int | None = None
        self.set_batch_size(batch_size)
        self.eager_if_compile_fails = eager_if_compile_fails
        self.geometry = (
            views_geometry(teachers, views) if views is not None else decode_geometry(teachers)
        )
        self.inputs = {t.name: teacher_input(t, self.geometry, views) for t in self.teachers}
        self.num_views = len(views) if views is not None else 1
        self._eager: dict[str, nn.Module] = {}
        self._dims: dict[str, int] = {}
        for t in self.teachers:
            t.model.eval()
            if "logits" in self.kinds[t.name]:
                t.info("logits")  # refuses a teacher without a classifier, in one line
            # Logits alone come from the whole network; an embedding needs it split.
            trunk, classifier = (
                split_classifier(t) if "embedding" in self.kinds[t.name] else (t.model, None)
            )
            module = _TeacherOnFrames(
                trunk, classifier, t, self.inputs[t.name], self.kinds[t.name],
                trunk_per_box=device.type != "cuda",
            )  # fmt: skip
            self._eager[t.name] = module.to(device).to(memory_format=torch.channels_last)
            if "embedding" in self.kinds[t.name]:
                self._dims[t.name] = (
                    classifier.in_features
                    if classifier is not None
                    else self._measure_dim(self._eager[t.name])
                )
        self._forward: dict[str, nn.Module] = dict(self._eager)
        if compile:
            if self.call_frames is None:
                raise ValueError("a compiled teacher on CUDA needs the batch size it will run at")
            self.compile(self.call_frames)

    def _measure_dim(self, module: nn.Module) -> int:
        g = self.geometry
        with torch.inference_mode():
            _, embedding = module(
                torch.zeros(1, 3, g.height, g.width, dtype=torch.uint8, device=self.device)
            )
        assert embedding is not None
        if embedding.ndim != 2:
            raise ConfigError(f"a teacher's output has shape {tuple(embedding.shape)}, not (B, D)")
        return int(embedding.shape[1])

    def set_batch_size(self, batch_size: int | None) -> None:
        """Fix :attr:`call_frames` for a run at ``batch_size`` frames a batch: that size on CUDA,
        :data:`CPU_CALL_FRAMES` elsewhere whatever ``batch_size``."""
        self.call_frames = batch_size if self.device.type == "cuda" else CPU_CALL_FRAMES

    def compile(self, batch_size: int) -> None:
        """``torch.compile`` every teacher, to be run at ``batch_size`` frames a batch."""
        self.set_batch_size(batch_size)
        if self.device.type == "cpu":
            # Inductor warns on every CPU compile of a CUDA build that no CUDA runtime is found;
            # that is expected here and says nothing a user can act on.
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        self.compiled = True
        self._forward = {name: torch.compile(m) for name, m in self._eager.items()}  # type: ignore[misc]

    def infos(self) -> list[TeacherInfo]:
        """The shard records of every target, in teacher order, each with exactly the
        preprocessing its teacher's inputs went through."""
        out = []
        for t in self.teachers:
            done = self.inputs[t.name].describe(self.geometry, t, self.views)
            for kind in self.kinds[t.name]:
                out.append(t.info(kind, done, self._dims.get(t.name, 0)))
        return out

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def to_device(self, frames: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 numpy -> (B, 3, H, W) uint8 channels-last tensor on the device."""
        x = torch.from_numpy(frames).permute(0, 3, 1, 2)
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        return x

    def __call__(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """Targets ``(B, C)`` of a runner with one view (the recipe, or a single view)."""
        if self.num_views != 1:
            raise ValueError("a runner with several views gives (K, B, C): call run_views")
        return {key: x[0] for key, x in self.run_views(frames).items()}

    @torch.inference_mode()
    def run_views(
        self, frames: np.ndarray, views: tuple[View, ...] | None = None
    ) -> dict[str, np.ndarray]:
        """Targets ``(K, B, C)`` per target key: each teacher on each of the runner's views
        (or of ``views``, run uncompiled: e.g. the crops a check recomputes) of each frame, in
        calls of :attr:`call_frames` frames."""
        n = len(frames)
        boxes: tuple[Box, ...] | None = None
        if views is not None:
            assert self.views is not None, "views of a runner without a view canvas"
            scale = self.geometry.width // self.views.size[0]
            boxes = tuple(view_box(v, self.views.crop, scale) for v in views)
        size = self.call_frames or n
        calls = -(-n // size)
        if calls * size > n:  # black frames: a row's targets do not depend on its neighbours
            padding = np.zeros((calls * size - n, *frames.shape[1:]), dtype=frames.dtype)
            frames = np.concatenate([frames, padding])
        parts: dict[str, list[np.ndarray]] = {}
        for i in range(calls):
            for key, x in self._run_call(frames[i * size : (i + 1) * size], boxes).items():
                parts.setdefault(key, []).append(x)
        return {key: np.concatenate(x, axis=1)[:, :n] for key, x in parts.items()}

    def _run_call(self, frames: np.ndarray, boxes: tuple[Box, ...] | None) -> dict[str, np.ndarray]:
        """One call of every teacher on ``frames`` (all of them, padding included)."""
        x8 = self.to_device(frames)
        out: dict[str, np.ndarray] = {}
        for name, forward in self._forward.items():
            with self._autocast():
                if boxes is not None:
                    logits, embedding = self._eager[name](x8, boxes)
                else:
                    logits, embedding = self._forward_once(name, forward, x8)
            k = len(boxes) if boxes is not None else self.num_views
            if logits is not None:
                out[name] = _by_view(logits, k)
            if embedding is not None:
                out[target_key(name, "embedding")] = _by_view(embedding, k)
        return out

    def _forward_once(
        self, name: str, forward: nn.Module, x8: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        try:
            return forward(x8)  # type: ignore[no-any-return]
        except Exception as exc:  # compilation errors surface on the first call
            if not (self.compiled and self.eager_if_compile_fails):
                raise
            log.warning(
                "torch.compile failed for %s (%s); running it uncompiled: same results, "
                "slower. --compile off skips the attempt.",
                name,
                str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__,
            )
            self._forward[name] = self._eager[name]
            return self._eager[name](x8)  # type: ignore[no-any-return]


def _by_view(x: torch.Tensor, views: int) -> np.ndarray:
    """Box-major ``(K * B, C)`` -> ``(K, B, C)`` float32."""
    return x.float().reshape(views, -1, x.shape[-1]).cpu().numpy()


@dataclass(frozen=True)
class Calibration:
    """The teacher batch size chosen at start-up, and the frame rates that chose it."""

    batch_size: int
    rates: dict[int, float]  # batch size -> frames/s through the teachers
    seconds: float

    def describe(self) -> str:
        tried = ", ".join(f"{b}: {r:.1f}" for b, r in self.rates.items())
        return (
            f"teacher batch {self.batch_size}, measured on the first frames in "
            f"{self.seconds:.1f} s (frames/s by batch: {tried})"
        )


def calibrate_batch_size(runner: TeacherRunner, frames: np.ndarray) -> Calibration:
    """Time the teachers on real frames on CUDA and pick the batch size.

    The batch doubles from 32 while it fits and still adds 5% throughput; the smallest batch
    within 5% of the best rate wins (larger ones only cost memory). Runs the eager teachers:
    compiling each candidate would cost far more than it could tell. Not done on CPU, where the
    teacher's calls have one fixed shape (:data:`CPU_CALL_FRAMES`).
    """
    if runner.device.type != "cuda":
        raise ValueError("the batch size is calibrated on CUDA only")
    if len(frames) == 0:
        raise ValueError("calibration needs at least one frame")
    forward, runner._forward = runner._forward, dict(runner._eager)
    compiled, runner.compiled = runner.compiled, False
    call_frames, runner.call_frames = runner.call_frames, None  # each candidate at its own size
    rates: dict[int, float] = {}
    started = time.monotonic()
    try:
        runner.run_views(frames[:1])  # the first call's one-off set-up is no batch size's cost
        for b in CUDA_BATCH_SIZES:
            batch = np.resize(frames, (b, *frames.shape[1:]))  # repeats short inputs
            try:
                runner.run_views(batch)  # warm-up: a new shape's allocations are not throughput
                _sync(runner.device)
                t0 = time.perf_counter()
                for _ in range(CUDA_CALIBRATION_REPEATS):
                    runner.run_views(batch)
                _sync(runner.device)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                break
            rates[b] = CUDA_CALIBRATION_REPEATS * b / (time.perf_counter() - t0)
            if len(rates) > 1:
                previous = rates[CUDA_BATCH_SIZES[CUDA_BATCH_SIZES.index(b) - 1]]
                if rates[b] < previous * CUDA_SATURATION_GAIN:
                    break
    finally:
        runner._forward, runner.compiled, runner.call_frames = forward, compiled, call_frames
    if not rates:
        raise ConfigError(
            f"a teacher batch of {CUDA_BATCH_SIZES[0]} frames does not fit on {runner.device}; "
            "pass a smaller --batch-size"
        )
    best = max(rates.values())
    chosen = min(b for b, r in rates.items() if r >= best / CUDA_SATURATION_GAIN)
    return Calibration(chosen, dict(sorted(rates.items())), time.monotonic() - started)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
