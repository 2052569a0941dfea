"""The ``distinit`` command line.

Each sub-command lives with its stage (``distinit.extract.commands`` and so on) and is imported
only when it runs, so ``distinit --help`` stays instant and never imports torch. Domain errors
become one line on stderr and exit status 2; nothing a user did wrong prints a traceback. A stop
signal exits as :mod:`distinit.pipeline.stopping` says, for every command.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Iterator
from typing import Any, NoReturn

import click

from distinit.pipeline import stopping, torch_pair
from distinit.pipeline.errors import DistinitError, Interrupted, one_line

# name -> (module:attribute, one-line help shown by `distinit --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "extract": (
        "distinit.extract.commands:extract",
        "Stage one: decode videos, cache teacher logits.",
    ),
    "inspect": (
        "distinit.extract.commands:inspect",
        "Summarise, query or verify a shard directory.",
    ),
    "train": (
        "distinit.train.command:train",
        "Stage two: distil cached targets into a 3D student.",
    ),
    "eval": (
        "distinit.eval.command:eval_command",
        "Fine-tune or linear-probe on HMDB51/UCF101/folders.",
    ),
    "export": (
        "distinit.export.command:export",
        "Write a final.pt as torchvision weights, config and model card.",
    ),
    "teachers": ("distinit.extract.commands:teachers", "List the teachers extract can use."),
    "demo": ("distinit.apps.demo:demo", "Run the whole method on real sample clips, on CPU."),
    "bench": ("distinit.pipeline.bench:bench", "Benchmarks: extraction and training throughput."),
}


class LazyGroup(click.Group):
    """A click group whose commands are imported on first use.

    ``lazy`` maps each command name to ``("module:attribute", one-line help)``; listing the
    commands uses those help lines, so ``--help`` imports no stage.
    """

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.lazy)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy:
            return None
        module_name, attr = self.lazy[cmd_name][0].split(":")
        command = getattr(importlib.import_module(module_name), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy[cmd_name][0]} is not a click command")
        _add_verbose(command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, line) for name, (_, line) in self.lazy.items()])


def _set_verbosity(ctx: click.Context, param: click.Parameter, verbose: int) -> None:
    """``-v`` info, ``-vv`` debug; given before or after the sub-command, the louder one wins."""
    if not verbose:
        return
    level = max(logging.WARNING - 10 * verbose, logging.DEBUG)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(min(root.level, level))


# -v, on the group and on every sub-command.
_VERBOSE: dict[str, Any] = {
    "count": True,
    "expose_value": False,
    "is_eager": True,
    "callback": _set_verbosity,
    "help": "More log output (-v info, -vv debug).",
}


def _verbose_option() -> click.Option:
    return click.Option(["-v", "--verbose"], **_VERBOSE)


def _add_verbose(command: click.Command) -> None:
    """Give a sub-command (and its own sub-commands) the group's ``-v``, so ``distinit extract
    -v`` works as well as ``distinit -v extract``."""
    if not any(p.name == "verbose" for p in command.params):
        command.params.append(_verbose_option())
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _add_verbose(sub)


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", **_VERBOSE)
@click.version_option(package_name="distinit")
def cli() -> None:
    """distinit: learn video representations from image teachers, without video labels.

    \b
    Typical run:
      distinit extract --videos VIDEOS --out SHARDS
      distinit train   --targets SHARDS --out RUN
      distinit eval    --dataset hmdb51 --root HMDB51 --checkpoint RUN/final.pt --out OUT
    """
    # Notices read "WARNING: ..."; with -v (set up first, as an eager option) the logger's name
    # is shown too, for finding where a message comes from.
    logging.basicConfig(format="%(levelname)s: %(message)s")


INTERRUPTED = "Interrupted. Run the same command again to resume."


def main() -> None:
    stopping.install_default_handlers()
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort as exc:
        signum = _stop_signal(exc)  # click turns a KeyboardInterrupt into Abort
        if signum is None:
            _exit(exc, "Aborted.", stopping.exit_code(signal.SIGINT))
        _exit(exc, INTERRUPTED, stopping.exit_code(signum))
    except click.ClickException as exc:
        try:
            exc.show()
        except OSError:
            _silence()
        _exit(exc, None, exc.exit_code)
    except Interrupted as exc:
        _exit(exc, str(exc), stopping.exit_code(exc.signum))
    except DistinitError as exc:
        _exit(exc, f"Error: {one_line(exc)}", 2)
    except KeyboardInterrupt as exc:
        _exit(exc, INTERRUPTED, stopping.exit_code(_stop_signal(exc) or signal.SIGINT))
    except BrokenPipeError as exc:
        # The reader went away (`| head`, or `| tee` killed by the same Ctrl-C): not an error of
        # ours to report, and there is nowhere to report it.
        _silence()
        signum = _stop_signal(exc)
        _exit(exc, None, stopping.exit_code(signum if signum is not None else signal.SIGPIPE))
    except (ImportError, RuntimeError, AttributeError, OSError) as exc:  # after BrokenPipe
        # What a torchvision built for another torch raises on import, wherever that happens.
        mismatch = torch_pair.mismatch_message(exc)
        if mismatch is None:
            raise
        _exit(exc, f"Error: {mismatch}", 2)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it was raised from or during, and so on."""
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def _stop_signal(exc: BaseException) -> int | None:
    """The stop signal behind ``exc`` (itself, its cause or its context), if any."""
    for seen in _chain(exc):
        if isinstance(seen, stopping.StopNow):
            return seen.signum
        if isinstance(seen, KeyboardInterrupt):
            return signal.SIGINT
    return None


def _exit(ended_by: BaseException, message: str | None, code: int) -> NoReturn:
    """Say ``message`` on stderr if it is still there, and exit with ``code``."""
    _release(ended_by)
    if message is not None:
        try:
            click.echo(message, err=True)
        except OSError:
            _silence()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            _silence()
    sys.exit(code)


def _release(exc: BaseException) -> None:
    """Free what the frames of a handled error still hold, while the interpreter is whole.

    A DDP model left in those frames keeps its gloo process group, and so gloo's worker
    threads, alive into interpreter shutdown, where freeing them aborts the process
    ("terminate called without an active exception") instead of exiting with our status.
    """
    for seen in _chain(exc):
        if seen.__traceback__ is not None:
            traceback.clear_frames(seen.__traceback__)
    gc.collect()


def _silence() -> None:
    """Point stdout and stderr at /dev/null: once the pipe behind them is broken, the
    interpreter's own flush at exit would fail too and change the exit status."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


if __name__ == "__main__":
    main()
