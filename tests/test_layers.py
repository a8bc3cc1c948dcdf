"""codec/ imports alone: no module of it loads a package above it (the layers themselves,
and every import arrow between them, are tests/test_layering.py's one statement)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ("app", "sender", "receiver", "signaling", "rtc", "codec")


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
