"""Wall time of ``facecodec decompress`` per frame, whole: read the .fvc, decode the motion,
warp, refine, write the H.264 video with its audio (:func:`codec.files.decompress`, with
the model's loading, as the command does it; the interpreter's start and imports are not
counted).

    python -m benchmarks.decompress_speed --runs 5 --json out/decompress_speed.json

Variants, run in turn (A B C A B C ...) so that a machine whose load drifts moves them all:
the refiner's ``LandmarkModel.refiner_mode`` ``fast`` (as shipped: traced and frozen, its
U-Net in bfloat16 where the CPU computes that natively), ``float32`` (traced and frozen) and
``eager`` (the module as loaded, as before), and ``plain`` (``--no-refiner``: the warp
alone). Each run's ms/frame, every variant's median and the ratio to ``eager`` pair by pair
go to the JSON, with how far each variant's frames are from the eager ones (uint8, before
the video is coded). The machine is shared: compare within one run, and read the load
averages recorded beside the figures.

Input: ``--stream`` FILE, else the project's default input (``sender.sources``: the
portrait with scripted motion and audio), ``--frames`` frames at 25 fps, compressed once
with the default model into ``--work`` and kept there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

VARIANTS = ("fast", "float32", "eager", "plain")


def default_stream(work: Path, frames: int) -> Path:
    """The default input, compressed (made once, then reused)."""
    from app.__main__ import main as facecodec
    from sender.sources import write_default_clip

    stream = work / f"default-{frames}.fvc"
    if not stream.is_file():
        work.mkdir(parents=True, exist_ok=True)
        clip = write_default_clip(work / f"default-{frames}.mp4", num_frames=frames, fps=25.0)
        if facecodec(["compress", str(clip), str(stream)]) != 0:
            raise SystemExit(f"could not compress {clip}")
    return stream


def variant_model(variant: str, name: str):
    from codec.zoo import resolve_model

    model = resolve_model(name, refiner=variant != "plain")
    if variant != "plain":
        model.refiner_mode = variant
    return model


def time_variant(stream: Path, out: Path, variant: str, name: str, batch_size: int) -> tuple[float, int]:
    """(seconds, frames) of one decompress with this variant's model, loaded inside the clock."""
    from codec.files import decompress

    started = time.perf_counter()
    model = variant_model(variant, name)
    report = decompress(stream, out, model=model, batch_size=batch_size)
    return time.perf_counter() - started, report.frames


def frame_differences(stream: Path, name: str, batch_size: int, variants: list[str]) -> dict[str, dict]:
    """How far each variant's frames are from the eager refiner's (uint8 levels, PSNR in dB)."""
    from codec.api import Decoder
    from codec.bitstream import read_container

    with open(stream, "rb") as f:
        container = read_container(f)

    def frames(variant: str) -> np.ndarray:
        decoder = Decoder(container.header, variant_model(variant, name))
        return np.stack([frame.image for frame in
                         decoder.decode_stream(container.video_packets, batch_size=batch_size)]).astype(np.int16)

    eager = frames("eager")
    out = {}
    for variant in variants:
        if variant == "eager":
            continue
        difference = np.abs(frames(variant) - eager)
        mse = float(np.mean(difference.astype(np.float64) ** 2))
        out[variant] = {"max_abs": int(difference.max()), "mean_abs": float(difference.mean()),
                        "share_of_values_differing": float((difference > 0).mean()),
                        "psnr_db": float(10 * np.log10(255.0 ** 2 / mse)) if mse > 0 else float("inf")}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decompress_speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stream", type=Path, default=None, help="a .fvc file (default: the default input)")
    p.add_argument("--frames", type=int, default=500, help="frames of the default input (default: %(default)s)")
    p.add_argument("--work", type=Path, default=Path("out/decompress_speed"),
                   help="where the default input and the decoded videos go (default: %(default)s)")
    p.add_argument("--runs", type=int, default=5, help="timed runs of each variant (default: %(default)s)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="comma-separated, of " + ", ".join(VARIANTS) + " (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=4, help="as decompress --batch-size (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    import torch

    from benchmarks.env import cpu_name, git_sha
    from codec.bitstream import read_container

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants: {', '.join(sorted(unknown))}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    stream = args.stream or default_stream(args.work, args.frames)
    with open(stream, "rb") as f:
        name = read_container(f).header.model_name
    args.work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    time_variant(stream, args.work / "warmup.mp4", variants[0], name, args.batch_size)  # page cache, imports
    runs: dict[str, list[float]] = {v: [] for v in variants}
    frames = 0
    for run in range(args.runs):
        for variant in variants:
            seconds, frames = time_variant(stream, args.work / f"{variant}.mp4", variant, name, args.batch_size)
            runs[variant].append(1000.0 * seconds / max(frames, 1))
            print(f"run {run + 1}/{args.runs} {variant:6s} {runs[variant][-1]:6.1f} ms/frame", flush=True)
    load_after = os.getloadavg()
    results = {}
    for variant, values in runs.items():
        median = float(np.median(values))
        row = {"ms_per_frame": values, "median_ms_per_frame": median, "median_fps": 1000.0 / median}
        if "eager" in runs and variant != "eager":
            ratios = [a / b for a, b in zip(values, runs["eager"])]
            row["ratio_to_eager"] = ratios
            row["median_ratio_to_eager"] = float(np.median(ratios))
        results[variant] = row
        print(f"{variant:6s} median {median:6.1f} ms/frame ({1000.0 / median:5.1f} frames/s)"
              + (f", {row['median_ratio_to_eager']:.2f}x eager's time" if "median_ratio_to_eager" in row else ""))
    differences = None
    if "eager" in variants:
        differences = frame_differences(stream, name, args.batch_size, variants)
        for variant, row in differences.items():
            print(f"{variant} vs eager frames: max |diff| {row['max_abs']} of 255, mean {row['mean_abs']:.4f}, "
                  f"{100 * row['share_of_values_differing']:.3f}% of values differ, PSNR {row['psnr_db']:.1f} dB")
    report = {
        "name": "decompress-speed", "stream": str(stream), "frames": frames, "batch_size": args.batch_size,
        "env": {"git_sha": git_sha(), "cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                "torch_threads": torch.get_num_threads(), "load_average_before": load_before,
                "load_average_after": load_after},
        "command": "python -m benchmarks.decompress_speed " + " ".join(sys.argv[1:] if argv is None else argv),
        "results": results, "pixels_against_eager": differences,
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
