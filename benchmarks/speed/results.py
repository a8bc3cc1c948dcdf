"""The report: the JSON document a run produces (environment, settings, costs, rows), the
console lines beside it, and the strict-JSON file."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .environment import environment
from .stages import (
    BENCHMARK_NAME,
    HEAVY_STAGES,
    INTRA_PERIOD,
    MOTION_QUALITY,
    TOLERANCES,
    WEIGHTS_NOTE,
    Row,
)

if TYPE_CHECKING:
    from .bench import SpeedBenchmark

# The column heads of format_row's lines.
ROW_HEADER = (f"{'stage':24s} {'prec':5s} {'mode':8s} {'status':11s}{'median ms':>10}{'p99 ms':>10} "
              f"{'frames':>5} {'frames/s':>8}")


def build_report(bench: SpeedBenchmark, rows: list[Row], costs: dict[str, Any],
                 precisions: list[str], modes: list[str]) -> dict[str, Any]:
    """The JSON report of ``bench``'s run (see the package docstring)."""
    dev, config, inputs = bench.device, bench.config, bench.inputs
    cpu = dev.type == "cpu"
    summary = {
        f"{r.stage} {r.precision} {r.mode}": round(r.frames_per_s, 3)
        for r in rows if r.frames_per_s is not None}
    return {
        "name": BENCHMARK_NAME,
        "env": environment(dev),
        "config": config.name,
        "weights": WEIGHTS_NOTE,
        "settings": {
            "batch": 1, "image_size": config.image_size, "num_kp": config.num_kp,
            "frames": bench.frames, "warmup": bench.warmup, "precisions": precisions,
            "modes": modes,
            "cpu_heavy_frames": bench.cpu_heavy_frames if cpu else None,
            "cpu_heavy_warmup": bench.cpu_heavy_warmup if cpu else None,
            "heavy_stages": sorted(HEAVY_STAGES), "compile_mode": bench.compile_mode,
            "compile_timeout_s": bench.compile_timeout, "motion_quality": MOTION_QUALITY,
            "intra_period": INTRA_PERIOD,
            "motion_bits_per_frame": inputs.motion_bits_per_frame,
            "constriction": inputs.has_constriction,
            "timing": ("CUDA: torch.cuda.Event pair per frame, synchronised per frame, for "
                       "device-only stages; perf_counter + sync for stages with host code. "
                       "CPU: time.perf_counter"),
            "precision": "torch.autocast(dtype) for bf16/fp16; weights stay fp32",
        },
        "split_check": {"what": "model.generator(model.motion(...)) vs model.render(...), "
                                "fp32 eager", **inputs.split_check},
        "tolerances": TOLERANCES,
        "costs": costs,
        "frames_per_s": summary,
        "results": [r.to_dict() for r in rows],
    }


def format_row(row: Row) -> str:
    """One console line of a row, under ROW_HEADER."""
    def ms(value: float | None) -> str:
        return f"{value:10.3f}" if value is not None else f"{'':>10}"

    fps = f"{row.frames_per_s:8.2f}" if row.frames_per_s is not None else f"{'':>8}"
    num = ""
    if row.numerics and "max_abs_diff" in row.numerics:
        num = f"  Δmax {row.numerics['max_abs_diff']:.2e}"
        if "psnr_db" in row.numerics:
            num += f" PSNR {row.numerics['psnr_db']:.1f} dB"
    note = "" if row.status == "ok" else "  " + (row.notes[-1][:120] if row.notes else "")
    return (f"{row.stage:24s} {row.precision:5s} {row.mode:8s} {row.status:11s}"
            f"{ms(row.median_ms)}{ms(row.p99_ms)} {row.frames:5d} {fps}{num}{note}")


def cost_lines(costs: dict[str, Any]) -> list[str]:
    """The console lines of M's and G's FLOPs and minimum bytes per frame."""
    lines = []
    for name in ("receiver.M", "receiver.G"):
        c = costs[name]
        lines.append(f"{name}: {c['gflops']:.2f} GFLOP/frame (convs + matmuls), min bytes "
                     f"{c['min_bytes']['fp32'] / 2**20:.1f} MiB fp32 / "
                     f"{c['min_bytes']['bf16'] / 2**20:.1f} MiB 16-bit")
    return lines


def write_json(report: dict[str, Any], path: Path) -> None:
    """The report as strict JSON (non-finite values nulled first; allow_nan=False checks it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(report), indent=2, default=_json_default,
                               allow_nan=False) + "\n")


def _finite(value: Any) -> Any:
    """A copy with NaN / ±inf floats replaced by None (strict JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return str(value)

