"""What the README states about the teacher's numbers, on real frames: int8 storage, bf16 on CPU,
and ``--compile on``.

The frames are the first 32 of each of the four sample clips (128 real frames) at the default
teacher's input geometry.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from distinit.extract import runner as extract_runner
from distinit.extract import teacher_setup
from distinit.extract.config import ExtractConfig
from distinit.extract.divergence import kl_divergence
from distinit.extract.inference import TeacherRunner, resolve_precision
from distinit.extract.teachers import Teacher, load_teacher
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.frame_geometry import FrameGeometry
from distinit.pipeline.shards import ShardSet, dequantize, quantize, read_shard_header
from distinit.pipeline.video import iter_video
from tests.videogen import make_index_video

CPU = torch.device("cpu")
# README, Benchmarks: int8 per frame at KL <= 1e-4 (mean); bf16 on CPU costs a mean KL of about
# 1e-2 against fp32 over the sample clips' frames (per clip 4e-3 to 2e-2). The bounds below are
# those statements, with 2x room for another CPU's kernels.
INT8_MEAN_KL = 1e-4
BF16_MEAN_KL = 2e-2


@pytest.fixture(scope="module")
def teacher() -> Teacher:
    return load_teacher("efficientnet_lite0")


def real_frames(sample_clips: Path, geometry: FrameGeometry) -> np.ndarray:
    """The first 32 frames of every sample clip: (128, H, W, 3) uint8."""
    frames = np.concatenate(
        [
            next(iter(iter_video(clip, geometry, chunk_size=32))).frames
            for clip in sorted(sample_clips.glob("*.mp4"))
        ]
    )
    assert len(frames) == 128
    return frames


@pytest.fixture(scope="module")
def fp32(teacher: Teacher, sample_clips: Path) -> tuple[np.ndarray, np.ndarray]:
    """(frames, fp32 logits) of :func:`real_frames`."""
    runner = TeacherRunner([teacher], CPU, "fp32")
    frames = real_frames(sample_clips, runner.geometry)
    return frames, runner(frames)[teacher.name]


def test_int8_storage_is_1024_bytes_a_frame_at_the_stated_kl(
    fp32: tuple[np.ndarray, np.ndarray],
) -> None:
    _, logits = fp32
    q, scale, offset = quantize(logits)
    assert q.dtype == np.int8 and scale.dtype == offset.dtype == np.float32
    # logits + scale + offset, plus the float64 time and int64 index every row carries
    assert q[0].nbytes + scale[0].nbytes + offset[0].nbytes + 8 + 8 == 1024
    kl = kl_divergence(logits, dequantize(q, scale, offset))
    assert kl.mean() <= INT8_MEAN_KL, kl.mean()


def test_bf16_on_cpu_stays_within_the_stated_kl(
    teacher: Teacher, fp32: tuple[np.ndarray, np.ndarray]
) -> None:
    assert resolve_precision("bf16", CPU) == "bf16"
    with pytest.raises(ConfigError, match="fp16 on CPU"):
        resolve_precision("fp16", CPU)
    frames, reference = fp32
    kl = kl_divergence(reference, TeacherRunner([teacher], CPU, "bf16")(frames)[teacher.name])
    assert kl.mean() > 1e-6, "bf16 was asked for but the teacher ran in fp32"
    assert kl.mean() < BF16_MEAN_KL, kl.mean()


def _tiny_teacher(name: str = "efficientnet_lite0", weights: str | None = None) -> Teacher:
    """A small random classifier standing in for the teacher: compiling it takes seconds."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 10),
    )  # fmt: skip
    classes = tuple(f"class{i}" for i in range(10))
    return Teacher(name, net, classes, 36, 32, (120.0,) * 3, (60.0,) * 3, "0" * 64, "random")


def test_compile_on_compiles_the_teacher_and_matches_eager(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--compile on`` runs the teacher through torch.compile, at a fixed padded batch, with the
    same logits as ``--compile off``."""
    videos = tmp_path / "videos"
    videos.mkdir()
    make_index_video(videos / "v.mp4", 7, size=32)  # 7 frames: one full batch of 4, one padded
    monkeypatch.setattr(teacher_setup, "load_teacher", _tiny_teacher)
    compiled_calls: list[type] = []
    real_call = TeacherRunner.run_views

    def spy(self: TeacherRunner, frames: np.ndarray, views: object = None) -> dict[str, np.ndarray]:
        compiled_calls.extend(type(f) for f in self._forward.values())
        return real_call(self, frames, views)  # type: ignore[arg-type]

    monkeypatch.setattr(TeacherRunner, "run_views", spy)
    logits = {}
    for mode in ("off", "on"):
        out = tmp_path / mode
        cfg = ExtractConfig(videos=str(videos), out=str(out), compile=mode, batch_size=4,
                            device="cpu", precision="fp32", workers=1, views=None)  # fmt: skip
        extract_runner.run_extract(cfg)
        (shard,) = ShardSet(out).ok_videos()
        assert read_shard_header(out / shard.shard).provenance["compiled"] is (mode == "on")
        logits[mode] = ShardSet(out).logits("v.mp4")["efficientnet_lite0"]
        names = {t.__name__ for t in compiled_calls}
        assert names == ({"OptimizedModule"} if mode == "on" else {"_TeacherOnFrames"}), names
        compiled_calls.clear()
    assert logits["on"].shape == (7, 10)
    np.testing.assert_allclose(logits["on"], logits["off"], atol=1e-4)
