"""The project's layering, stated once and checked on every import in the tree.

A package may import itself and any package in a *lower* layer, never one beside it or
above it. Every import counts: module level, inside functions (the lazy ones that keep
torch or PyAV off a path) and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

# Lowest first. codec/ is the run-time codec and imports nothing of ours.
LAYERS: list[set[str]] = [
    {"codec"},                     # the codec: models, bitstream, entropy coding, Encoder/Decoder
    {"evaluation", "signaling"},   # quality metrics (LPIPS, AKD); the signaling server and client
    {"rtc", "training"},           # WebRTC carriage of the codec; training of its models
    {"sender", "receiver"},        # the two ends of a call
    {"app"},                       # the facecodec command line, calls and the demo
    {"benchmarks"},                # measurements over everything
]
LAYER_OF = {package: level for level, packages in enumerate(LAYERS) for package in packages}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level package, line) of every absolute import in ``path`` that names one of ours."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update((name.split(".")[0], node.lineno) for name in names if name.split(".")[0] in LAYER_OF)
    return found


def layering_violations(repo: Path) -> list[str]:
    violations = []
    for package, level in LAYER_OF.items():
        for path in sorted((repo / package).rglob("*.py")):
            for target, line in sorted(imported_packages(path)):
                if target != package and LAYER_OF[target] >= level:
                    violations.append(f"{path.relative_to(repo)}:{line} imports {target} "
                                      f"(layer {LAYER_OF[target]}) from layer {level}")
    return violations


def test_every_package_is_in_a_layer():
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")}
    assert packages == set(LAYER_OF), "add the new package to LAYERS"


def test_no_import_reaches_up_or_sideways():
    assert layering_violations(REPO) == []


def test_the_check_sees_imports_inside_functions(tmp_path):
    for package in LAYER_OF:
        (tmp_path / package).mkdir()
    (tmp_path / "codec" / "lazy.py").write_text("def f():\n    from benchmarks.rd import main\n")
    (tmp_path / "sender" / "side.py").write_text("import receiver.session\n")
    assert layering_violations(tmp_path) == [
        "codec/lazy.py:2 imports benchmarks (layer 5) from layer 0",
        "sender/side.py:1 imports receiver (layer 3) from layer 3",
    ]
