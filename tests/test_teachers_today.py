"""Teachers and students of today: timm teachers, embedding targets, per-kind losses, per-teacher
preprocessing, the teacher's batch size (fixed calls on CPU) and the video-transformer students."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distinit.extract.config import ExtractConfig
from distinit.extract.divergence import cosine_rows, embedding_storage
from distinit.extract.inference import CPU_CALL_FRAMES, TeacherRunner, split_classifier
from distinit.extract.runner import run_extract
from distinit.extract.teachers import load_teacher
from distinit.extract.verification import verify
from distinit.pipeline.errors import ConfigError, WeightsError
from distinit.pipeline.frame_geometry import FrameGeometry
from distinit.pipeline.shards import ShardSet
from distinit.pipeline.timestamp_match import decode_at_times
from distinit.pipeline.video import iter_video
from distinit.train import loop
from distinit.train.config import TrainConfig
from distinit.train.loss import embedding_loss

LITE = "efficientnet_lite0"
LITE_EMB = "efficientnet_lite0:embedding"
TIMM = "timm/resnet18.a1_in1k"
CLIPS = ("bikes.mp4", "carphone_pristine.mp4")


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory, sample_clips: Path) -> Path:
    root = tmp_path_factory.mktemp("today_videos")
    for name in CLIPS:
        shutil.copy(sample_clips / name, root / name)
    return root


@pytest.fixture(scope="module")
def mixed_shards(tmp_path_factory: pytest.TempPathFactory, videos: Path) -> Path:
    """Logits and the pooled 1280-d embedding of EfficientNet-Lite0, one extract run."""
    out = tmp_path_factory.mktemp("today_shards")
    cfg = ExtractConfig(
        videos=str(videos), out=str(out), teachers=(LITE, LITE_EMB), fps=4.0, batch_size=8,
        compile="off", device="cpu", views=None,
    )  # fmt: skip
    summary = run_extract(cfg)
    assert summary.done == len(CLIPS) and summary.frames > 40
    return out


@pytest.fixture(scope="module")
def timm_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False)
    path = tmp_path_factory.mktemp("timm") / "resnet18.safetensors"
    save_file(model.state_dict(), str(path))
    return path


# -- embedding targets ------------------------------------------------------------------------


def test_embedding_targets_are_stored_compactly_and_close_to_fp32(
    mixed_shards: Path, videos: Path
) -> None:
    shards = ShardSet(mixed_shards)
    assert [t.key for t in shards.teachers] == [LITE, LITE_EMB]
    emb = shards.teachers[1]
    assert emb.kind == "embedding" and emb.num_classes == 1280 and emb.class_names == ()
    # One forward pass per teacher gave both: the logits are the classifier of the embedding.
    teacher = load_teacher(LITE)
    runner = TeacherRunner([teacher], torch.device("cpu"), "fp32", kinds={LITE: ("embedding",)})
    video = "bikes.mp4"
    frames = decode_at_times(str(videos / video), runner.geometry, shards.times(video))
    fresh = runner(frames)[LITE_EMB]
    cached = shards.embeddings(video)[LITE_EMB]
    assert cosine_rows(fresh, cached).mean() >= 0.999
    classifier = split_classifier(teacher)[1]  # the runner's split: trunk -> embedding -> logits
    assert classifier is not None
    with torch.no_grad():
        logits = classifier(torch.from_numpy(fresh)).numpy()
    assert np.abs(logits - shards.logits(video)[LITE]).max() < 0.2  # int8 step of the logits
    with h5py.File(next(mixed_shards.glob("*.h5")), "r") as f:
        q = f["embeddings"][LITE]["q"]
        assert q.dtype == np.int8 and q.shape[-1] == 1280  # (views, rows, dims)
        stored = q.dtype.itemsize * q.shape[-1] + f["embeddings"][LITE]["scale"].dtype.itemsize * 2
    assert stored / 1280 <= 1.1
    figures = embedding_storage(fresh)
    assert figures["bytes_per_dim"] == stored / 1280
    assert figures["mean_cosine"] >= 0.999


def test_inspect_verify_reports_embedding_bytes_and_cosine(mixed_shards: Path) -> None:
    report = verify(ShardSet(mixed_shards), n=3)
    assert not report["problems"]
    assert report["embedding_mean_cosine"] >= 0.999
    assert report["embedding_bytes_per_dim"] <= 1.1


def test_a_logits_and_an_embedding_teacher_train_together_and_the_loss_falls(
    mixed_shards: Path, tmp_path: Path
) -> None:
    cfg = TrainConfig(
        targets=str(mixed_shards), out=str(tmp_path / "run"), student="mc3_18", clip_len=4,
        resize=(40, 32), crop=32, batch_size=2, workers=0, max_steps=6, lr=0.05,
        warmup_steps=0, log_every=1, device="cpu", teacher_weights=((LITE_EMB, 2.0),),
    )  # fmt: skip
    loop.run(cfg)
    lines = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "loss_per_teacher" in x]
    assert set(steps[0]["loss_per_teacher"]) == {LITE, LITE_EMB}
    first, last = steps[0]["loss_per_teacher"], steps[-1]["loss_per_teacher"]
    assert last[LITE_EMB] < 0.85 * first[LITE_EMB]  # 2 - 2cos: ~2 for a random projection
    assert steps[0]["loss"] == pytest.approx(first[LITE] + 2.0 * first[LITE_EMB], rel=1e-4)


def test_bench_train_runs_on_shards_with_an_embedding_target(mixed_shards: Path) -> None:
    from click.testing import CliRunner

    from distinit.pipeline.cli import cli

    args = ["bench", "train", "--targets", str(mixed_shards), "--student", "mc3_18",
            "--clip-len", "4", "--resize", "40x32", "--crop", "32", "--batch-size", "1",
            "--workers", "0", "--clips", "2", "--steps", "1"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "steps/s" in result.output


def test_embedding_losses_compare_directions() -> None:
    t = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    same = torch.tensor([[0.6, 0.8], [5.0, 0.0]])  # same directions, other lengths
    other = torch.tensor([[-4.0, 3.0], [0.0, 1.0]])  # orthogonal
    for kind in ("cosine", "smooth_l1"):
        assert embedding_loss(t, same, kind).item() == pytest.approx(0.0, abs=1e-6)
        assert embedding_loss(t, other, kind).item() > 0.1
    assert embedding_loss(t, other, "cosine").item() == pytest.approx(2.0)


# -- timm teachers ----------------------------------------------------------------------------


def test_timm_teacher_loads_by_name_and_file_with_its_config_preprocessing(
    timm_file: Path,
) -> None:
    from safetensors.torch import load_file

    teacher = load_teacher(TIMM, str(timm_file))
    # resnet18.a1_in1k's pretrained config: 224 px, crop_pct 0.95, bicubic, ImageNet mean/std.
    assert (teacher.crop_size, teacher.resize_size, teacher.interpolation) == (224, 235, "bicubic")
    assert teacher.mean == pytest.approx((0.485 * 255, 0.456 * 255, 0.406 * 255))
    assert len(teacher.class_names) == 1000 and teacher.class_names[0]
    saved = load_file(str(timm_file))
    assert all(torch.equal(v, saved[k]) for k, v in teacher.model.state_dict().items())
    assert "timm resnet18.a1_in1k" in teacher.weights_source
    info = TeacherRunner([teacher], torch.device("cpu"), "fp32").infos()[0]
    assert "resize shorter side to 235 (bicubic), centre crop 224x224" in info.preprocessing
    assert "own recipe: resize shorter side to 235 (bicubic), centre crop 224" in info.preprocessing


def test_timm_teacher_from_the_local_hugging_face_cache(
    timm_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    snapshot = tmp_path / "models--timm--resnet18.a1_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    shutil.copy(timm_file, snapshot / "model.safetensors")
    (tmp_path / "models--timm--resnet18.a1_in1k" / "refs").mkdir()
    (tmp_path / "models--timm--resnet18.a1_in1k" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    teacher = load_teacher(TIMM)
    assert str(snapshot / "model.safetensors") in teacher.weights_source


def test_timm_teacher_without_weights_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsError) as missing:
        load_teacher(TIMM, str(tmp_path / "absent.safetensors"))
    assert "absent.safetensors: no such weights file" in str(missing.value)
    with pytest.raises(WeightsError) as uncached:
        load_teacher(TIMM)
    message = str(uncached.value)
    assert "\n" not in message
    assert f"--teacher-weights {TIMM}=PATH" in message and "Hugging Face cache" in message


# -- one decode, each teacher its own preprocessing (recorded and actual) ----------------------


def test_each_teacher_gets_its_own_preprocessing_from_one_decode(
    timm_file: Path, sample_clips: Path
) -> None:
    teachers = [load_teacher(LITE), load_teacher(TIMM, str(timm_file))]
    runner = TeacherRunner(teachers, torch.device("cpu"), "fp32")
    seen: dict[str, torch.Tensor] = {}
    for t in teachers:
        t.model.register_forward_pre_hook(
            lambda m, args, name=t.name: seen.__setitem__(name, args[0].clone())
        )
    video = str(sample_clips / "bikes.mp4")  # 640x272: a wide frame, unlike the crops
    chunk = next(iter(iter_video(video, FrameGeometry(640, 272), chunk_size=3)))
    native = chunk.frames
    decoded = decode_at_times(video, runner.geometry, chunk.times)
    runner(decoded)
    x_native = torch.from_numpy(native).permute(0, 3, 1, 2).float()
    x_decoded = torch.from_numpy(decoded).permute(0, 3, 1, 2).float()
    infos = runner.infos()
    for t, info in zip(teachers, infos, strict=True):
        mean = torch.tensor(t.mean).view(1, 3, 1, 1)
        std = torch.tensor(t.std).view(1, 3, 1, 1)
        # back to 0..255; the frames past ours pad the call to its one shape
        actual = (seen[t.name] * std + mean)[: len(decoded)]
        plan = runner.inputs[t.name]
        side = plan.boxes[0].side
        # Recorded: the steps the shard names, applied by hand, are exactly what the teacher saw.
        assert f"centre crop {side}x{side}" in info.preprocessing
        top = (x_decoded.shape[-1] - side) // 2
        by_record = x_decoded[..., top : top + side, top : top + side]
        if plan.size != side:
            assert f"resize to {plan.size}x{plan.size} ({t.interpolation}" in info.preprocessing
            by_record = F.interpolate(
                by_record, size=(plan.size, plan.size), mode=t.interpolation, antialias=True
            ).clamp(0, 255)
        assert torch.allclose(actual, by_record, atol=1e-3)
        # Actual: close to the teacher's own recipe applied to the native frame ...
        own = _recipe(x_native, t.resize_size, t.crop_size, t.interpolation)
        err = (actual - own).abs().mean().item()
        assert err < 6.0, (t.name, err)
        # ... and far from the old shortcut (the largest teacher's crop resized to fit).
        shortcut = F.interpolate(x_decoded, size=(t.crop_size,) * 2, mode="bilinear")
        if side != x_decoded.shape[-1]:
            assert (shortcut - own).abs().mean().item() > err


def _recipe(x: torch.Tensor, resize: int, crop: int, mode: str) -> torch.Tensor:
    h, w = x.shape[-2:]
    scale = resize / min(h, w)
    size = (round(h * scale), round(w * scale))
    y = F.interpolate(x, size=size, mode=mode, antialias=True).clamp(0, 255)
    top, left = (size[0] - crop) // 2, (size[1] - crop) // 2
    return y[..., top : top + crop, left : left + crop]


# -- teacher batch size: fixed calls on CPU, so the same command writes the same targets ------


def _all_logits(out: Path) -> dict[str, np.ndarray]:
    shards = ShardSet(out)
    try:
        return {r.id: shards.logits(r.id)[LITE] for r in shards.ok_videos()}
    finally:
        shards.close()


def test_targets_do_not_depend_on_the_batch_size_on_cpu(
    videos: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # oneDNN's kernels follow the batch dimension: calls of 3 and 8 frames gave other logits
    # (and other int8 rows) before every call had CPU_CALL_FRAMES frames. Two decode workers
    # also change which frames share a batch.
    caplog.set_level("INFO", logger="distinit.extract.teacher_setup")
    logits = {}
    for batch_size, workers in ((None, 1), (3, 2)):
        out = tmp_path / f"batch{batch_size}"
        run_extract(ExtractConfig(
            videos=str(videos), out=str(out), fps=2.0, compile="off", device="cpu", views=None,
            batch_size=batch_size, workers=workers,
        ))  # fmt: skip
        logits[batch_size] = _all_logits(out)
        provenance = ShardSet(out).provenance
        assert provenance["batch_size_choice"] in caplog.text
        if batch_size is None:
            assert provenance["batch_size"] == CPU_CALL_FRAMES
            assert "fixed on CPU" in provenance["batch_size_choice"]
        else:
            assert provenance["batch_size"] == batch_size
            assert provenance["batch_size_choice"].startswith(f"{batch_size} (--batch-size)")
    assert logits[3].keys() == logits[None].keys()
    for video, x in logits[None].items():
        assert np.array_equal(logits[3][video], x), video


def test_a_teacher_call_has_one_shape_whatever_the_batch(sample_clips: Path) -> None:
    clip = str(sample_clips / "carphone_pristine.mp4")
    frames = next(iter(iter_video(clip, FrameGeometry(224, 224), chunk_size=9))).frames
    runner = TeacherRunner([load_teacher(LITE)], torch.device("cpu"), "fp32")
    seen: list[int] = []
    trunk = runner._eager[LITE].trunk
    handle = trunk.register_forward_pre_hook(lambda _m, args: seen.append(len(args[0])))
    try:
        whole = runner(frames)[LITE]  # two calls, the second padded
        parts = np.concatenate([runner(frames[:5])[LITE], runner(frames[5:])[LITE]])
    finally:
        handle.remove()
    assert seen == [CPU_CALL_FRAMES] * 4
    # Frame 5 is first of its call here, sixth there; frame 8's neighbours are padding or not.
    assert whole.shape == (9, 1000) and np.array_equal(parts, whole)


# -- video-transformer students ---------------------------------------------------------------


def test_swin3d_t_student_trains_a_few_steps_at_8x112x112(
    mixed_shards: Path, tmp_path: Path
) -> None:
    cfg = TrainConfig(
        targets=str(mixed_shards), out=str(tmp_path / "run"), student="swin3d_t", clip_len=8,
        resize=(149, 112), crop=112, batch_size=1, workers=0, max_steps=2, log_every=1,
        device="cpu",
    )  # fmt: skip
    result = loop.run(cfg)
    assert result.last_loss is not None and np.isfinite(result.last_loss)
    assert (tmp_path / "run" / "final.pt").is_file()


@pytest.mark.slow
def test_mvit_v2_s_student_takes_one_step_at_16x224x224(mixed_shards: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(
        targets=str(mixed_shards), out=str(tmp_path / "run"), student="mvit_v2_s", clip_len=16,
        resize=(298, 224), crop=224, batch_size=1, workers=0, max_steps=1, log_every=1,
        device="cpu",
    )  # fmt: skip
    result = loop.run(cfg)
    assert result.last_loss is not None and np.isfinite(result.last_loss)


def test_a_clip_size_a_student_cannot_take_is_refused_in_one_line(
    mixed_shards: Path, tmp_path: Path
) -> None:
    from distinit.eval.config import EvalConfig

    with pytest.raises(ConfigError, match=r"mvit_v2_s takes only 16x224x224 clips"):
        TrainConfig(targets=str(mixed_shards), out=str(tmp_path / "r"), student="mvit_v2_s",
                    clip_len=8, crop=112)  # fmt: skip
    with pytest.raises(ConfigError, match=r"swin3d_t needs --crop >= 32"):
        TrainConfig(targets=str(mixed_shards), out=str(tmp_path / "r"), student="swin3d_t",
                    clip_len=8, resize=(40, 24), crop=24)  # fmt: skip
    with pytest.raises(ConfigError, match=r"mvit_v2_s takes only 16x224x224 clips"):
        EvalConfig(init="scratch", student="mvit_v2_s", clip_len=8, crop=112,
                   dataset="folder", root=tmp_path, out=tmp_path / "e")  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "distinit.pipeline.cli", "train", "--targets", str(mixed_shards),
         "--out", str(tmp_path / "cli"), "--student", "mvit_v2_s", "--device", "cpu"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "mvit_v2_s takes only 16x224x224" in lines[0], proc.stderr


def test_a_teacher_without_a_classifier_gives_only_its_embedding() -> None:
    from torch import nn

    from distinit.extract.inference import decode_geometry
    from distinit.extract.teachers import Teacher

    trunk = nn.Sequential(nn.Conv2d(3, 6, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    teacher = Teacher(
        name="tower", model=trunk, class_names=(), resize_size=72, crop_size=64,
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), weights_sha256="0" * 64,
        weights_source="test",
    )  # fmt: skip
    with pytest.raises(ConfigError, match="tower has no classifier.*--teacher tower:embedding"):
        TeacherRunner([teacher], torch.device("cpu"), "fp32")
    runner = TeacherRunner([teacher], torch.device("cpu"), "fp32", kinds={"tower": ("embedding",)})
    (info,) = runner.infos()
    assert (info.key, info.kind, info.num_classes) == ("tower:embedding", "embedding", 6)
    # A single teacher is decoded at exactly its own recipe.
    assert decode_geometry([teacher]) == FrameGeometry(64, 64, resize_shorter=72)
    out = runner(np.zeros((2, 64, 64, 3), dtype=np.uint8))
    assert list(out) == ["tower:embedding"] and out["tower:embedding"].shape == (2, 6)
