"""Flow students in stage two: the flow clips the dataset hands the student (shape, range, known
motion, flips), the input routing, the config, and a tiny `distinit train --modality flow`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from distinit.pipeline.clip_rules import clip_input, input_channels
from distinit.pipeline.errors import CheckpointError, ConfigError
from distinit.pipeline.flow import FLOW_CHANNELS, FLOW_CLIP, clip_to_flow
from distinit.pipeline.frame_source import open_frame_source
from distinit.pipeline.shards import ShardSet
from distinit.train import loop
from distinit.train.checkpoint import load_final
from distinit.train.clips import ClipDataset, ClipSpec, prepare_workers
from distinit.train.command import train
from distinit.train.config import TrainConfig
from distinit.train.flow_cost import moving_texture
from distinit.train.students import Student, first_conv
from tests.test_flow import assert_matches_velocity
from tests.test_train_support import OBJECTS_CLASSES, SCENES_CLASSES, write_shards
from tests.videogen import generator_ffmpeg

VELOCITY = (2, -1)  # px per frame: rightwards and up
SIZE = 96  # the generated video's side, = the resize, so pixels per frame are the video's
CROP = 64


def _encode(frames: np.ndarray, path: Path) -> Path:
    """H.264 / yuv420p: the dataset decodes lossy frames, as it will on real videos."""
    t_len, height, width = frames.shape[:3]
    cmd = [
        generator_ffmpeg(), "-nostdin", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", "25",
        "-i", "-", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18", str(path),
    ]  # fmt: skip
    subprocess.run(cmd, input=frames.tobytes(), check=True)
    return path


def _motion_px(flow: np.ndarray) -> np.ndarray:
    """Median (dx, dy) in pixels of a (T, H, W, 2) flow clip; the median ignores the strip
    where texture enters the frame (no true match there)."""
    return np.median(flow.reshape(-1, 2), axis=0) * FLOW_CLIP


@pytest.fixture(scope="module")
def moving_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One 16-frame video of a texture translating by VELOCITY; returns (videos, shard_dir)."""
    root = tmp_path_factory.mktemp("train_flow")
    videos = root / "videos"
    videos.mkdir()
    _encode(moving_texture(16, (SIZE, SIZE), VELOCITY), videos / "moving.mp4")
    return videos, write_shards(root / "shards", videos, ["moving.mp4"], store=(SIZE, SIZE))


def _spec(modality: str, stride: int) -> ClipSpec:
    return ClipSpec(
        clip_len=4,
        frame_stride=stride,
        resize=(SIZE, SIZE),
        crop=CROP,
        temperature=1.0,
        target_frames="mean",
        modality=modality,
    )


@pytest.mark.parametrize("stride", [1, 2])
def test_dataset_flow_clips_show_the_known_motion_with_rgb_targets(
    moving_video: tuple[Path, Path], stride: int
) -> None:
    videos, shard_dir = moving_video
    shards = ShardSet(shard_dir)
    frames = open_frame_source(shards, (SIZE, SIZE), prefer="store")
    flow_ds = ClipDataset(shards, frames, _spec("flow", stride), seed=0, global_batch=1)
    rgb_ds = ClipDataset(shards, frames, _spec("rgb", stride), seed=0, global_batch=1)
    flips = set()
    for index in range(6):
        item, rgb_item = flow_ds[index], rgb_ds[index]
        clip = item["clip"].numpy()
        assert clip.shape == (4, CROP, CROP, FLOW_CHANNELS) and clip.dtype == np.float32
        assert np.abs(clip).max() <= 1.0
        assert rgb_item["clip"].shape == (4, CROP, CROP, 3)
        # Field t spans clip frames t -> t+1, i.e. `stride` rows; a flip mirrors the motion.
        flip = flow_ds.plan(index).flip
        flips.add(flip)
        vx, vy = VELOCITY[0] * stride, VELOCITY[1] * stride
        assert_matches_velocity(_motion_px(clip), (-vx if flip else vx, vy))
        # The targets are the RGB teacher's, of the same frames, whatever the student sees.
        assert torch.equal(item["rows"], rgb_item["rows"])
        for name, target in item["targets"].items():
            assert torch.equal(target, rgb_item["targets"][name])
    assert flips == {False, True}  # both orientations were checked


def test_flip_negates_dx_and_matches_the_flow_of_mirrored_frames() -> None:
    frames = moving_texture(6, (SIZE, SIZE), VELOCITY)
    x, y = 10, 20
    plain = clip_input(frames, "flow", x, y, CROP, flip=False)
    flipped = clip_input(frames, "flow", x, y, CROP, flip=True)
    # Exactly the mirrored field with dx negated, dy kept.
    np.testing.assert_array_equal(flipped[..., 0], -plain[:, :, ::-1, 0])
    np.testing.assert_array_equal(flipped[..., 1], plain[:, :, ::-1, 1])
    assert_matches_velocity(_motion_px(plain), VELOCITY)
    assert_matches_velocity(_motion_px(flipped), (-VELOCITY[0], VELOCITY[1]))
    # And it is what DIS measures on the mirrored video itself (same crop, mirrored position).
    mirrored = clip_to_flow(np.ascontiguousarray(frames[:, :, ::-1]))
    mirrored = mirrored[:, y : y + CROP, SIZE - x - CROP : SIZE - x]
    np.testing.assert_allclose(_motion_px(flipped), _motion_px(mirrored), atol=0.1)
    # RGB flips are a plain mirror.
    rgb = clip_input(frames, "rgb", x, y, CROP, flip=True)
    assert rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, frames[:, y : y + CROP, x : x + CROP][:, :, ::-1])


