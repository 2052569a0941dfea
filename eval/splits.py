"""Split files -> labelled train/test video lists, with every count and path checked.

Known loaders silently mislabel or return partial data; this one fails loudly. Every problem found
(missing split file, missing video, count that does not match the manifest) is collected and
reported in one line. With ``allow_partial`` the problems become notes that travel into
``results.json`` and evaluation goes on with what is there (the classes whose split files exist,
the videos that exist) — for a user who holds a subset of a dataset.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from distinit.eval.manifests import Manifest, SplitCounts
from distinit.pipeline.errors import DatasetError
from distinit.pipeline.paths import check_relative
from distinit.pipeline.video_files import VIDEO_EXTENSIONS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoItem:
    rel: str  # path relative to the root: the video's id (stems collide across classes)
    path: Path
    label: int


@dataclass
class SplitData:
    dataset: str
    split: int
    classes: list[str]
    train: list[VideoItem]
    test: list[VideoItem]
    notes: list[str] = field(default_factory=list)  # accepted problems (allow_partial)


# Where split files are read from, said wherever one is missing (before --allow-partial is
# suggested): a user who unpacked them beside the videos' folder needs --splits, not a subset.
SPLITS_HINT = "split files are looked for in --splits DIR (default: --root)"


class _Problems:
    """Collects problems; raises them as one line unless partial data is allowed."""

    def __init__(self, where: str, allow_partial: bool) -> None:
        self.where, self.allow_partial = where, allow_partial
        self.items: list[str] = []

    def add(self, text: str) -> None:
        self.items.append(text)

    def settle(self) -> list[str]:
        if self.items and not self.allow_partial:
            raise partial_refusal(self.where, self.items)
        for item in self.items:
            log.warning("%s: accepted (--allow-partial): %s", self.where, item)
        return [f"{self.where}: {item}" for item in self.items]


def partial_refusal(where: str, problems: list[str]) -> DatasetError:
    """The one-line refusal of a dataset with ``problems``, and what ``--allow-partial`` does."""
    return DatasetError(
        f"{where}: " + "; ".join(problems) + " (pass --allow-partial to evaluate on the subset "
        "that is present, recorded in results.json)"
    )


def describe_undecodable(failed: dict[str, str]) -> str:
    """``N videos do not decode: a (reason); b (reason)``: every one of them, in one line."""
    listed = "; ".join(f"{rel} ({reason})" for rel, reason in failed.items())
    verb = "video does" if len(failed) == 1 else "videos do"
    return f"{len(failed)} {verb} not decode: {listed}"


def _examples(names: list[str], n: int = 3) -> str:
    shown = ", ".join(names[:n])
    return shown + (f", ... ({len(names)} in all)" if len(names) > n else "")


def load_split(
    manifest: Manifest,
    root: Path,
    split: int,
    *,
    splits_dir: Path | None = None,
    allow_partial: bool = False,
    undecodable: dict[str, str] | None = None,
) -> SplitData:
    """The train and test videos of one split, labelled, checked against the manifest.

    ``undecodable`` (``{rel: reason}``, from ``eval/sources.py``) are videos present that do not
    decode: they are left out as missing ones are, and named with their reasons.
    """
    if split not in manifest.splits:
        raise DatasetError(f"{manifest.name} has splits {list(manifest.splits)}, not {split}")
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root is not a directory")
    split_root = splits_dir if splits_dir is not None else root
    if not split_root.is_dir():
        raise DatasetError(f"{split_root}: split directory is not a directory")
    problems = _Problems(f"{manifest.name} split {split}", allow_partial)
    if manifest.layout == "tagged":
        classes, train, test = _tagged(manifest, root, split_root, split, problems)
    elif manifest.layout == "lists":
        classes, train, test = _lists(manifest, root, split_root, split, problems)
    else:
        classes, train, test = _folder(manifest, root, splits_dir, split, problems)
    train, test = _drop_missing(train, root, problems), _drop_missing(test, root, problems)
    if undecodable:
        train, test = _drop_undecodable(train, test, undecodable, problems)
    _check_counts(manifest, split, classes, train, test, problems)
    notes = problems.settle()
    data = _labelled(manifest.name, root, split, classes, train, test, notes)
    log.info(
        "%s split %d: %d classes, %d train / %d test videos",
        manifest.name,
        split,
        len(data.classes),
        len(data.train),
        len(data.test),
    )
    return data


# (class, rel) pairs before labels are assigned; labels come last because partial data may drop
# whole classes.
_Pairs = list[tuple[str, str]]


def _pattern_regex(pattern: str, split: int) -> re.Pattern[str]:
    parts = re.split(r"(\{class\}|\{split\})", pattern)
    out = []
    for part in parts:
        if part == "{class}":
            out.append(r"(?P<cls>.+)")
        elif part == "{split}":
            out.append(re.escape(str(split)))
        else:
            out.append(re.escape(part))
    return re.compile("^" + "".join(out) + "$")


def _tagged(
    manifest: Manifest, root: Path, split_root: Path, split: int, problems: _Problems
) -> tuple[list[str], _Pairs, _Pairs]:
    assert manifest.split_file is not None and manifest.classes is not None
    regex = _pattern_regex(manifest.split_file, split)
    # The class is read from each split file's name, as in the official HMDB51 release.
    found: dict[str, Path] = {}
    for path in sorted(split_root.iterdir()):
        m = regex.match(path.name)
        if m and path.is_file():
            found[m.group("cls")] = path
    unknown = sorted(set(found) - set(manifest.classes))
    if unknown:
        raise DatasetError(
            f"{manifest.name} split {split}: split files for classes not in the manifest "
            f"({manifest.source}): {_examples(unknown)}"
        )
    missing = [c for c in manifest.classes if c not in found]
    if missing:
        example = manifest.split_file.format(**{"class": missing[0], "split": split})
        problems.add(
            f"{len(missing)} of {len(manifest.classes)} split files missing in {split_root} "
            f"(e.g. {example}; classes {_examples(missing)}); {SPLITS_HINT}"
        )
    classes = [c for c in manifest.classes if c in found]
    roles = manifest.tag_roles()
    train: _Pairs = []
    test: _Pairs = []
    for cls in classes:
        for lineno, line in enumerate(found[cls].read_text(encoding="utf-8").splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or fields[1] not in roles:
                raise DatasetError(
                    f"{found[cls]}:{lineno}: expected '<video> <tag>' with tag in "
                    f"{sorted(roles)}, got {line.strip()!r}"
                )
            rel = manifest.video_path.format(**{"class": cls, "video": fields[0]})
            check_relative(rel, f"{found[cls]}:{lineno}: video", DatasetError)
            role = roles[fields[1]]
            if role == "train":
                train.append((cls, rel))
            elif role == "test":
                test.append((cls, rel))
    return classes, *_dedup(train, test, split)


def _class_index(manifest: Manifest, split_root: Path) -> list[str]:
    assert manifest.class_index is not None and manifest.classes is not None
    path = split_root / manifest.class_index
    if not path.is_file():
        raise DatasetError(f"{path}: class index file missing; {SPLITS_HINT}")
    by_number: dict[int, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[0].isdigit():
            raise DatasetError(f"{path}:{lineno}: expected '<number> <class>', got {line!r}")
        by_number[int(fields[0])] = fields[1]
    classes = [by_number[n] for n in sorted(by_number)]
    if sorted(classes) != sorted(manifest.classes):
        extra = sorted(set(classes) - set(manifest.classes))
        lacking = sorted(set(manifest.classes) - set(classes))
        raise DatasetError(
            f"{path}: classes differ from the manifest ({manifest.source}): "
            f"extra {_examples(extra) or 'none'}, missing {_examples(lacking) or 'none'}"
        )
    return classes


def _read_list(
    path: Path, classes: list[str], problems: _Problems, *, labelled: bool
) -> _Pairs | None:
    if not path.is_file():
        problems.add(f"split file {path} missing")
        return None
    # Folder names decide the class; case-insensitive because some releases spell a class's
    # folder and its file names differently (UCF101's HandstandPushups / HandStandPushups).
    lookup = {c.lower(): c for c in classes}
    pairs: _Pairs = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        rel = fields[0].replace("\\", "/")
        folder = rel.split("/")[0].lower() if "/" in rel else ""
        if len(fields) > 2 or folder not in lookup:
            raise DatasetError(
                f"{path}:{lineno}: expected '<class>/<video>{' <label>' if labelled else ''}' "
                f"with a known class, got {line.strip()!r}"
            )
        check_relative(rel, f"{path}:{lineno}: video", DatasetError)
        cls = lookup[folder]
        if len(fields) == 2 and (
            not fields[1].isdigit() or int(fields[1]) != classes.index(cls) + 1
        ):
            raise DatasetError(
                f"{path}:{lineno}: label {fields[1]} does not match class {cls} "
                f"(number {classes.index(cls) + 1} in the class index)"
            )
        pairs.append((cls, rel))
    return pairs


def _lists(
    manifest: Manifest, root: Path, split_root: Path, split: int, problems: _Problems
) -> tuple[list[str], _Pairs, _Pairs]:
    classes = _class_index(manifest, split_root)
    return classes, *_train_test_lists(manifest, split_root, split, classes, problems)


def _train_test_lists(
    manifest: Manifest, split_root: Path, split: int, classes: list[str], problems: _Problems
) -> tuple[_Pairs, _Pairs]:
    """The split's train and test list files, parsed and checked."""
    assert manifest.train_list is not None and manifest.test_list is not None
    train = _read_list(
        split_root / manifest.train_list.format(split=split), classes, problems, labelled=True
    )
    test = _read_list(
        split_root / manifest.test_list.format(split=split), classes, problems, labelled=False
    )
    if train is None or test is None:
        raise DatasetError(
            f"{manifest.name} split {split}: {'; '.join(problems.items)}; {SPLITS_HINT}"
        )
    return _dedup(train, test, split)


