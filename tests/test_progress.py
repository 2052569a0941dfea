"""The shared progress helper: frame-counted ETA, durations, TTY and plain-line output."""

from __future__ import annotations

import io

import pytest

from distinit.pipeline.progress import (
    FrameCount,
    ProgressLine,
    eta_seconds,
    expected_frames,
    format_duration,
)


def test_durations_and_eta() -> None:
    assert format_duration(None) == "--:--"
    assert format_duration(3725.9) == "1:02:05"
    assert eta_seconds(0, 10, 5.0) is None  # no rate yet
    assert eta_seconds(25, 100, 5.0) == pytest.approx(15.0)


def test_expected_frames_follow_the_fps_rule() -> None:
    assert expected_frames(10.0, 25.0, None) == 250
    assert expected_frames(10.0, 25.0, 5.0) == 50
    assert expected_frames(10.0, 25.0, 60.0) == 250  # --fps above native keeps native frames
    assert expected_frames(float("nan"), 25.0, None) is None


def test_frame_eta_is_shown_from_the_start_and_does_not_grow_on_a_long_last_video() -> None:
    # Three videos of 100, 100 and 1000 frames, processed at 100 frames/s, the long one last.
    lengths = {"a": 100, "b": 100, "c": 1000}
    count = FrameCount(len(lengths))
    done, etas = 0, []
    for video, frames in lengths.items():
        count.opened(video, frames)
        for _ in range(frames // 50):
            done += 50
            etas.append(eta_seconds(done, count.total(), done / 100.0))
        count.finished(video, frames)
    assert etas[0] is not None  # before the first video ends
    last_opened = len(etas) - 1000 // 50
    true_left = [(1200 - 50 * (i + 1)) / 100.0 for i in range(last_opened, len(etas))]
    assert etas[last_opened:] == pytest.approx(true_left)  # exact once every video is known
    assert all(b <= a for a, b in zip(etas[last_opened:], etas[last_opened + 1 :], strict=False))


def test_frame_count_uses_actual_frames_once_a_video_ends() -> None:
    count = FrameCount(4)
    assert count.total() is None
    count.opened("a", 300)
    assert count.total() == pytest.approx(1200)  # unopened videos count as the mean
    count.finished("a", 100)  # the container over-stated it, or the video failed part way
    count.opened("b", None)  # no duration in the header: counts as an average video
    assert count.total() == pytest.approx(400)


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_plain_lines_when_not_a_tty_and_in_place_on_one() -> None:
    plain = _Stream(tty=False)
    line = ProgressLine(plain, every=60.0)
    for i in range(5):
        line.update(f"step {i}")
    line.update("step 5", final=True)
    line.close()
    assert plain.getvalue() == "step 0\nstep 5\n"  # rate-limited, final forced, no \r
    term = _Stream(tty=True)
    line = ProgressLine(term)
    line.update("a")
    line.update("b", final=True)
    line.close()
    assert term.getvalue() == "\r\x1b[Ka\r\x1b[Kb\n"


def test_a_quiet_line_says_nothing_until_its_quiet_time_has_passed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from distinit.pipeline import progress

    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    plain = _Stream(tty=False)
    line = ProgressLine(plain, every=0.0, quiet_for=2.0)
    line.update("early")
    clock[0] = 101.9
    line.update("still early")
    clock[0] = 102.1
    line.update("late")
    line.close()
    assert plain.getvalue() == "late\n"


def test_a_line_used_as_a_context_ends_itself_also_when_the_work_fails() -> None:
    term = _Stream(tty=True)
    with pytest.raises(RuntimeError), ProgressLine(term) as line:
        line.update("half way")
        raise RuntimeError("broke")
    assert term.getvalue() == "\r\x1b[Khalf way\n"  # the error starts on a line of its own
