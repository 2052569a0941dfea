"""Dataset manifests: a labelled video dataset described as data (``data_manifests/*.json``).

A manifest names one of three split-file *layouts* (the code in :mod:`distinit.eval.splits`) and
fills in everything else: class names, file-name patterns, tags, expected counts. A new dataset
that uses one of these layouts is a new JSON file, not new code; ``--dataset`` takes a packaged
name (``hmdb51``, ``ucf101``, ``folder``) or the path of a user's own manifest.

Layouts:

* ``tagged`` (HMDB51): one split file per class and split, ``split_file`` pattern with
  ``{class}`` and ``{split}``; each line ``<video> <tag>``; ``tags`` maps a tag to
  ``train`` / ``test`` / ``unused``.
* ``lists`` (UCF101): ``class_index`` (``<n> <class>`` lines), ``train_list`` and ``test_list``
  patterns with ``{split}``; lines ``<class>/<video> [label]``.
* ``folder``: classes are the sub-folders of the root; optional ``lists``-style files, else a
  deterministic hash split with ``test_fraction``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from distinit.pipeline.errors import DatasetError, UnknownNameError

LAYOUTS = ("tagged", "lists", "folder")
ROLES = ("train", "test", "unused")


@dataclass(frozen=True)
class SplitCounts:
    train: int
    test: int


@dataclass(frozen=True)
class Manifest:
    name: str
    layout: str
    splits: tuple[int, ...]
    classes: tuple[str, ...] | None  # None: discovered from the root (folder layout)
    video_path: str = "{class}/{video}"
    split_file: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    class_index: str | None = None
    train_list: str | None = None
    test_list: str | None = None
    expected: tuple[tuple[int, SplitCounts], ...] = ()
    expected_per_class: SplitCounts | None = None
    test_fraction: float = 0.3
    description: str = ""
    source: str = ""  # where the manifest was read from, for messages and results.json

    def expected_for(self, split: int) -> SplitCounts | None:
        return dict(self.expected).get(split)

    def tag_roles(self) -> dict[str, str]:
        return dict(self.tags)


def packaged_manifests() -> list[str]:
    folder = resources.files("distinit.data_manifests")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_manifest(name_or_path: str) -> Manifest:
    """A packaged manifest by name, or a user's manifest by path (anything ending in .json)."""
    if name_or_path.endswith(".json") or Path(name_or_path).is_file():
        path = Path(name_or_path)
        if not path.is_file():
            raise DatasetError(f"{path}: no such manifest file")
        text, source = path.read_text(encoding="utf-8"), str(path)
    else:
        known = packaged_manifests()
        if name_or_path not in known:
            raise UnknownNameError("dataset", name_or_path, known)
        resource = resources.files("distinit.data_manifests") / f"{name_or_path}.json"
        text, source = resource.read_text(encoding="utf-8"), f"packaged:{name_or_path}"
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{source}: manifest is not valid JSON ({exc})") from exc
    return parse_manifest(raw, source)


def _require(raw: dict[str, Any], key: str, source: str) -> Any:
    if key not in raw:
        raise DatasetError(f"{source}: manifest lacks {key!r}")
    return raw[key]


def _counts(value: Any, where: str) -> SplitCounts:
    if not isinstance(value, dict) or set(value) != {"train", "test"}:
        raise DatasetError(f"{where}: expected counts must be {{'train': N, 'test': N}}")
    if not all(isinstance(v, int) and v >= 0 for v in value.values()):
        raise DatasetError(f"{where}: expected counts must be non-negative integers")
    return SplitCounts(train=value["train"], test=value["test"])


def parse_manifest(raw: Any, source: str) -> Manifest:
    """Validate a manifest's JSON so a bad file fails here, not half-way through a run."""
    if not isinstance(raw, dict):
        raise DatasetError(f"{source}: manifest must be a JSON object")
    layout = _require(raw, "layout", source)
    if layout not in LAYOUTS:
        raise DatasetError(f"{source}: layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    splits = tuple(int(s) for s in _require(raw, "splits", source))
    if not splits:
        raise DatasetError(f"{source}: manifest lists no splits")
    classes = raw.get("classes")
    if classes is not None:
        if not isinstance(classes, list) or not all(isinstance(c, str) and c for c in classes):
            raise DatasetError(f"{source}: classes must be a list of non-empty names")
        if len(set(classes)) != len(classes):
            raise DatasetError(f"{source}: class names repeat")
    elif layout != "folder":
        raise DatasetError(f"{source}: layout {layout!r} needs a class list")
    tags = raw.get("tags", {})
    if layout == "tagged":
        _require(raw, "split_file", source)
        if not tags or any(role not in ROLES for role in tags.values()):
            raise DatasetError(f"{source}: tags must map each tag to one of {', '.join(ROLES)}")
    if layout == "lists":
        for key in ("class_index", "train_list", "test_list"):
            _require(raw, key, source)
    expected = tuple(
        (int(s), _counts(c, f"{source}: expected[{s}]")) for s, c in raw.get("expected", {}).items()
    )
    per_class = raw.get("expected_per_class")
    fraction = float(raw.get("test_fraction", 0.3))
    if not 0.0 < fraction < 1.0:
        raise DatasetError(f"{source}: test_fraction must be in (0, 1)")
    return Manifest(
        name=str(raw.get("name", Path(source).stem)),
        layout=layout,
        splits=splits,
        classes=tuple(classes) if classes is not None else None,
        video_path=str(raw.get("video_path", "{class}/{video}")),
        split_file=raw.get("split_file"),
        tags=tuple((str(k), str(v)) for k, v in tags.items()),
        class_index=raw.get("class_index"),
        train_list=raw.get("train_list"),
        test_list=raw.get("test_list"),
        expected=expected,
        expected_per_class=_counts(per_class, f"{source}: expected_per_class")
        if per_class is not None
        else None,
        test_fraction=fraction,
        description=str(raw.get("description", "")),
        source=source,
    )
