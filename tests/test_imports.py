"""What importing the codec costs: the API and the default landmark warp load no torch (it
comes with the refiner or the vid2vid family only), the transport's cost arithmetic loads
no aiortc, and codec/ has no import cycle, imports inside functions included."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from conftest import BLOCK_TRANSPORT_IMPORTS, REPO


def run_python(script: str) -> str:
    """Run ``script`` in a fresh interpreter on the repo; its stdout (the test fails on an error)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_importing_the_api_loads_no_torch():
    out = run_python("""
import sys
import codec.api, codec.decoder, codec.files, codec.refresh, codec.zoo, codec.weights_io, codec.families.landmark
print(sorted(m for m in sys.modules if m.split(".")[0] == "torch"))
""")
    assert out.strip() == "[]", out


def test_a_landmark_round_trip_without_the_refiner_loads_no_torch():
    """The default model through the public constructors (the sender never loads the refiner;
    the receiver is asked for the plain warp), with the closed loop and the patches on:
    encode and decode a few frames of the built-in portrait; torch stays out."""
    out = run_python("""
import sys
from skimage import data
from codec.api import Decoder, Encoder, RefreshPolicy
from codec.facecrop import FaceCropper

image = data.astronaut()
crop = FaceCropper(out_size=256).fit([image]).crop(image, 256)
encoder = Encoder.from_pretrained(refresh=RefreshPolicy(), patches=True)
decoder = Decoder.from_header(encoder.header(), refiner=False)
frames = [decoder.decode(p) for i in range(3) for p in encoder.encode(crop, i / 25)]
print(sum(f is not None for f in frames), "torch" in sys.modules)
""")
    assert out.split() == ["3", "False"], out


def test_the_wire_cost_arithmetic_needs_no_aiortc():
    out = run_python(BLOCK_TRANSPORT_IMPORTS + """
from rtc.wire_cost import data_channel_message_wire_bytes
print(data_channel_message_wire_bytes(1160), data_channel_message_wire_bytes(1161))
""")
    assert out.split() == [str(1160 + 93), str(1161 + 2 * 93)], out


def module_imports(package: str, repo: Path = REPO) -> dict[str, set[str]]:
    """module -> the package's modules it imports, at module level or inside functions."""
    paths = {}
    for path in (repo / package).rglob("*.py"):
        parts = path.relative_to(repo).with_suffix("").parts
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def owner(name: str) -> str | None:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in paths.items():
        here = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                    base = f"{anchor}.{base}" if base else anchor
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            targets.update(owner(name) for name in names if name.split(".")[0] == package)
        graph[module] = targets - {None, module}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle's modules (strongly connected components of more than one module)."""
    order, low, stack, cycles = {}, {}, [], []

    def visit(module: str) -> None:
        order[module] = low[module] = len(order)
        stack.append(module)
        for target in graph[module]:
            if target not in order:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], order[target])
        if low[module] == order[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in order:
            visit(module)
    return cycles


def test_codec_has_no_import_cycle():
    assert import_cycles(module_imports("codec")) == []


def test_the_cycle_check_sees_imports_inside_functions(tmp_path):
    (tmp_path / "codec" / "models").mkdir(parents=True)
    (tmp_path / "codec" / "__init__.py").write_text("")
    (tmp_path / "codec" / "models" / "__init__.py").write_text("")
    (tmp_path / "codec" / "zoo.py").write_text("import numpy\nfrom codec.models.net import Net\n")
    (tmp_path / "codec" / "models" / "net.py").write_text("def load():\n    from ..zoo import path\n")
    (tmp_path / "codec" / "api.py").write_text("from codec import zoo\n")
    graph = module_imports("codec", tmp_path)
    assert graph["codec.models.net"] == {"codec.zoo"} and graph["codec.api"] == {"codec", "codec.zoo"}
    assert import_cycles(graph) == [["codec.models.net", "codec.zoo"]]
