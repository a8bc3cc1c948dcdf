"""Smoke test of benchmarks.speed on the CPU with the tiny config: it runs, writes strict JSON
with the expected rows, marks CUDA-only modes 'n/a', and counts FLOPs. No timing assertions
(the dev machine's cores are shared, so times are noise here)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks import speed
from benchmarks.env import git_dirty

FRAMES = 3


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("speed") / "speed.json"
    # one thread: with 2 threads on a loaded 2-core machine oneDNN's spin-waits dominate
    code = speed.main(["--config", "tiny", "--device", "cpu", "--threads", "1",
                       "--precisions", "fp32,bf16", "--modes", "eager,graph",
                       "--frames", str(FRAMES), "--warmup", "1", "--cpu-heavy-frames", "2",
                       "--json", str(path)])
    assert code == 0
    # strict JSON: json.loads would accept NaN/Infinity, so reject them explicitly
    return json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(name))


def _rows(report: dict) -> dict[tuple[str, str, str], dict]:
    return {(r["stage"], r["precision"], r["mode"]): r for r in report["results"]}


def test_report_header(report):
    assert report["name"] == "speed"
    env = report["env"]
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["threads"] == 1
    assert env["device_name"] and env["git_sha"]
    assert env["git_dirty"] is git_dirty()  # whether the code measured was the commit
    assert "UNTRAINED" in report["weights"]
    assert report["config"] == "tiny"


def test_expected_rows(report):
    rows = _rows(report)
    per_frame = (*speed.KEYFRAME_STAGES, *speed.FRAME_STAGES)
    expected = {(s, p, m) for s in per_frame for p in ("fp32", "bf16") for m in ("eager", "graph")}
    expected |= {(s, "fp32", "eager") for s in speed.HOST_STAGES}
    assert set(rows) == expected
    for stage in per_frame:
        for precision in ("fp32", "bf16"):
            row = rows[(stage, precision, "eager")]
            assert row["status"] == "ok", row
            assert row["frames"] >= 1 and row["median_ms"] > 0 and row["p99_ms"] >= row["median_ms"]
    for stage in speed.HOST_STAGES:  # needs constriction, a dependency of the project
        assert rows[(stage, "fp32", "eager")]["status"] == "ok"
    for name in ("sender.frame", "receiver.frame"):
        assert rows[(name, "fp32", "eager")]["frames_per_s"] > 0
    assert set(report["frames_per_s"]) >= {"sender.frame fp32 eager", "receiver.frame fp32 eager"}


def test_cuda_only_modes_are_na_on_cpu(report):
    graph_rows = [r for r in report["results"] if r["mode"] == "graph"]
    assert graph_rows and all(r["status"] == "n/a" and r["median_ms"] is None for r in graph_rows)


def test_numerics_recorded_against_fp32_eager(report):
    rows = _rows(report)
    assert rows[("receiver.render", "fp32", "eager")]["numerics"] is None  # the reference
    render = rows[("receiver.render", "bf16", "eager")]["numerics"]
    assert render["tolerance"] == speed.TOLERANCES["bf16"]
    # bf16 really ran (not the fp32 frame again) and kept ~3 significant digits of a [0, 1]
    # frame: measured Δmax 0.013, 51 dB on the tiny model
    assert not render["identical"] and 0 < render["mean_abs_diff"] <= render["max_abs_diff"] <= 0.1
    # mean |d|² <= mean d² <= max |d|²: the PSNR must lie between what the two diffs give
    assert -20 * math.log10(render["max_abs_diff"]) <= render["psnr_db"] <= \
        -20 * math.log10(render["mean_abs_diff"]) + 1e-6
    assert render["psnr_db"] >= speed.TOLERANCES["bf16"]["psnr_db_min"]
    assert render["within_tolerance"] is True
    assert report["split_check"]["max_abs_diff"] <= 1e-6  # M then G == render


def test_flop_counts_and_bytes(report):
    costs = report["costs"]
    for name in ("receiver.M", "receiver.G"):
        assert costs[name]["flops"] > 0
        assert costs[name]["min_bytes"]["fp32"] == 2 * costs[name]["min_bytes"]["bf16"] > 0
    assert costs["receiver.M+G"]["flops"] == costs["receiver.M"]["flops"] + costs["receiver.G"]["flops"]


def test_percentile_and_compare_helpers():
    values = [float(v) for v in range(1, 201)]
    assert speed.percentile(values, 0.99) == 198.0
    assert speed.percentile([5.0], 0.99) == 5.0
    same = speed.compare(torch.ones(3), torch.ones(3), peak=1.0)
    assert same["identical"] and same["psnr_db"] is None
    off = speed.compare(torch.full((4,), 0.5), torch.full((4,), 0.6), peak=1.0)
    assert math.isclose(off["psnr_db"], 20.0, rel_tol=1e-4)


@pytest.mark.slow
def test_decompress_speed_benchmark_runs_and_compares_with_before(tmp_path):
    """benchmarks.decompress_speed on 8 frames of the default input: every variant runs in
    its own process and the report holds medians, ratios to 'before' and the pixel check
    (no timing assertions)."""
    from benchmarks import decompress_speed

    path = tmp_path / "decompress.json"
    assert decompress_speed.main(["--frames", "8", "--runs", "1", "--variants", "fast,before,plain",
                                  "--work", str(tmp_path / "work"), "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["frames"] == 8 and set(report["results"]) == {"fast", "before", "plain"}
    assert report["results"]["fast"]["omp_wait_policy"] == "PASSIVE"
    assert report["results"]["before"]["refiner_mode"] == "eager"
    assert report["results"]["fast"]["median_ratio_to_before"] > 0
    assert report["pixels_against_eager"]["fast"]["max_abs"] <= 2
