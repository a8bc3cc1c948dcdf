"""Wall time of ``facecodec decompress`` per frame, whole: read the .fvc, load the model,
decode the motion, warp, refine, write the H.264 video with its audio
(:func:`codec.files.decompress`, each run in a fresh process, timed inside it: the
interpreter's start and imports are not counted).

    python -m benchmarks.decompress_speed --runs 5 --json out/decompress_speed.json

Variants, run in turn (A B C A B C ...) so that a machine whose load drifts moves them all:

- ``fast``: as ``facecodec decompress`` runs now: the refiner traced and frozen, its U-Net
  in bfloat16 where the CPU computes that natively (``LandmarkModel.refiner_mode``), and
  OpenMP's idle threads sleeping (``OMP_WAIT_POLICY=PASSIVE``, set by the command);
- ``float32``: the same, the refiner's U-Net in float32;
- ``eager``: the same, the refiner run eager (the module as loaded);
- ``spin``: ``fast`` with OpenMP's default waiting (idle threads spin before they sleep);
- ``before``: ``eager`` with OpenMP's default waiting: the command before either change;
- ``plain``: ``--no-refiner``, the warp alone.

Each run's ms/frame, every variant's median and its ratio to ``before`` pair by pair go to
the JSON, with how far each refiner's frames are from the eager ones (uint8, before the
video is coded). The machine is shared: compare within one run, and read the load averages
recorded beside the figures.

Input: ``--stream`` FILE, else the project's default input (``sender.sources``: the
portrait with scripted motion and audio), ``--frames`` frames at 25 fps, compressed once
with the default model into ``--work`` and kept there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.env import REPO

# variant -> (refiner_mode, or None for the plain warp; OMP_WAIT_POLICY, or None for OpenMP's default)
VARIANTS: dict[str, tuple[str | None, str | None]] = {
    "fast": ("fast", "PASSIVE"),
    "float32": ("float32", "PASSIVE"),
    "eager": ("eager", "PASSIVE"),
    "spin": ("fast", None),
    "before": ("eager", None),
    "plain": (None, "PASSIVE"),
}


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


def variant_model(refiner_mode: str | None, name: str):
    from codec.zoo import resolve_model

    model = resolve_model(name, refiner=refiner_mode is not None)
    if refiner_mode is not None:
        model.refiner_mode = refiner_mode
    return model


def one_run(stream: Path, out: Path, refiner_mode: str | None, batch_size: int) -> dict[str, float]:
    """One decompress, in this process: its seconds (the model's loading included) and frames."""
    from codec.bitstream import read_container
    from codec.files import decompress

    with open(stream, "rb") as f:
        name = read_container(f).header.model_name
    started = time.perf_counter()
    model = variant_model(refiner_mode, name)
    report = decompress(stream, out, model=model, batch_size=batch_size)
    return {"seconds": time.perf_counter() - started, "frames": report.frames}


def time_variant(variant: str, stream: Path, work: Path, batch_size: int, threads: int | None) -> dict[str, float]:
    """One run of ``variant`` in a fresh process (OpenMP reads its policy when torch loads)."""
    refiner_mode, policy = VARIANTS[variant]
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    command = [sys.executable, "-m", "benchmarks.decompress_speed", "--one", refiner_mode or "plain",
               "--stream", str(stream.resolve()), "--work", str(work.resolve()), "--batch-size", str(batch_size)]
    if threads is not None:
        command += ["--threads", str(threads)]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def frame_differences(stream: Path, batch_size: int, modes: list[str]) -> dict[str, dict]:
    """How far each refiner mode's frames are from the eager refiner's (uint8 levels, PSNR in dB)."""
    from codec.api import Decoder
    from codec.bitstream import read_container

    with open(stream, "rb") as f:
        container = read_container(f)

    def frames(mode: str | None) -> np.ndarray:
        decoder = Decoder(container.header, variant_model(mode, container.header.model_name))
        return np.stack([frame.image for frame in
                         decoder.decode_stream(container.video_packets, batch_size=batch_size)]).astype(np.int16)

    eager = frames("eager")
    out = {}
    for mode in modes:
        difference = np.abs(frames(None if mode == "plain" else mode) - eager)
        mse = float(np.mean(difference.astype(np.float64) ** 2))
        out[mode] = {"max_abs": int(difference.max()), "mean_abs": float(difference.mean()),
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
    p.add_argument("--variants", default="fast,before,plain",
                   help="comma-separated, of " + ", ".join(VARIANTS) + " (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=4, help="as decompress --batch-size (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--one", choices=["fast", "float32", "eager", "plain"], default=None,
                   help=argparse.SUPPRESS)  # a child process: one run, one JSON line
    args = p.parse_args(argv)
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.one is not None:
        mode = None if args.one == "plain" else args.one
        print(json.dumps(one_run(args.stream, args.work / f"{args.one}.mp4", mode, args.batch_size)))
        return 0

    from benchmarks.env import cpu_name, git_state, write_json

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants: {', '.join(sorted(unknown))}")
    stream = args.stream or default_stream(args.work, args.frames)
    args.work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    time_variant(variants[0], stream, args.work, args.batch_size, args.threads)  # page cache
    runs: dict[str, list[float]] = {v: [] for v in variants}
    frames = 0
    for run in range(args.runs):
        for variant in variants:
            timed = time_variant(variant, stream, args.work, args.batch_size, args.threads)
            frames = int(timed["frames"])
            runs[variant].append(1000.0 * timed["seconds"] / max(frames, 1))
            print(f"run {run + 1}/{args.runs} {variant:7s} {runs[variant][-1]:6.1f} ms/frame "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    load_after = os.getloadavg()
    results = {}
    for variant, values in runs.items():
        median = float(np.median(values))
        row = {"refiner_mode": VARIANTS[variant][0], "omp_wait_policy": VARIANTS[variant][1],
               "ms_per_frame": values, "median_ms_per_frame": median, "median_fps": 1000.0 / median}
        if "before" in runs and variant != "before":
            ratios = [a / b for a, b in zip(values, runs["before"])]
            row["ratio_to_before"] = ratios
            row["median_ratio_to_before"] = float(np.median(ratios))
        results[variant] = row
        print(f"{variant:7s} median {median:6.1f} ms/frame ({1000.0 / median:5.1f} frames/s)"
              + (f", {row['median_ratio_to_before']:.2f}x before's time" if "median_ratio_to_before" in row
                 else ""))
    modes = sorted({VARIANTS[v][0] or "plain" for v in variants} - {"eager"})
    differences = frame_differences(stream, args.batch_size, modes)
    for mode, row in differences.items():
        print(f"{mode} vs eager frames: max |diff| {row['max_abs']} of 255, mean {row['mean_abs']:.4f}, "
              f"{100 * row['share_of_values_differing']:.3f}% of values differ, PSNR {row['psnr_db']:.1f} dB")
    report = {
        "name": "decompress-speed", "stream": str(stream), "frames": frames, "batch_size": args.batch_size,
        "env": {**git_state(), "cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                "torch_threads": args.threads or torch.get_num_threads(), "load_average_before": load_before,
                "load_average_after": load_after},
        "command": "python -m benchmarks.decompress_speed " + " ".join(sys.argv[1:] if argv is None else argv),
        "results": results, "pixels_against_eager": differences,
    }
    if args.json is not None:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
