"""HMDB51 / UCF101 / folder split parsing against the official formats, counts and damage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distinit.eval.manifests import load_manifest, packaged_manifests, parse_manifest
from distinit.eval.splits import load_split
from distinit.pipeline.errors import DatasetError, UnknownNameError
from tests.videogen import make_lavfi_video

# Three visually distinct lavfi sources make a learnable three-class task; the class folders use
# HMDB51 names so the packaged manifest accepts them with --allow-partial.
CLASSES = {"brush_hair": "testsrc", "cartwheel": "smptebars", "catch": "rgbtestsrc"}
# Per class: video index -> tag in split 1 (tag 0 = unused); splits 2 and 3 rotate the roles.
TAGS_SPLIT1 = (1, 1, 1, 1, 2, 2, 0)


def split_tags(split: int) -> list[int]:
    shift = 2 * (split - 1)
    return [TAGS_SPLIT1[(i + shift) % len(TAGS_SPLIT1)] for i in range(len(TAGS_SPLIT1))]


def make_hmdb_layout(root: Path, *, videos: bool = True) -> Path:
    """The HMDB51 layout: ROOT/<class>/<video>.avi and ROOT/splits/<class>_test_split{1,2,3}.txt.

    Videos are 40x32, 10 fps, 1 s (10 frames), with per-video noise; the last video of each class
    has 3 frames, shorter than a clip, to exercise the looping rule.
    """
    splits = root / "splits"
    splits.mkdir(parents=True, exist_ok=True)
    for c, (cls, source) in enumerate(CLASSES.items()):
        (root / cls).mkdir(parents=True, exist_ok=True)
        names = [f"{cls}_clip_{i}_h_nm_np1_fr_med_{i}.avi" for i in range(len(TAGS_SPLIT1))]
        for i, name in enumerate(names):
            if videos:
                seconds = 0.3 if i == len(names) - 1 else 1.0
                make_lavfi_video(
                    root / cls / name,
                    source,
                    seconds=seconds,
                    size="40x32",
                    fps=10,
                    extra=("-vf", f"noise=alls=12:allf=t:all_seed={c * 100 + i}", "-c:v", "mpeg4"),
                )
        for split in (1, 2, 3):
            lines = [f"{n} {t} " for n, t in zip(names, split_tags(split), strict=True)]
            (splits / f"{cls}_test_split{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def write_test_manifest(path: Path) -> Path:
    """A user's manifest for exactly this three-class subset, with its counts."""
    hmdb = json.loads((Path(__file__).parents[1] / "data_manifests" / "hmdb51.json").read_text())
    hmdb.update(
        name="hmdb3",
        classes=list(CLASSES),
        expected={str(s): {"train": 12, "test": 6} for s in (1, 2, 3)},
        expected_per_class={"train": 4, "test": 2},
    )
    path.write_text(json.dumps(hmdb))
    return path


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hmdb_layout(tmp_path_factory.mktemp("hmdb"), videos=False)


def _touch_videos(root: Path) -> None:
    for cls in CLASSES:
        for i in range(len(TAGS_SPLIT1)):
            (root / cls / f"{cls}_clip_{i}_h_nm_np1_fr_med_{i}.avi").touch()


def test_packaged_manifests_are_complete() -> None:
    assert {"hmdb51", "ucf101", "folder"} <= set(packaged_manifests())
    hmdb = load_manifest("hmdb51")
    assert hmdb.classes is not None and len(hmdb.classes) == 51
    assert all(hmdb.expected_for(s) is not None for s in (1, 2, 3))
    assert hmdb.expected_for(1).train == 3570 and hmdb.expected_for(1).test == 1530  # type: ignore[union-attr]
    ucf = load_manifest("ucf101")
    assert ucf.classes is not None and len(ucf.classes) == 101
    assert sum(c.train + c.test for _, c in ucf.expected) == 3 * 13320


