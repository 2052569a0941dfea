"""Eval's source videos: checked and indexed once up front, clips read by seeking to their span."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from distinit.eval import datasets as eval_datasets
from distinit.eval.command import eval_command
from distinit.eval.datasets import ClipProtocol, EvalClips, TrainClips, check_store
from distinit.eval.sources import frame_times
from distinit.eval.splits import VideoItem
from distinit.pipeline import video as video_module
from distinit.pipeline.errors import DatasetError
from distinit.pipeline.frame_geometry import FrameGeometry
from distinit.pipeline.video import iter_video
from tests.eval_support import STUDENT, TINY
from tests.videogen import make_index_video, make_lavfi_video, read_index

FPS = 10
CLIP = 8  # frames per clip, 1 apart
K = 3  # test clips per video


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten minutes at 10 fps, frame i showing i (6000 frames, keyframe every 12)."""
    return make_index_video(tmp_path_factory.mktemp("long") / "long.mp4", 600 * FPS, fps=FPS)


class _Counting(video_module.VideoReader):
    """The decoder, counting every frame that comes out of ffmpeg."""

    decoded: list[int] = []

    def close(self) -> None:
        super().close()
        _Counting.decoded.append(self.frames_decoded)


def _decoded_by(monkeypatch: pytest.MonkeyPatch, read: Any) -> tuple[Any, int]:
    _Counting.decoded = []
    with monkeypatch.context() as patch:
        patch.setattr(video_module, "VideoReader", _Counting)
        value = read()
    return value, sum(_Counting.decoded)


def test_a_clip_of_a_long_video_decodes_its_span_not_the_video(
    long_video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    short = make_index_video(tmp_path / "short.mp4", 30 * FPS, fps=FPS)
    protocol = ClipProtocol(CLIP, K, (64, 64), 64, "rgb")
    # Each clip is one seek: a second of margin before it, the clip, then up to one chunk of 8
    # frames of the decoder's read-ahead past it (it stops two frames after the last one wanted).
    per_clip = FPS + CLIP + 8
    for path in (short, long_video):
        count = len(frame_times(path))  # the up-front index, once per video and process
        item = VideoItem(rel=path.name, path=path, label=0)
        (clips, _, _), decoded = _decoded_by(
            monkeypatch, lambda i=item: EvalClips([i], protocol)[0]
        )
        assert decoded <= K * per_clip, (path.name, count, decoded)
        # The frames a whole decode gives those rows: each frame shows its own index.
        starts = [[read_index(clip[0].numpy())] for clip in clips]
        expected = np.linspace(0, count - CLIP, K).round().astype(int)
        assert [s[0] for s in starts] == list(expected), (path.name, starts)
        for clip, start in zip(clips, expected, strict=True):
            assert [read_index(f) for f in clip.numpy()] == list(range(start, start + CLIP))
        (clip, _), decoded = _decoded_by(
            monkeypatch, lambda i=item: TrainClips([i], protocol, seed=5)[0]
        )
        assert decoded <= per_clip, (path.name, decoded)
    assert count == 6000


def test_clips_are_the_frames_of_a_whole_decode(tmp_path: Path) -> None:
    # A real-looking source (moving test pattern, B-frames): compare pixels, not indices.
    path = make_lavfi_video(tmp_path / "t.mp4", seconds=40, size="48x32", fps=FPS)
    whole = np.concatenate([c.frames for c in iter_video(path, FrameGeometry(40, 32))])
    item = VideoItem(rel="t.mp4", path=path, label=0)
    protocol = ClipProtocol(CLIP, K, (40, 32), 32, "rgb")
    clips, _, _ = EvalClips([item], protocol)[0]  # (K, T, 32, 32, 3), centre crop x 4..36
    starts = np.linspace(0, len(whole) - CLIP, K).round().astype(int)
    for clip, start in zip(clips.numpy(), starts, strict=True):
        np.testing.assert_array_equal(clip, whole[start : start + CLIP, :, 4:36])


def _folder_dataset(root: Path) -> Path:
    for cls in ("alpha", "beta"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            make_lavfi_video(root / cls / f"v{i}.mp4", seconds=0.8, size="40x32", fps=FPS)
    (root / "alpha" / "zz_notes.mp4").write_text("not a video\n")
    (root / "beta" / "zz_empty.mp4").write_bytes(b"")
    return root


def test_folder_eval_names_every_undecodable_video_at_once(tmp_path: Path) -> None:
    root = _folder_dataset(tmp_path / "videos")
    args = ["--dataset", "folder", "--root", str(root), "--mode", "linear", "--init", "scratch"]
    args += ["--student", STUDENT, *TINY]
    refused = CliRunner().invoke(eval_command, [*args, "--out", str(tmp_path / "refused")])
    assert isinstance(refused.exception, DatasetError), refused.output
    message = str(refused.exception)
    assert "2 videos do not decode" in message and "\n" not in message
    assert "alpha/zz_notes.mp4 (not a video file" in message
    assert "beta/zz_empty.mp4 (empty file" in message and "--allow-partial" in message
    assert not (tmp_path / "refused").exists()
    out = tmp_path / "partial"
    done = CliRunner().invoke(eval_command, [*args, "--out", str(out), "--allow-partial"])
    assert done.exit_code == 0, done.output + repr(done.exception)
    results = json.loads((out / "results.json").read_text())
    notes = " ".join(results["partial_notes"])
    assert "zz_notes.mp4" in notes and "zz_empty.mp4" in notes
    counted = results["per_split"][0]["num_train_videos"] + results["num_test_videos"]
    assert counted == 8  # the good videos, all of them


def test_store_check_lists_the_stored_videos_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    class Record:
        def __init__(self, rel: str) -> None:
            self.id, self.status = rel, "ok"

    class Store:
        size = (40, 32)

    class Shards:
        def __init__(self, directory: Path) -> None:
            self.store, self.provenance = Store(), {}

        def ok_videos(self) -> list[Record]:
            calls.append(1)
            return [Record(f"c/{i}.mp4") for i in range(200)]

    monkeypatch.setattr(eval_datasets, "ShardSet", Shards)
    items = [VideoItem(f"c/{i}.mp4", Path(f"c/{i}.mp4"), 0) for i in range(200)]
    check_store(Path("store"), (40, 32), items)
    assert len(calls) == 1
