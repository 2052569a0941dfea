"""Command-line options made from config fields: each option is written once, on its field.

A command's frozen config dataclass is the one source of its options: a field made with
:func:`opt` carries a :class:`Flag` (help, flag name, choices, how a typed value becomes the
field's), its type and its default; :func:`config_options` turns those fields into click options
and :func:`config_from` builds the config from what click parsed. Options that several commands
share (``--device``, ``--amp``, ``--resize``, ``--batch-size`` ...) are defined once below and
named by each field that takes them.

``--config FILE`` replays a saved config: a bare one (``RUN/config.json``) or the ``config``
object inside an extract manifest or an eval ``results.json``. Options given on the command line
override it; the others take the file's value, then the field's default.

Only click is imported here, so ``--help`` never imports torch.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar, Union

import click
from click.core import ParameterSource

from distinit.pipeline.errors import ConfigError

__all__ = [
    "AMP",
    "CLIP_BATCH",
    "CLIP_LEN",
    "DEVICE",
    "FRAME_SIZE",
    "LOADER_WORKERS",
    "MODALITIES",
    "MODALITY",
    "RESIZE",
    "Flag",
    "FrameSize",
    "config_file_option",
    "config_from",
    "config_options",
    "flag_of",
    "flag_option",
    "json_out_option",
    "opt",
    "read_saved_config",
]

C = TypeVar("C")
F = TypeVar("F", bound=Callable[..., Any])

# What a student may see: RGB frames, or the optical flow between them.
MODALITIES = ("rgb", "flow")


class FrameSize(click.ParamType):
    """``WxH`` on the command line -> ``(width, height)``; a malformed value is reported by
    click against the option that got it (``Invalid value for '--resize': ...``)."""

    name = "WxH"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "WxH"  # click would upper-case the name

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        from distinit.pipeline.frame_geometry import parse_size

        try:
            return parse_size(str(value))
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)

    def show(self, value: tuple[int, int]) -> str:
        from distinit.pipeline.frame_geometry import format_size

        return format_size(value)


FRAME_SIZE = FrameSize()


# Flag.cli_default when the option's default is the field's.
_FIELDS_OWN: Any = object()


@dataclasses.dataclass(frozen=True)
class Flag:
    """How one config field appears on the command line.

    ``parse`` turns click's value into the field's; it also gets the fields resolved before
    this one (in field order), for a value that depends on another (extract's
    ``--teacher-weights PATH`` names the one ``--teacher``). ``replay=False``: ``--config``
    does not restore the field (a process's rank is its launcher's, not the saved run's).
    A ``bool`` field is a ``--name/--no-name`` pair.
    """

    help: str
    name: str | None = None  # the flag, when it is not --field-name
    type: click.ParamType | None = None  # None: from the field's annotation
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    show_default: bool | str = True
    parse: Callable[[Any, Mapping[str, Any]], Any] | None = None
    replay: bool = True
    # The option's own default, when it differs from the field's (e.g. None, for ``parse`` to
    # take the value from the environment).
    cli_default: Any = _FIELDS_OWN

    def flag(self, field_name: str) -> str:
        return self.name or "--" + field_name.replace("_", "-")


def opt(default: Any = dataclasses.MISSING, flag: Flag | str = "", **changes: Any) -> Any:
    """A dataclass field with a command-line option: ``flag`` is a :class:`Flag` (a shared one,
    adjusted by ``changes``) or the option's help text. Without ``default`` the option is
    required (unless ``--config`` gives it)."""
    spec = flag if isinstance(flag, Flag) else Flag(help=flag)
    spec = dataclasses.replace(spec, **changes) if changes else spec
    if isinstance(default, (dict, list)):
        return dataclasses.field(
            default_factory=lambda: type(default)(default), metadata={"cli": spec}
        )
    return dataclasses.field(default=default, metadata={"cli": spec})


# --- Options shared by several commands: one definition each. ----------------------------------

DEVICE = Flag(
    help="auto (CUDA when present), cpu, cuda or cuda:N; under torchrun or srun, cuda is each "
    "process's own local-rank GPU."
)
AMP = Flag(help="Mixed precision (float16) on CUDA; never used on CPU.")
RESIZE = Flag(
    type=FRAME_SIZE, help="Frame size WIDTHxHEIGHT in pixels, stretched, before cropping."
)
CLIP_LEN = Flag(help="Frames per clip.")
# One meaning of a batch size for every command that takes clips: per process, as torchrun's
# data-parallel convention has it, so the same flag fits one GPU or many.
CLIP_BATCH = Flag(
    name="--batch-size",
    help="Clips per process per step (global batch = this x processes).",
)
LOADER_WORKERS = Flag(
    help="Clip-loading worker processes per process (0: load in the main process; by default "
    "one per core, at most 4)."
)
MODALITY = Flag(
    choices=MODALITIES,
    help="What the student sees: RGB frames, or optical flow (OpenCV DIS) between them.",
)


def config_file_option(saved_in: str) -> Callable[[F], F]:
    """``--config FILE``: the config saved in ``saved_in`` (e.g. ``RUN/config.json``)."""
    return click.option(
        "--config",
        "config_file",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        help=f"Replay the config saved in {saved_in}: every option not given here takes its "
        "value from there.",
    )


def json_out_option(what: str) -> Callable[[F], F]:
    """``--json-out FILE`` of a benchmark: also write ``what`` as JSON there."""
    return click.option(
        "--json-out",
        type=click.Path(dir_okay=False),
        default=None,
        help=f"Also write {what} as JSON to this file.",
    )


# --- From fields to click options. ---------------------------------------------------------------


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _optional(hint: Any) -> Any:
    """``X | None`` -> ``X``; any other hint unchanged."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _field_default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


_REPEATED = ((str, Ellipsis), (int, Ellipsis), (float, Ellipsis))


def flag_option(
    field_name: str, spec: Flag, hint: Any, default: Any, *, required: str = ""
) -> Callable[[F], F]:
    """The click option of one field (or of a command's own setting typed like one).
    ``required``: "" no, "click" checked by click, "config" checked once ``--config`` is
    read (:func:`config_from`)."""
    inner = _optional(hint)
    kwargs: dict[str, Any] = {"help": spec.help, "metavar": spec.metavar}
    decls = [spec.flag(field_name)]
    if inner is bool:
        decls = [f"{decls[0]}/--no-{decls[0][2:]}"]
    elif spec.choices is not None:
        kwargs["type"] = click.Choice(spec.choices)
    elif spec.type is not None:
        kwargs["type"] = spec.type
    elif typing.get_origin(inner) is tuple and typing.get_args(inner) in _REPEATED:
        kwargs["multiple"] = True  # tuple[str, ...]: the option is repeated
        kwargs["type"] = typing.get_args(inner)[0]
    elif inner is Path:
        kwargs["type"] = click.Path(path_type=Path)
    elif inner in (int, float, str):
        kwargs["type"] = inner
    else:  # tuple[tuple[str, float], ...], dict[str, str]: given repeated, read by parse
        kwargs["multiple"] = True
    show = getattr(kwargs.get("type"), "show", None)
    if default is not None and show is not None:
        default = show(default)
    if isinstance(default, dict):
        default = ()
    kwargs["default"] = default
    # A flag off by default says so by its name alone.
    shown = default is not None and default is not False and default != ()
    kwargs["show_default"] = spec.show_default if shown else False
    if required == "config" and "[required" not in spec.help:
        kwargs["help"] = f"{spec.help}  [required unless --config]"
    kwargs["required"] = required == "click"
    return click.option(*decls, field_name, **kwargs)


def config_options(
    cls: type,
    *,
    only: Iterable[str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    replay: str | None = None,
) -> Callable[[F], F]:
    """Decorate a click command with an option per :func:`opt` field of ``cls`` (``only``
    those, in field order; ``defaults`` changes a default shown and used) and, when
    ``replay`` names where the command saves its config, ``--config FILE``."""
    hints, chosen = _hints(cls), None if only is None else set(only)
    defaults = defaults or {}
    decorators = []
    for field in dataclasses.fields(cls):
        spec = field.metadata.get("cli")
        if spec is None or (chosen is not None and field.name not in chosen):
            continue
        default = spec.cli_default
        if default is _FIELDS_OWN:
            default = _field_default(field)
        default = defaults.get(field.name, default)
        required = ""
        if _is_required(field) and field.name not in defaults:
            required = "click" if replay is None else "config"
        decorators.append(
            flag_option(field.name, spec, hints[field.name], default, required=required)
        )
    if replay is not None:
        decorators.append(config_file_option(replay))

    def decorate(command: F) -> F:
        for decorator in reversed(decorators):  # click lists options in decorator order
            command = decorator(command)
        return command

    return decorate


def flag_of(cls: type, field_name: str) -> str:
    """The command-line flag of a config field (``batch_size`` -> ``--batch-size``), for
    messages that name what the user typed."""
    for field in dataclasses.fields(cls):
        if field.name == field_name and "cli" in field.metadata:
            return field.metadata["cli"].flag(field_name)
    return field_name


def _is_required(field: dataclasses.Field[Any]) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def config_from(
    cls: type[C], params: dict[str, Any], *, fixed: Mapping[str, Any] | None = None
) -> C:
    """The ``cls`` config of the current click command: each :func:`opt` field from its
    option when given on the command line, else from ``--config FILE`` (when given and the
    field is replayed), else the option's default. ``fixed`` sets fields no option gives.
    Pops the fields' parameters from ``params``; the command's own settings stay there."""
    ctx = click.get_current_context()
    config_file = params.pop("config_file", None)
    saved = read_saved_config(config_file, cls) if config_file is not None else {}
    values: dict[str, Any] = dict(fixed or {})
    missing = []
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]  # C: a dataclass
        spec = field.metadata.get("cli")
        if spec is None or field.name not in params:
            continue
        raw = params.pop(field.name)
        given = ctx.get_parameter_source(field.name) not in (
            ParameterSource.DEFAULT,
            ParameterSource.DEFAULT_MAP,
        )
        if not given and spec.replay and field.name in saved:
            values[field.name] = saved[field.name]
        elif raw is None and _is_required(field):
            missing.append(spec.flag(field.name))
        else:
            values[field.name] = spec.parse(raw, values) if spec.parse is not None else raw
    if missing:
        raise click.UsageError(f"Missing option {', '.join(map(repr, missing))}", ctx)
    return cls(**values)


def read_saved_config(path: str, cls: type) -> dict[str, Any]:
    """The fields saved in ``path``, typed as ``cls`` takes them; one line naming the file
    and the reason when it is not a config of ``cls``."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror or exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: not a JSON file ({exc})") from exc
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]  # an extract manifest or an eval results.json
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: not a saved config (a JSON object of options)")
    hints = _hints(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        more = f" and {len(unknown) - 4} more" if len(unknown) > 4 else ""
        raise ConfigError(
            f"--config {path}: not a config of this command (unknown fields: "
            f"{', '.join(unknown[:4])}{more}); extract replays SHARDS/manifest.json, "
            "train RUN/config.json, eval OUT/results.json"
        )
    return {name: _from_json(path, name, hints[name], value) for name, value in data.items()}


def _from_json(path: str, name: str, hint: Any, value: Any) -> Any:
    """A saved JSON value as the field takes it: lists as tuples, strings as paths, a mapping
    as the sorted pairs of a ``tuple[tuple[str, float], ...]``; a value of another type is
    refused."""
    inner = _optional(hint)
    if value is None and inner is not hint:
        return None
    origin = typing.get_origin(inner)
    if origin is tuple and isinstance(value, dict):
        return tuple(sorted(value.items()))
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if inner is Path and isinstance(value, str):
        return Path(value)
    if origin is dict and isinstance(value, dict):
        return value
    if inner is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if inner in (int, str, bool, float) and type(value) is inner:
        return value
    raise ConfigError(f"--config {path}: {name} cannot be {value!r}")
