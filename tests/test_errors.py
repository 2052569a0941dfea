"""Domain errors cross processes intact, and one stop-signal rule holds for every command."""

from __future__ import annotations

import importlib
import os
import pickle
import pkgutil
import signal

import pytest
from torch.utils.data import DataLoader, Dataset

import distinit
from distinit.pipeline import stopping
from distinit.pipeline.errors import (
    DistinitError,
    Interrupted,
    UnknownNameError,
    VideoDecodeError,
    one_line,
)


def _every_domain_error() -> list[type[DistinitError]]:
    for module in pkgutil.walk_packages(distinit.__path__, "distinit."):
        if module.name.endswith("__main__"):
            continue
        importlib.import_module(module.name)
    found, todo = [], [DistinitError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return found


def test_every_domain_error_is_built_from_its_message_alone_as_torch_rebuilds_it() -> None:
    errors = _every_domain_error()
    assert VideoDecodeError in errors and len(errors) > 10
    for cls in errors:
        err = cls("Caught it in DataLoader worker process 0.")
        assert str(err) == "Caught it in DataLoader worker process 0.", cls


@pytest.mark.parametrize(
    "err",
    [
        VideoDecodeError("a/v.mp4", "moov atom not found"),
        UnknownNameError("student", "r3d", ["r3d_18", "mc3_18"]),
        Interrupted("SIGTERM at step 3", signal.SIGTERM),
    ],
)
def test_structured_errors_pickle_with_their_message_and_attributes(err: DistinitError) -> None:
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and str(back) == str(err) and vars(back) == vars(err)


class _BadVideo(Dataset[int]):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> int:
        raise VideoDecodeError("a/v.mp4", "moov atom not found")


def test_an_error_in_a_loader_worker_reaches_the_main_process_as_itself() -> None:
    with pytest.raises(VideoDecodeError) as caught:
        next(iter(DataLoader(_BadVideo(), num_workers=1)))
    assert one_line(caught.value) == "a/v.mp4: moov atom not found"


def test_the_first_stop_signal_asks_the_second_stops_at_once() -> None:
    with stopping.StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.is_set() and signals.received == signal.SIGTERM
        with pytest.raises(stopping.StopNow) as now:
            os.kill(os.getpid(), signal.SIGINT)
        assert now.value.signum == signal.SIGINT
    assert stopping.received_signal() == signal.SIGTERM
    assert [stopping.exit_code(s) for s in (signal.SIGINT, signal.SIGTERM)] == [130, 143]