def test_unknown_dataset_lists_known() -> None:
    with pytest.raises(UnknownNameError, match="hmdb51"):
        load_manifest("kinetics9000")


def test_bad_manifest_is_rejected() -> None:
    with pytest.raises(DatasetError, match="layout"):
        parse_manifest({"layout": "zip", "splits": [1]}, "x.json")
    with pytest.raises(DatasetError, match="class list"):
        parse_manifest({"layout": "tagged", "splits": [1]}, "x.json")


def test_tagged_official_format(tmp_path: Path) -> None:
    root = make_hmdb_layout(tmp_path, videos=False)
    _touch_videos(root)
    manifest = load_manifest(str(write_test_manifest(tmp_path / "m.json")))
    for split in (1, 2, 3):
        data = load_split(manifest, root, split, splits_dir=root / "splits")
        assert data.classes == list(CLASSES)
        assert (len(data.train), len(data.test)) == (12, 6)
        tags = split_tags(split)
        # Class from the split file's name, role from the tag; tag 0 videos are in neither list.
        for c, cls in enumerate(CLASSES):
            for i, tag in enumerate(tags):
                rel = f"{cls}/{cls}_clip_{i}_h_nm_np1_fr_med_{i}.avi"
                in_train = any(v.rel == rel and v.label == c for v in data.train)
                in_test = any(v.rel == rel and v.label == c for v in data.test)
                assert (in_train, in_test) == (tag == 1, tag == 2)
        assert not data.notes


def test_full_hmdb_manifest_rejects_a_subset_unless_partial(tmp_path: Path) -> None:
    root = make_hmdb_layout(tmp_path, videos=False)
    _touch_videos(root)
    manifest = load_manifest("hmdb51")
    with pytest.raises(DatasetError, match=r"48 of 51 split files missing.*allow-partial"):
        load_split(manifest, root, 1, splits_dir=root / "splits")
    data = load_split(manifest, root, 1, splits_dir=root / "splits", allow_partial=True)
    assert data.classes == list(CLASSES)
    assert any("48 of 51" in n for n in data.notes)
    assert any("3570" in n for n in data.notes)  # the count mismatch is recorded too


def test_missing_video_is_named(tmp_path: Path) -> None:
    root = make_hmdb_layout(tmp_path, videos=False)
    _touch_videos(root)
    gone = root / "catch" / "catch_clip_0_h_nm_np1_fr_med_0.avi"
    gone.unlink()
    manifest = load_manifest(str(write_test_manifest(tmp_path / "m.json")))
    with pytest.raises(DatasetError, match=r"1 listed videos missing .*catch_clip_0") as info:
        load_split(manifest, root, 1, splits_dir=root / "splits")
    assert "\n" not in str(info.value)
    data = load_split(manifest, root, 1, splits_dir=root / "splits", allow_partial=True)
    assert len(data.train) == 11


def test_missing_split_file_and_wrong_counts(tmp_path: Path) -> None:
    root = make_hmdb_layout(tmp_path, videos=False)
    _touch_videos(root)
    manifest = load_manifest(str(write_test_manifest(tmp_path / "m.json")))
    (root / "splits" / "cartwheel_test_split2.txt").unlink()
    with pytest.raises(DatasetError, match=r"split files missing.*cartwheel_test_split2\.txt"):
        load_split(manifest, root, 2, splits_dir=root / "splits")
    # One more train video than the manifest expects.
    path = root / "splits" / "catch_test_split1.txt"
    path.write_text(path.read_text().replace(" 0 ", " 1 "))
    with pytest.raises(
        DatasetError,
        match=r"13 train / 6 test videos, the manifest expects 12 / 6",
    ):
        load_split(manifest, root, 1, splits_dir=root / "splits")


