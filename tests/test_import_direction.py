"""Import direction: the core imports no stage, extract and train never import each other, eval
builds on train, and only the applications (``apps/``) span stages.

Checked on the source, every ``import`` at any depth (a stage imported inside a function counts as
much as one at module level), and once at run time, by importing a stage's main modules in a
fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The distinit packages each package may import, besides itself.
ALLOWED = {
    "pipeline": set(),
    "data_manifests": set(),
    "extract": {"pipeline"},
    "train": {"pipeline"},
    "eval": {"pipeline", "train", "data_manifests"},
    "export": {"pipeline", "train", "eval"},
    "apps": {"pipeline", "extract", "train", "eval", "export", "data_manifests"},
}
# A command module is where the CLI enters a stage; `inspect --consistency` runs an application.
COMMAND_RUNS_APP = {("extract/commands.py", "apps")}


def imported_packages(path: Path) -> set[str]:
    """The distinit packages ``path`` imports anywhere in its body."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        found |= {n.split(".")[1] for n in names if n.startswith("distinit.") and "." in n}
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_what_lies_below_it(package: str) -> None:
    wrong = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for target in imported_packages(path) - ALLOWED[package] - {package}:
            if (rel, target) not in COMMAND_RUNS_APP:
                wrong.append(f"{rel} imports distinit.{target}")
    assert not wrong, wrong


def test_a_function_level_import_is_seen(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from distinit.extract.discovery import rank_of\n")
    assert imported_packages(source) == {"extract"}


@pytest.mark.parametrize(("stage", "forbidden"), [("extract", "train"), ("train", "extract")])
def test_stages_meet_only_in_pipeline(stage: str, forbidden: str) -> None:
    modules = {
        "extract": ["runner", "commands", "inspection", "verification", "bench"],
        "train": ["loop", "command", "clips", "agreement", "bench"],
    }[stage]
    imports = "; ".join(f"import distinit.{stage}.{m}" for m in modules)
    check = f"any(m.startswith('distinit.{forbidden}') for m in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", f"import sys; {imports}; print({check})"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
