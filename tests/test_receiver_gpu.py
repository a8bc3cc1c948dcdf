"""benchmarks.receiver_gpu end to end on the CPU: a short 256-px stream prepared here, then
the run step in a fresh interpreter with what the accelerator machine lacks (dlib, PyAV,
aiortc) unimportable, as there: the JSON has its fields and the frames match the CPU's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from benchmarks.receiver_gpu import ABSENT_ON_DEVICE, main, parse_sizes, pinned_versions

# Prepended to the run step's script: the device's missing packages raise ImportError, and
# every attempt is recorded (a lazy import behind a try would otherwise go unseen).
BLOCK_DEVICE_IMPORTS = f"""
import atexit, importlib.abc, sys
BLOCKED, TRIED = {set(ABSENT_ON_DEVICE)!r}, []
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            TRIED.append(name)
            raise ImportError(f"blocked import of {{name}}")
        return None
sys.meta_path.insert(0, Block())
atexit.register(lambda: print("TRIED", sorted(set(TRIED))))
"""


def test_sizes_parse() -> None:
    assert [s.name for s in parse_sizes("256, 512,1280x720")] == ["crop256", "crop512", "frame1280x720"]


def test_the_device_wheels_are_pinned() -> None:
    assert pinned_versions() == {"constriction": "0.5.0"}


def test_prepare_then_run_on_the_cpu_without_the_device_missing_packages(tmp_path) -> None:
    streams = tmp_path / "streams"
    assert main(["prepare", "--out", str(streams), "--sizes", "256", "--frames", "6", "--keep", "0,5"]) == 0
    manifest = json.loads((streams / "manifest.json").read_text())
    (entry,) = manifest["streams"]
    assert entry["name"] == "crop256" and entry["keyframes"] == 1 and entry["reference"]["frames"] == 6
    assert entry["cpu_decode"]["median_ms"] > 0 and entry["cpu_decode"]["refiner_mode"] == "fast"
    report = tmp_path / "run.json"
    script = BLOCK_DEVICE_IMPORTS + f"""
import runpy
sys.argv = ["receiver_gpu", "run", "--streams", {str(streams)!r}, "--device", "cpu", "--passes", "1",
            "--json", {str(report)!r}]
try:
    runpy.run_module("benchmarks.receiver_gpu", run_name="__main__")
except SystemExit as done:
    print("STATUS", done.code)
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=300, check=False)
    out = proc.stdout + proc.stderr
    assert "STATUS 0" in proc.stdout and "TRIED []" in proc.stdout, out[-3000:]
    result = json.loads(report.read_text())
    assert result["status"] == 0 and result["errors"] == []
    assert set(result["env"]["absent_on_device"]) == set(ABSENT_ON_DEVICE)  # installed here, only blocked
    (row,) = result["results"]
    assert row["frames"] == 6 and row["decode"]["frames"] == 6 and row["decode"]["median_ms"] > 0
    assert row["refiner"]["refined_frames_per_pass"] == 6  # the refiner ran on every frame
    pixels = row["pixels_against_cpu"]
    assert pixels["frames_compared"] == 2 and pixels["max_abs"] == 0 and pixels["within_tolerance"]
    assert pixels["frames_bytes_identical"] == pixels["frames_expected"] == 6
    assert pixels["timed_passes_identical_to_warmup"]


def test_a_missing_cuda_device_or_stream_is_reported_not_raised(tmp_path, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    report = tmp_path / "run.json"
    assert main(["run", "--streams", str(tmp_path), "--device", "cuda", "--json", str(report)]) == 2
    result = json.loads(report.read_text())
    assert result["status"] == 2 and result["errors"][0]["type"] == "DeviceUnavailableError"
    # no manifest: a typed error in the JSON, status 1
    assert main(["run", "--streams", str(tmp_path / "none"), "--device", "cpu", "--json", str(report)]) == 1
    assert json.loads(report.read_text())["errors"][0]["type"] == "FileNotFoundError"


@pytest.mark.parametrize("changed", ["missing", "edited"])
def test_a_changed_stream_fails_alone(tmp_path, changed) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"format": 1, "streams": [
        {"name": "crop256", "file": "crop256.fvc", "sha256": "0" * 64, "model": "landmark",
         "reference": {"refiner_mode": "eager"}}]}))
    if changed == "edited":
        (tmp_path / "crop256.fvc").write_bytes(b"not the stream")
    report = tmp_path / "run.json"
    assert main(["run", "--streams", str(tmp_path), "--device", "cpu", "--json", str(report)]) == 1
    (error,) = json.loads(report.read_text())["errors"]
    assert error["stream"] == "crop256" and error["type"] == "StreamChangedError"