def test_malformed_line_and_unknown_tag(tmp_path: Path) -> None:
    root = make_hmdb_layout(tmp_path, videos=False)
    _touch_videos(root)
    manifest = load_manifest(str(write_test_manifest(tmp_path / "m.json")))
    path = root / "splits" / "catch_test_split1.txt"
    path.write_text(path.read_text() + "extra.avi 7\n")
    with pytest.raises(DatasetError, match=r"catch_test_split1\.txt:8: expected '<video> <tag>'"):
        load_split(manifest, root, 1, splits_dir=root / "splits")


def _ucf_layout(root: Path, label_of_first: int = 1) -> None:
    classes = ["ApplyEyeMakeup", "HandstandPushups"]
    (root / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 HandstandPushups\n")
    train, test = [], []
    for n, cls in enumerate(classes, 1):
        (root / cls).mkdir(parents=True)
        spelled = "HandStandPushups" if cls == "HandstandPushups" else cls  # the real quirk
        for g in range(1, 4):
            rel = f"{cls}/v_{spelled}_g0{g}_c01.avi"
            (root / rel).touch()
            if g == 1:
                test.append(rel)
            else:
                train.append(f"{rel} {label_of_first if n == 1 else n}")
    (root / "trainlist01.txt").write_text("\r\n".join(train) + "\r\n")  # the release uses CRLF
    (root / "testlist01.txt").write_text("\r\n".join(test) + "\r\n")


def test_ucf101_lists_format(tmp_path: Path) -> None:
    _ucf_layout(tmp_path)
    raw = json.loads((Path(__file__).parents[1] / "data_manifests" / "ucf101.json").read_text())
    raw.update(
        classes=["ApplyEyeMakeup", "HandstandPushups"], expected={"1": {"train": 4, "test": 2}}
    )
    data = load_split(parse_manifest(raw, "ucf2.json"), tmp_path, 1)
    assert data.classes == ["ApplyEyeMakeup", "HandstandPushups"]
    assert sorted(v.label for v in data.train) == [0, 0, 1, 1]
    assert [v.label for v in data.test] == [0, 1]
    # Split 2 has no lists: both are named.
    with pytest.raises(
        DatasetError,
        match=r"split 2: split file \S*trainlist02\.txt missing; split file \S*testlist02",
    ):
        load_split(parse_manifest(raw, "ucf2.json"), tmp_path, 2)
    # Its lists present, one listed video absent: that video is named.
    (tmp_path / "trainlist02.txt").write_text((tmp_path / "trainlist01.txt").read_text())
    (tmp_path / "testlist02.txt").write_text("ApplyEyeMakeup/v_gone_g09_c01.avi\r\n")
    with pytest.raises(DatasetError, match=r"1 listed videos missing .*v_gone_g09_c01"):
        load_split(parse_manifest(raw, "ucf2.json"), tmp_path, 2)


def test_ucf101_label_mismatch_is_caught(tmp_path: Path) -> None:
    _ucf_layout(tmp_path, label_of_first=2)
    raw = json.loads((Path(__file__).parents[1] / "data_manifests" / "ucf101.json").read_text())
    raw.update(classes=["ApplyEyeMakeup", "HandstandPushups"], expected={})
    with pytest.raises(DatasetError, match="label 2 does not match class ApplyEyeMakeup"):
        load_split(parse_manifest(raw, "ucf2.json"), tmp_path, 1)


def test_folder_split_is_deterministic_and_differs_per_split(tmp_path: Path) -> None:
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(10):
            (tmp_path / cls / f"{i}.mp4").touch()
    manifest = load_manifest("folder")
    one = load_split(manifest, tmp_path, 1)
    again = load_split(manifest, tmp_path, 1)
    two = load_split(manifest, tmp_path, 2)
    assert [v.rel for v in one.test] == [v.rel for v in again.test]
    assert len(one.test) == 6 and len(one.train) == 14  # 30% of 10 per class
    assert {v.rel for v in one.test} != {v.rel for v in two.test}
    assert not {v.rel for v in one.test} & {v.rel for v in one.train}
