"""Slurm node lists (``rack[1-2]-gpu[01-02],login``): the first host is the rendezvous address of
a Slurm job that did not set ``MASTER_ADDR``."""

from __future__ import annotations

import itertools
import logging
import re
import shutil
import subprocess

from distinit.pipeline.errors import ConfigError

log = logging.getLogger(__name__)


def first_slurm_host(nodelist: str) -> str:
    """The first host of a Slurm node list, as Slurm itself expands it: ``scontrol show
    hostnames`` where Slurm is installed, else :func:`slurm_hostnames` (the same grammar)."""
    scontrol = shutil.which("scontrol")
    if scontrol is not None:
        try:
            shown = subprocess.run(
                [scontrol, "show", "hostnames", nodelist],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout.split()
        except (OSError, subprocess.SubprocessError) as exc:
            log.debug("scontrol show hostnames failed (%s); expanding the list here", exc)
        else:
            if shown:
                return shown[0]
    return slurm_hostnames(nodelist)[0]


# A node list item is literal text and bracket groups; a bracket group is a comma list of
# numbers and ranges ``lo-hi``, zero-padded to the width of ``lo`` (``[08-10]``: 08, 09, 10).
_HOSTLIST_TOKEN = re.compile(r"\[([^\[\]]*)\]|([^\[\],]+)")
_HOSTLIST_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def slurm_hostnames(nodelist: str) -> list[str]:
    """Every host of a Slurm node list, in Slurm's order: ``rack[1-2]-gpu[01-02],login`` ->
    rack1-gpu01, rack1-gpu02, rack2-gpu01, rack2-gpu02, login."""
    text = nodelist.strip()
    hosts: list[str] = []
    pos = 0
    while pos < len(text):
        choices: list[list[str]] = []  # one list of alternatives per literal or bracket group
        while pos < len(text) and text[pos] != ",":
            m = _HOSTLIST_TOKEN.match(text, pos)
            if m is None:
                raise ConfigError(f"cannot read the Slurm node list {nodelist!r}")
            group, literal = m.group(1), m.group(2)
            choices.append([literal] if group is None else _expand_group(group, nodelist))
            pos = m.end()
        if not choices:
            raise ConfigError(f"cannot read the Slurm node list {nodelist!r} (an empty host)")
        hosts += ["".join(parts) for parts in itertools.product(*choices)]
        pos += 1  # the comma between items
    if not hosts:
        raise ConfigError(f"cannot read the Slurm node list {nodelist!r} (no host)")
    return hosts


def _expand_group(group: str, nodelist: str) -> list[str]:
    out: list[str] = []
    for part in group.split(","):
        m = _HOSTLIST_RANGE.fullmatch(part.strip())
        if m is None:
            raise ConfigError(f"cannot read the Slurm node list {nodelist!r} (range {part!r})")
        lo, hi = m.group(1), m.group(2) or m.group(1)
        if int(hi) < int(lo):
            raise ConfigError(f"cannot read the Slurm node list {nodelist!r} (range {part!r})")
        out += [str(n).zfill(len(lo)) for n in range(int(lo), int(hi) + 1)]
    return out
