"""Bad clips: a clip whose video cannot be decoded is replaced, counted, and tolerated up to a
bound.

Under ``--frames source`` a clip is decoded from its source video, which may have been damaged
or truncated since extraction. One such clip is no reason to lose a long run, but many are a
sign of a broken copy, not of bad luck: :class:`TolerantClips` replaces a clip it cannot decode
with the clip at the same position of the next step (a batch keeps its size, so every rank keeps
its share of the step, and the replacement is the same on every run) and says which failed;
:class:`BadClipCount` counts them over the whole job and stops it, in one line, past the bound.
"""

from __future__ import annotations

import logging
from typing import Any

from torch.utils.data import Dataset

from distinit.pipeline.errors import TooManyBadClipsError, VideoDecodeError, one_line
from distinit.train.clips import ClipDataset

log = logging.getLogger(__name__)

BAD_KEY = "bad"  # a batch entry: per clip, the failures it replaced ("\n"-joined; "" for none)
REPLACEMENTS = 4  # clips tried in place of a bad one before its error stops the run


class TolerantClips(Dataset[dict[str, Any]]):
    """``clips[index]``, or when that clip's video does not decode, the clip at the same
    position of the next step (up to :data:`REPLACEMENTS` of them), with the failures listed
    under :data:`BAD_KEY`."""

    def __init__(self, clips: ClipDataset) -> None:
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, Any]:
        failed: list[str] = []
        for k in range(REPLACEMENTS + 1):
            try:
                item = self.clips[index + k * self.clips.global_batch]
            except VideoDecodeError as exc:
                if k == REPLACEMENTS:
                    raise
                failed.append(one_line(exc))
                continue
            item[BAD_KEY] = "\n".join(failed)
            return item
        raise AssertionError("unreachable")  # the last attempt returns or raises


def failures(batch: dict[str, Any]) -> list[str]:
    """The bad clips a collated batch replaced, one message each."""
    return [m for entry in batch.get(BAD_KEY, []) for m in entry.split("\n") if m]


class BadClipCount:
    """Bad clips of the whole job so far, against the bound ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0

    def add(self, job_total_this_step: int, step: int) -> TooManyBadClipsError | None:
        """Count this step's bad clips (summed over ranks); the error to stop with past the
        bound, else None."""
        self.total += job_total_this_step
        if job_total_this_step:
            log.warning(
                "step %d: %d bad clip(s) replaced (%d so far, at most %d tolerated)",
                step,
                job_total_this_step,
                self.total,
                self.limit,
            )
        if self.total > self.limit:
            return TooManyBadClipsError(
                f"{self.total} clips could not be decoded by step {step}, more than "
                f"--max-bad-clips {self.limit}; check the source videos (the log names each), "
                "or raise the bound"
            )
        return None