def _folder(
    manifest: Manifest, root: Path, splits_dir: Path | None, split: int, problems: _Problems
) -> tuple[list[str], _Pairs, _Pairs]:
    present = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if manifest.classes is not None:
        lacking = [c for c in manifest.classes if c not in present]
        if lacking:
            problems.add(f"class folders missing under {root}: {_examples(lacking)}")
        classes = [c for c in manifest.classes if c in present]
    else:
        classes = present
    if not classes:
        raise DatasetError(f"{root}: no class sub-folders")
    if splits_dir is not None:
        return classes, *_train_test_lists(manifest, splits_dir, split, classes, problems)
    train, test = [], []
    for cls in classes:
        videos = sorted(
            f"{cls}/{p.name}"
            for p in (root / cls).iterdir()
            if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS
        )
        # A hash of (split, path) orders each class: deterministic, different per split, and
        # stable when unrelated videos are added.
        videos.sort(key=lambda rel: hashlib.sha1(f"{split}:{rel}".encode()).hexdigest())
        n_test = round(manifest.test_fraction * len(videos))
        n_test = min(max(n_test, 1), len(videos) - 1) if len(videos) >= 2 else 0
        test += [(cls, rel) for rel in videos[:n_test]]
        train += [(cls, rel) for rel in videos[n_test:]]
    return classes, train, test


