"""The command line of ``python -m benchmarks.speed``: flags and their defaults per device,
the console table, and the JSON file."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from codec.config import CONFIGS

from .bench import run
from .results import ROW_HEADER, cost_lines, write_json
from .stages import FRAME_STAGES, HOST_STAGES, KEYFRAME_STAGES, MODES, PRECISIONS, WEIGHTS_NOTE


def _parse_list(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"{what}: {bad or text!r} not in {allowed}")
    return items


def _description() -> str:
    """The first paragraph of the package docstring (what --help says the benchmark is)."""
    return (sys.modules[__package__].__doc__ or "").split("\n\n")[0]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The flags, checked (argparse exits with status 2 on a bad one)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=_description())
    parser.add_argument("--config", default="vox256", choices=sorted(CONFIGS))
    parser.add_argument("--device", default="cpu", help="cpu or cuda (or cuda:N)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--precisions", default=None,
                        type=lambda s: _parse_list(s, PRECISIONS, "--precisions"),
                        help="default fp32,bf16,fp16 on CUDA, fp32,bf16 on the CPU")
    parser.add_argument("--modes", default=None,
                        type=lambda s: _parse_list(s, MODES, "--modes"),
                        help="default eager,compile,graph on CUDA, eager on the CPU")
    parser.add_argument("--frames", type=int, default=None,
                        help="timed frames per stage (default 200; on the CPU the heavy "
                             "stages use --cpu-heavy-frames)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--cpu-heavy-frames", type=int, default=20,
                        help="CPU only: timed frames of F, L, M, warp, G, render (≈0.6 s each)")
    parser.add_argument("--cpu-heavy-warmup", type=int, default=2)
    parser.add_argument("--compile-mode", default=None,
                        help="torch.compile mode (default: max-autotune-no-cudagraphs on CUDA, "
                             "default on the CPU)")
    parser.add_argument("--compile-timeout", type=float, default=900.0,
                        help="seconds allowed for each first compiled call (0 = no limit)")
    parser.add_argument("--stages", default=None,
                        help="comma-separated subset of stages (default: all)")
    parser.add_argument("--json", type=Path, default=None, help="write the report here as JSON")
    args = parser.parse_args(argv)
    if args.threads < 1 or (args.frames is not None and args.frames < 1) or args.warmup < 1:
        parser.error("--threads, --frames and --warmup must be ≥ 1")
    all_stages = (*HOST_STAGES, *KEYFRAME_STAGES, *FRAME_STAGES)
    args.stages = (_parse_list(args.stages, all_stages, "--stages") if args.stages else None)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print its table and costs, and write --json; 0 when done."""
    args = parse_args(argv)
    print(ROW_HEADER)
    cuda = args.device.startswith("cuda")
    precisions = args.precisions or (list(PRECISIONS) if cuda else ["fp32", "bf16"])
    # CPU compile takes minutes on 2 cores and CUDA graphs are CUDA-only: opt in on the CPU
    modes = args.modes or (list(MODES) if cuda else ["eager"])
    started = time.perf_counter()
    report = run(args.config, args.device, args.threads, precisions, modes,
                 args.frames, args.warmup, args.cpu_heavy_frames, args.cpu_heavy_warmup,
                 args.compile_mode, args.compile_timeout or None, args.stages)
    # what produced the numbers (benchmarks.report prints it beside the table)
    report["command"] = "python -m benchmarks.speed " + " ".join(
        sys.argv[1:] if argv is None else list(argv))
    report["wall_s"] = time.perf_counter() - started
    for line in cost_lines(report["costs"]):
        print(line)
    print(f"weights: {WEIGHTS_NOTE}")
    if args.json is not None:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    return 0
