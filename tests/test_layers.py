"""The packages are layered and imports point down only (docs/design.md, "Layout").

Read from the source, so function-local imports count too: a lazy import is still an arrow.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ("app", "sender", "receiver", "signaling", "rtc", "codec")

# What each package may import of the project (itself included).
ALLOWED = {
    "codec": {"codec"},
    "signaling": {"signaling"},
    "rtc": {"rtc", "signaling"},  # SDP arrives as a signaling message
    "sender": {"sender", "codec"},
    "receiver": {"receiver", "codec", "rtc"},  # the web viewer is a WebRTC peer of the browser
    "app": set(PROJECT),
}


def project_imports(package: str) -> dict[str, set[str]]:
    """{module path: the project's top-level packages it imports}, relative imports included."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                names.add(package if node.level else (node.module or "").split(".")[0])
        found[str(path.relative_to(ROOT))] = names & set(PROJECT)
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down(package: str) -> None:
    wrong = {module: sorted(names - ALLOWED[package])
             for module, names in project_imports(package).items() if names - ALLOWED[package]}
    assert not wrong, f"{package} imports from layers above it: {wrong}"


def test_codec_imports_without_the_layers_above() -> None:
    # Every codec module imported in a fresh interpreter leaves none of the upper packages loaded.
    script = (
        "import importlib, pkgutil, sys, codec\n"
        "for m in pkgutil.walk_packages(codec.__path__, 'codec.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        f"print(sorted({{n.split('.')[0] for n in sys.modules}} & {set(PROJECT) - {'codec'}!r}))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout
