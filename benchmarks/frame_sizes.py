"""Bits per frame at the picture's own size: the same clips coded as a 256-px face crop, a
512-px face crop and the whole frame (capped at 1280×720), with the same Encoder settings.

    python -m benchmarks.frame_sizes --frames 250 --json benchmarks/results/frame-sizes-dev.json

Motion is in resolution-free units (:func:`codec.face3d.frame_to_unit`), so the motion bits
of a 256- and a 512-px crop of the same box should agree; the whole frame frames the face
differently (smaller in the picture), so its translation and scale move differently in those
units. Clips whose short side is under ``--min-short`` pixels are skipped with the reason
(the whole frame would be below a 512 crop). Keyframes are the shipped codec (AV1) at its
shipped quality, so their bytes grow with the picture; patches are on.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.env import git_state, write_json


def _clip_frames(path: Path, frames: int, fps: float) -> list[np.ndarray]:
    from codec.media import read_frames

    return [item.image for item in read_frames(path, fps=fps, max_frames=frames)]


def code(model, pictures: list[np.ndarray], fps: float) -> dict:
    """Encode ``pictures`` with ``model`` (already at its size); what the stream costs."""
    from codec.api import Encoder

    encoder = Encoder(model, frame_rate=fps)
    started = time.perf_counter()
    for i, picture in enumerate(pictures):
        encoder.encode(picture, i / fps)
    seconds = time.perf_counter() - started
    stats = encoder.stats
    frames = max(stats.motion_packets, 1)
    return {"size": list(model.frame_size), "whole_frame": model.whole_frame, "frames": stats.frames,
            "motion_bits_per_frame": 8.0 * stats.motion_bytes / frames,
            "keyframe_bytes": stats.keyframe_bytes, "patches": stats.patches, "patch_bytes": stats.patch_bytes,
            "encode_ms_per_frame": 1000.0 * seconds / max(len(pictures), 1)}


def run(manifest: Path, split: str, frames: int, fps: float, min_short: int,
        limit: tuple[int, int], clips: list[str] | None) -> dict:
    from benchmarks.rd.clips import manifest_clips
    from codec.facecrop import FIT_FRAMES, FaceCropper
    from codec.keyframe import fit_frame, frame_size_within
    from codec.zoo import resolve_model

    model = resolve_model("landmark", refiner=False)
    results, skipped = [], {}
    for clip in manifest_clips(manifest, split):
        if clips and clip.name not in clips:
            continue
        pictures = _clip_frames(clip.path, frames, fps)
        if not pictures:
            skipped[clip.name] = "no frames"
            continue
        height, width = pictures[0].shape[:2]
        if min(height, width) < min_short:
            skipped[clip.name] = f"{width}×{height}: short side under {min_short} px"
            print(f"skip {clip.name}: {skipped[clip.name]}", file=sys.stderr)
            continue
        box = FaceCropper(out_size=256).fit(pictures[:FIT_FRAMES])
        row = {"clip": clip.name, "source_size": [width, height]}
        for name, side in (("crop256", 256), ("crop512", 512)):
            crops = [box.crop(picture, side) for picture in pictures]
            row[name] = code(model.at_size(side, side), crops, fps)
        size = frame_size_within(width, height, limit)
        row["frame"] = code(model.at_size(*size, whole_frame=True), [fit_frame(p, size) for p in pictures], fps)
        results.append(row)
        print(clip.name, {k: round(row[k]["motion_bits_per_frame"], 1) for k in ("crop256", "crop512", "frame")},
              file=sys.stderr)
    summary = {}
    for name in ("crop256", "crop512", "frame"):
        if results:
            summary[name] = {
                "motion_bits_per_frame": float(np.mean([r[name]["motion_bits_per_frame"] for r in results])),
                "keyframe_bytes": float(np.mean([r[name]["keyframe_bytes"] for r in results])),
                "patch_bytes": float(np.mean([r[name]["patch_bytes"] for r in results])),
                "encode_ms_per_frame": float(np.median([r[name]["encode_ms_per_frame"] for r in results]))}
    return {"name": "frame-sizes", "split": split, "frames": frames, "fps": fps, "min_short": min_short,
            "limit": list(limit), "env": git_state(), "skipped": skipped, "summary": summary, "results": results}


def main(argv: list[str] | None = None) -> int:
    default_manifest = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "talking" / "MANIFEST.tsv"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, default=None, help="clip manifest (default: the shared one)")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--min-short", type=int, default=480)
    parser.add_argument("--clips", nargs="*", default=None, help="only these clip names")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    report = run(args.manifest or default_manifest, args.split, args.frames, args.fps, args.min_short,
                 (1280, 720), args.clips)
    for name, values in report["summary"].items():
        print(f"{name:8s} motion {values['motion_bits_per_frame']:.1f} bits/frame, keyframe "
              f"{values['keyframe_bytes']:.0f} B, patches {values['patch_bytes']:.0f} B, "
              f"encode {values['encode_ms_per_frame']:.1f} ms/frame")
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
