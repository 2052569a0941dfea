from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.videogen import make_index_video, sample_clips_dir

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def sample_clips() -> Path:
    return sample_clips_dir()


@pytest.fixture(scope="session")
def index_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 60-frame, 25 fps H.264 MP4 whose frame i shows i in binary."""
    return make_index_video(tmp_path_factory.mktemp("idx") / "index.mp4", 60)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