def test_student_input_routing() -> None:
    flow_student = Student("mc3_18", {"objects": 3}, in_channels=input_channels("flow"))
    flow = torch.rand(2, 4, 16, 16, FLOW_CHANNELS) * 2 - 1  # (B, T, H, W, 2)
    x = flow_student.normalize(flow)
    assert x.shape == (2, FLOW_CHANNELS, 4, 16, 16)
    torch.testing.assert_close(x, flow.permute(0, 4, 1, 2, 3))  # no RGB statistics applied
    rgb = torch.zeros(2, 4, 16, 16, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="takes"):
        flow_student.normalize(rgb)
    with pytest.raises(ValueError, match="must be float"):
        flow_student.normalize(flow.to(torch.uint8))
    rgb_student = Student("mc3_18", {"objects": 3})
    assert rgb_student.normalize(rgb).shape == (2, 3, 4, 16, 16)
    with pytest.raises(ValueError, match="takes"):
        rgb_student.normalize(flow)
    with pytest.raises(ValueError, match="must be uint8"):
        rgb_student.normalize(rgb.float())
    with pytest.raises(ValueError, match="modality"):
        input_channels("depth")


def test_config_modality() -> None:
    with pytest.raises(ConfigError, match="--modality must be one of"):
        TrainConfig(targets="S", out="R", modality="depth")
    with pytest.raises(ConfigError, match="flow needs --clip-len >= 2"):
        TrainConfig(targets="S", out="R", modality="flow", clip_len=1)
    rgb = TrainConfig(targets="S", out="R")
    flow = TrainConfig(targets="S", out="R", modality="flow")
    assert TrainConfig.from_json(flow.to_json()) == flow
    assert flow.resume_mismatches(rgb.to_json()) == ["modality"]
    assert rgb.resume_mismatches(rgb.to_json()) == []


def test_cli_flow_run_writes_a_flow_checkpoint_and_refuses_an_rgb_resume(
    tmp_path: Path, index_data: tuple[Path, Path]
) -> None:
    torch.set_num_threads(1)
    _, shards = index_data
    out = tmp_path / "run"
    args = [
        "--targets", str(shards), "--out", str(out), "--modality", "flow", "--student", "mc3_18",
        "--clip-len", "4", "--frame-stride", "2", "--resize", "40x32", "--crop", "32",
        "--batch-size", "2", "--max-steps", "2", "--workers", "0", "--device", "cpu",
    ]  # fmt: skip
    result = CliRunner().invoke(train, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    ckpt = load_final(out / "final.pt")
    assert ckpt.modality == "flow" and ckpt.in_channels == FLOW_CHANNELS
    assert ckpt.config["modality"] == "flow"
    assert ckpt.recipe is not None and ckpt.recipe.modality == "flow"
    assert ckpt.recipe.mean is None and ckpt.recipe.std is None  # no RGB statistics apply
    net = ckpt.build_student().eval()
    assert first_conv(net.backbone)[2].in_channels == FLOW_CHANNELS
    with torch.no_grad():
        y = net(net.normalize(torch.zeros(1, 4, 32, 32, FLOW_CHANNELS)))
    assert y["objects"].shape == (1, OBJECTS_CLASSES)
    assert y["scenes"].shape == (1, SCENES_CLASSES)
    # The run's last.pt records the modality: resuming it as RGB is refused, not mixed in.
    rgb = TrainConfig(
        targets=str(shards), out=str(out), student="mc3_18", clip_len=4, frame_stride=2,
        resize=(40, 32), crop=32, batch_size=2, max_steps=2, workers=0, device="cpu",
    )  # fmt: skip
    with pytest.raises(CheckpointError, match="modality: 'flow' -> 'rgb'"):
        loop.run(rgb)


_FORKED_WORKER_RUN = """
import sys
import cv2
from distinit.train import loop
from distinit.train.config import TrainConfig
from distinit.pipeline.flow import clip_to_flow
from distinit.train.flow_cost import moving_texture

cv2.setNumThreads(2)  # the parent has used OpenCV's thread pool before the workers fork
clip_to_flow(moving_texture(4, (64, 64), (2, -1)))
cfg = TrainConfig(
    targets=sys.argv[1], out=sys.argv[2], modality="flow", student="mc3_18", clip_len=4,
    resize=(40, 32), crop=32, batch_size=1, workers=1, max_steps=1, device="cpu",
)
loop.run(cfg)
print("finished")
"""


def test_flow_workers_do_not_hang_after_the_parent_used_opencv_threads(
    tmp_path: Path, index_data: tuple[Path, Path]
) -> None:
    # OpenCV's thread pool does not survive fork: a worker resizing it hangs for good. In a
    # subprocess with a timeout, so a regression fails here instead of hanging the suite.
    _, shards = index_data
    argv = [sys.executable, "-c", _FORKED_WORKER_RUN, str(shards), str(tmp_path / "run")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("a flow DataLoader worker hung (OpenCV threads set in a forked worker?)")
    assert proc.returncode == 0 and "finished" in proc.stdout, proc.stderr[-2000:]


def test_prepare_workers_gives_forked_workers_one_opencv_thread() -> None:
    previous = cv2.getNumThreads()
    try:
        cv2.setNumThreads(2)
        prepare_workers(0)  # no workers: the main process computes flow, threads untouched
        assert cv2.getNumThreads() == 2
        prepare_workers(2)
        assert cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(previous)