def _dedup(train: _Pairs, test: _Pairs, split: int) -> tuple[_Pairs, _Pairs]:
    seen: dict[str, str] = {}
    for role, pairs in (("train", train), ("test", test)):
        for cls, rel in pairs:
            if rel in seen:
                raise DatasetError(
                    f"split {split}: {rel} is listed twice ({seen[rel]} and {role}, class {cls})"
                )
            seen[rel] = role
    return train, test


def _drop_missing(pairs: _Pairs, root: Path, problems: _Problems) -> _Pairs:
    kept: _Pairs = []
    missing: _Pairs = []
    for cls, rel in pairs:
        (kept if (root / rel).is_file() else missing).append((cls, rel))
    if missing:
        names = [rel for _, rel in missing]
        problems.add(f"{len(missing)} listed videos missing under {root} ({_examples(names)})")
    return kept


def _drop_undecodable(
    train: _Pairs, test: _Pairs, undecodable: dict[str, str], problems: _Problems
) -> tuple[_Pairs, _Pairs]:
    listed = {rel: undecodable[rel] for _, rel in train + test if rel in undecodable}
    if listed:
        problems.add(describe_undecodable(listed))
    return (
        [(c, rel) for c, rel in train if rel not in listed],
        [(c, rel) for c, rel in test if rel not in listed],
    )


def _check_counts(
    manifest: Manifest,
    split: int,
    classes: list[str],
    train: _Pairs,
    test: _Pairs,
    problems: _Problems,
) -> None:
    expected = manifest.expected_for(split)
    if expected is not None and (len(train), len(test)) != (expected.train, expected.test):
        problems.add(
            f"{len(train)} train / {len(test)} test videos, the manifest expects "
            f"{expected.train} / {expected.test}"
        )
    per_class: SplitCounts | None = manifest.expected_per_class
    if per_class is not None:
        off = []
        for cls in classes:
            n_train = sum(1 for c, _ in train if c == cls)
            n_test = sum(1 for c, _ in test if c == cls)
            if (n_train, n_test) != (per_class.train, per_class.test):
                off.append(f"{cls} {n_train}/{n_test}")
        if off:
            problems.add(
                f"per-class train/test counts differ from {per_class.train}/{per_class.test}: "
                f"{_examples(off)}"
            )


def _labelled(
    dataset: str,
    root: Path,
    split: int,
    classes: list[str],
    train: _Pairs,
    test: _Pairs,
    notes: list[str],
) -> SplitData:
    # Under allow_partial a class may end with no train or no test video; it cannot be learned
    # or measured, so it leaves the label space (and the notes say so).
    used = [c for c in classes if any(c == t for t, _ in train) and any(c == t for t, _ in test)]
    dropped = [c for c in classes if c not in used]
    if dropped:
        notes.append(f"split {split}: classes without train or test videos left out: {dropped}")
    if len(used) < 2:
        raise DatasetError(
            f"{dataset} split {split}: fewer than two classes have both train and test videos"
        )
    index = {c: i for i, c in enumerate(used)}
    return SplitData(
        dataset=dataset,
        split=split,
        classes=used,
        train=[VideoItem(rel, root / rel, index[c]) for c, rel in train if c in index],
        test=[VideoItem(rel, root / rel, index[c]) for c, rel in test if c in index],
        notes=notes,
    )
