"""torch and torchvision must come as a matching pair; say so in one line when they do not.

A torchvision wheel is built against one torch release. Installed beside another (a ``pip install
torch`` upgrade that left torchvision behind), ``import torchvision`` fails while registering its
C++ operators (``RuntimeError: operator torchvision::nms does not exist``) thirty frames deep,
wherever distinit first imports it. :func:`mismatch_message` recognises that failure and names
both versions instead.
"""

from __future__ import annotations

import importlib.metadata
import traceback
from pathlib import Path


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def _failed_importing_torchvision(exc: BaseException) -> bool:
    """Whether ``exc`` (or one it was raised from) came out of torchvision's module-level code,
    i.e. while ``import torchvision`` ran, not from a torchvision function called later."""
    seen: BaseException | None = exc
    while seen is not None:
        for frame in traceback.extract_tb(seen.__traceback__):
            if frame.name == "<module>" and "torchvision" in Path(frame.filename).parts:
                return True
        seen = seen.__cause__ or seen.__context__
    return False


def mismatch_message(exc: BaseException) -> str | None:
    """One line naming the installed torch and torchvision when ``exc`` is torchvision failing to
    import; None for any other error."""
    if not _failed_importing_torchvision(exc):
        return None
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    torch_version, vision_version = _version("torch"), _version("torchvision")
    return (
        f"torchvision {vision_version} does not work with torch {torch_version} (importing it "
        f"failed: {first_line}); install the torchvision release made for torch "
        f"{torch_version} (pip install --upgrade torch torchvision installs a matching pair)"
    )
