"""Speed of H/Δ, the sender's only network, at batch 1 on the CPU.

    python -m benchmarks.head_pose_speed [--config vox256] [--threads 2] [--frames 200]
                                         [--json PATH]

The model has random, UNTRAINED weights (seeded): inference speed does not depend
on the weight values, only on the architecture, so this needs no trained model.
Prints the median and p90 milliseconds per frame after a warm-up, under
``torch.inference_mode``, and optionally writes the result as JSON
``{name, env: {torch, device, threads, cpu}, results: [...]}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.env import cpu_name
from codec.config import CONFIGS, get_config
from codec.models import build_model

BENCHMARK_NAME = "head_pose_speed"



def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def time_head_pose(config_name: str, frames: int, warmup: int = 20, seed: int = 0
                   ) -> dict[str, Any]:
    """Time H/Δ of ``config_name`` on one random frame: ms per call over ``frames`` calls."""
    config = get_config(config_name)
    model = build_model(config, seed=seed)
    image = torch.rand(1, 3, config.image_size, config.image_size,
                       generator=torch.Generator().manual_seed(seed))
    times_ms: list[float] = []
    with torch.inference_mode():
        for _ in range(warmup):  # let oneDNN pick and cache its kernels
            model.head_pose(image)
        for _ in range(frames):
            start = time.perf_counter()
            model.head_pose(image)
            times_ms.append((time.perf_counter() - start) * 1e3)
    return {
        "config": config.name,
        "network": "head_pose (H/Δ)",
        "weights": "random, untrained (speed does not depend on weight values)",
        "input": f"1×3×{config.image_size}×{config.image_size}, resized inside to "
                 f"{config.head_pose_image_size}",
        "parameters": sum(p.numel() for p in model.head_pose.parameters()),
        "frames": frames,
        "warmup": warmup,
        "median_ms": statistics.median(times_ms),
        "p90_ms": _percentile(times_ms, 0.9),
        "min_ms": min(times_ms),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.head_pose_speed",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="vox256", choices=sorted(CONFIGS))
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--frames", type=int, default=200, help="timed calls after warm-up")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None, help="write results here as JSON")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.frames < 1 or args.warmup < 0:
        parser.error("--threads and --frames must be ≥ 1, --warmup ≥ 0")

    torch.set_num_threads(args.threads)
    result = time_head_pose(args.config, args.frames, args.warmup)
    print(f"H/Δ [{result['config']}, {result['parameters']:,} params, UNTRAINED random weights] "
          f"on CPU, {torch.get_num_threads()} threads, batch 1: "
          f"median {result['median_ms']:.2f} ms/frame, p90 {result['p90_ms']:.2f} ms/frame "
          f"({result['frames']} frames)")
    if args.json is not None:
        report = {
            "name": BENCHMARK_NAME,
            "env": {"torch": torch.__version__, "device": "cpu",
                    "threads": torch.get_num_threads(), "cpu": cpu_name(),
                    "python": platform.python_version()},
            "results": [result],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
