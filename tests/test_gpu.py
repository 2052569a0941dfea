"""Checks that need a CUDA device; skipped elsewhere (see conftest)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from distinit.extract.divergence import kl_divergence
from distinit.extract.inference import TeacherRunner, resolve_precision
from distinit.extract.teachers import load_teacher
from distinit.pipeline.video import iter_video
from tests.test_teacher_numerics import BF16_MEAN_KL, real_frames

pytestmark = pytest.mark.gpu


def _frames(sample_clips: Path, runner: TeacherRunner, n: int = 64) -> np.ndarray:
    chunks = iter_video(sample_clips / "bikes.mp4", runner.geometry, chunk_size=n)
    return next(iter(chunks)).frames


def test_cuda_teacher_matches_cpu(sample_clips: Path) -> None:
    cpu = TeacherRunner([load_teacher("efficientnet_lite0")], torch.device("cpu"), "fp32")
    gpu = TeacherRunner([load_teacher("efficientnet_lite0")], torch.device("cuda"), "fp32")
    frames = _frames(sample_clips, cpu)
    kl = kl_divergence(cpu(frames)["efficientnet_lite0"], gpu(frames)["efficientnet_lite0"])
    assert kl.max() < 1e-3


def test_reduced_precision_on_cuda_stays_close(sample_clips: Path) -> None:
    # The frames and bound of the CPU bf16 test (the README's figure with 2x room).
    precision = resolve_precision("auto", torch.device("cuda"))
    assert precision in ("bf16", "fp16")
    fp32 = TeacherRunner([load_teacher("efficientnet_lite0")], torch.device("cuda"), "fp32")
    low = TeacherRunner([load_teacher("efficientnet_lite0")], torch.device("cuda"), precision)
    frames = real_frames(sample_clips, fp32.geometry)
    kl = kl_divergence(fp32(frames)["efficientnet_lite0"], low(frames)["efficientnet_lite0"])
    assert 1e-6 < kl.mean() < BF16_MEAN_KL, kl.mean()


def test_amp_training_step_on_cuda() -> None:
    from distinit.train.students import Student

    net = Student("r2plus1d_18", {"t": 10}).cuda()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cuda")
    clips = torch.randint(0, 255, (2, 8, 112, 112, 3), dtype=torch.uint8, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        loss = net(net.normalize(clips))["t"].logsumexp(1).mean()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert torch.isfinite(loss)


def test_cuda_without_index_is_the_last_local_ranks_real_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The rule itself, with four simulated GPUs, is in test_device.py; here the device it names
    # must be a real one (the last GPU, so ignoring LOCAL_RANK fails wherever there are two).
    from distinit.pipeline.device import resolve_device

    last = torch.cuda.device_count() - 1
    monkeypatch.setenv("LOCAL_RANK", str(last))
    device = resolve_device("cuda")
    assert device == torch.device("cuda", last)
    assert torch.ones(2, device=device).sum().item() == 2


def test_cuda_batch_calibration_takes_the_largest_batch_that_still_pays(
    sample_clips: Path,
) -> None:
    from distinit.extract.inference import CUDA_BATCH_SIZES, calibrate_batch_size

    runner = TeacherRunner([load_teacher("efficientnet_lite0")], torch.device("cuda"), "fp32")
    calibration = calibrate_batch_size(runner, _frames(sample_clips, runner))
    assert calibration.batch_size in CUDA_BATCH_SIZES
    best = max(calibration.rates.values())
    assert calibration.rates[calibration.batch_size] >= best / 1.05
    smaller = [b for b in calibration.rates if b < calibration.batch_size]
    assert all(calibration.rates[b] < best / 1.05 for b in smaller)
