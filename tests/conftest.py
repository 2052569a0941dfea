from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest
import torch

from tests.test_train_support import index_dataset
from tests.videogen import make_index_video, sample_clips_dir

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _restore_thread_counts() -> Iterator[None]:
    """A test that changes torch's or OpenCV's thread count must not change the next test's."""
    torch_threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    yield
    if torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)
    if cv2.getNumThreads() != cv2_threads:
        cv2.setNumThreads(cv2_threads)


@pytest.fixture(scope="session")
def sample_clips() -> Path:
    return sample_clips_dir()


@pytest.fixture(scope="session")
def index_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 60-frame, 25 fps H.264 MP4 whose frame i shows i in binary."""
    return make_index_video(tmp_path_factory.mktemp("idx") / "index.mp4", 60)


@pytest.fixture(scope="session")
def index_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(videos root, shard directory) of tests.test_train_support.index_dataset, built once per
    session; tests only read them."""
    return index_dataset(tmp_path_factory.mktemp("index_data"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
