"""A video recorded in two shards (retried after a failure, or extracted again under another rank
split) has one status: its first ok record, else its last failure. The reader, resume,
``--retry-failed``, ``--strict`` and the manifest all see the same one."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from distinit.extract.config import ExtractConfig
from distinit.extract.runner import run_extract
from distinit.pipeline.cli import cli
from distinit.pipeline.shards import (
    MANIFEST_NAME,
    ShardHeader,
    ShardSet,
    ShardWriter,
    VideoRecord,
    read_shard_header,
    video_records,
)
from tests.videogen import make_index_video


def _header(*records: VideoRecord) -> ShardHeader:
    return ShardHeader(Path("x.h5"), list(records), [], {})


def test_first_ok_record_wins_else_the_last_failure() -> None:
    ok = VideoRecord("v.mp4", "ok", row_count=5)
    first, last = (VideoRecord("v.mp4", "failed", error=e) for e in ("first", "last"))
    for order in ([first], [ok]), ([ok], [first]), ([first, ok], [last]):
        assert video_records(_header(*h) for h in order)["v.mp4"] is ok
    assert video_records([_header(first), _header(last)])["v.mp4"] is last


def _extract(videos: Path, out: Path, *flags: str) -> tuple[int, str]:
    argv = ["extract", "--videos", str(videos), "--out", str(out), "--teacher", "none",
            "--store-size", "40x32", "--workers", "1", *flags]  # fmt: skip
    result = CliRunner().invoke(cli, argv)
    return result.exit_code, result.output


def test_resume_retry_and_strict_agree_with_the_reader(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    make_index_video(videos / "a.mp4", 20, size=48)
    out = tmp_path / "out"
    assert _extract(videos, out)[0] == 0
    # A later shard of the same rank that says a.mp4 failed (as an earlier run under another
    # split, or a retry that met a broken copy, would leave it).
    (first,) = out.glob("*.h5")
    header = read_shard_header(first)
    later = first.with_name(first.name.replace("-00000.h5", "-00001.h5"))
    writer = ShardWriter(later, header.teachers, header.provenance, header.store, header.views)
    writer.add_failure("a.mp4", "not a decodable video (invalid data)")
    writer.close()
    reader = ShardSet(out)
    assert reader.records["a.mp4"].status == "ok" and reader.records["a.mp4"].row_count == 20

    code, output = _extract(videos, out, "--strict")
    assert code == 0 and "failed earlier" not in output, output
    code, output = _extract(videos, out, "--retry-failed", "--strict")
    assert code == 0, output
    assert "0 videos done, 0 failed, 1 skipped" in output
    assert len(list(out.glob("*.h5"))) == 2  # nothing extracted a third time
    summary = run_extract(
        ExtractConfig(videos=str(videos), out=str(out), teachers=("none",), store_size=(40, 32))
    )
    assert (summary.skipped, summary.failed_earlier) == (1, 0)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert [(v["id"], v["status"], v["rows"]) for v in manifest["videos"]] == [("a.mp4", "ok", 20)]
