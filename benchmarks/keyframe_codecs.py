"""Which image coder should carry keyframes: bytes against the quality of the frames rebuilt
from them (not of the keyframe itself: the receiver never shows the keyframe for long).

For each coder and quality, every dev segment's frame 0 is coded, decoded and used as the
receiver's keyframe; the default model (warp, reference patches, refiner) rebuilds every
N-th frame of the segment from it (``benchmarks.landmark_dev``'s loop: motion through the
real quantizer and range coder). Coders:

- ``webp`` — OpenCV's libwebp, what the bitstream carries today (qualities 60–95);
- ``av1`` — one intra frame of SVT-AV1 (PyAV ``libsvtav1``, preset 6, CRF sweep), decoded
  by dav1d: the AV1 still-image route (AVIF without its container);
- ``av1slow`` — the same at preset 3 with SVT-AV1's visual-quality tuning (``tune=0``): a
  keyframe is rare, so it can take ~70 ms instead of ~35;
- ``h264`` — one x264 IDR frame (preset veryslow, tune stillimage, CRF sweep) with its SEI
  (x264's ~600-byte settings string) stripped, decoded by FFmpeg's H.264 decoder.

The JSON gives each point's mean keyframe bytes, keyframe PSNR and rebuilt PSNR / LPIPS,
each coder's bytes at the LPIPS of WebP q90 (interpolated on its curve, as the rd
benchmark's matched-quality rates are) and its Bjøntegaard delta rate against WebP.

    python -m benchmarks.keyframe_codecs --data cache/dev256 --every 25 \\
        --out benchmarks/results/keyframe-codecs.json

Choosing the shipped keyframe quality (``--manifest``, no cache needed): the clips of a
split (``--clips`` of them, evenly spaced through the manifest), their protocol crops
(``benchmarks.rd``'s) and dlib landmarks on every frame, coded by the shipped coders
themselves (``webpq`` / ``av1q``: :func:`codec.keyframe.encode_keyframe` on its 1-100 quality
scale). The JSON's ``knee`` per coder is the lowest quality whose rebuilt LPIPS stays within
``--tolerance`` of the coder's current default: tune it on train, confirm it on dev.

    python -m benchmarks.keyframe_codecs --manifest ../shared/data/talking/MANIFEST.tsv \\
        --split train --clips 8 --frames 150 --every 5 --codecs av1q,webpq \\
        --out benchmarks/results/keyframe-quality-train.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np

from benchmarks.landmark_dev import evaluate_segment
from benchmarks.rd.curves import bd_rate, rate_for_quality
from codec.keyframe import decode_keyframe, encode_keyframe
from codec.motion_coding import DEFAULT_QUALITY
from evaluation.metrics import lpips_model
from training.dataset import read_segment

SWEEPS = {"webp": (60, 70, 80, 90, 95), "av1": (32, 26, 20, 14, 8), "av1slow": (34, 28, 22, 16, 12, 8),
          "h264": (26, 22, 18, 14, 10),
          # the shipped coders on their 1-100 scale (AV1: CRF = 63·(100 - q)/100)
          "av1q": (52, 60, 66, 70, 74, 78, 84), "webpq": (70, 80, 85, 90, 95)}
QUICK = {"webp": (70, 90), "av1": (26, 14), "av1slow": (34, 22), "h264": (22, 14)}
REFERENCE = ("webp", 90)


def _av_still(image: np.ndarray, encoder: str, decoder: str, options: dict[str, str]) -> tuple[bytes, np.ndarray]:
    """One frame through a PyAV video encoder and back: (its bytes, the decoded RGB image)."""
    import av

    from codec.media.h264 import annexb_units

    context = av.CodecContext.create(encoder, "w")
    context.width, context.height = image.shape[1], image.shape[0]
    context.pix_fmt = "yuv420p"
    context.time_base = Fraction(1, 25)
    context.options = options
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24").reformat(format="yuv420p")
    frame.pts = 0
    data = b"".join(bytes(p) for p in [*context.encode(frame), *context.encode(None)])
    if encoder == "libx264":  # drop SEI units (type 6): x264's settings string, no picture data
        data = b"".join(data[start:end] for start, payload, end in annexb_units(data)
                        if data[payload] & 0x1F != 6)
    reader = av.CodecContext.create(decoder, "r")
    frames = [*reader.decode(av.Packet(data)), *reader.decode(None)]
    return data, frames[0].to_ndarray(format="rgb24")


def still_coder(codec: str, quality: int) -> Callable[[np.ndarray], tuple[bytes, np.ndarray]]:
    """image -> (bytes, decoded image) for one coder at one quality (WebP quality or CRF;
    ``av1q`` / ``webpq``: the shipped keyframe coder at its 1-100 quality)."""
    if codec in ("av1q", "webpq"):
        name = codec[:-1]

        def shipped(image: np.ndarray) -> tuple[bytes, np.ndarray]:
            data = encode_keyframe(image, name, quality)
            return data, decode_keyframe(data, name)
        return shipped
    if codec == "webp":
        def webp(image: np.ndarray) -> tuple[bytes, np.ndarray]:
            data = encode_keyframe(image, "webp", quality)
            return data, decode_keyframe(data, "webp")
        return webp
    if codec == "av1":
        return lambda image: _av_still(image, "libsvtav1", "libdav1d", {"crf": str(quality), "preset": "6"})
    if codec == "av1slow":
        return lambda image: _av_still(image, "libsvtav1", "libdav1d", {"crf": str(quality), "preset": "3",
                                                                         "svtav1-params": "tune=0"})
    if codec == "h264":
        return lambda image: _av_still(image, "libx264", "h264", {"crf": str(quality), "preset": "veryslow",
                                                                  "tune": "stillimage"})
    raise ValueError(f"unknown coder {codec!r}")


def cached_segments(data: Path, limit: int | None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, frames, landmarks) of the first ``limit`` segments of a cached dev set."""
    index = json.loads((data / "index.json").read_text(encoding="utf-8"))
    if index.get("split") != "dev":
        raise SystemExit(f"{data} is not the dev split")
    return [(s["name"], *read_segment(data, s)) for s in index["segments"][:limit]]


def manifest_segments(manifest: Path, split: str, count: int, frames: int,
                      crops_dir: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, frames, landmarks) of ``count`` clips of a split, evenly spaced through the
    manifest: the rd protocol's crops and dlib's landmarks on every frame (a frame without a
    face keeps the last landmarks). Clips that the protocol skips, or without a face in the
    first frame, are left out (printed)."""
    from benchmarks.rd.clips import SkipClip, load_crops, manifest_clips
    from codec.facecrop import detect_landmarks

    clips = manifest_clips(manifest, split)
    out = []
    for clip in clips[::max(1, len(clips) // count)]:
        if len(out) >= count:
            break
        try:
            crops = np.asarray(load_crops(clip, 256, frames, crops_dir))
        except SkipClip as exc:
            print(f"skip {clip.name}: {exc}", flush=True)
            continue
        landmarks, last = [], None
        for crop in crops:
            found = detect_landmarks(crop)
            last = found if found is not None else last
            landmarks.append(last)
        if landmarks[0] is None:
            print(f"skip {clip.name}: no face in the first frame", flush=True)
            continue
        out.append((clip.name, crops, np.stack(landmarks).astype(np.float64)))
    return out


def knees(points: list[dict], tolerance: float) -> dict[str, dict]:
    """Per shipped coder (``av1q`` / ``webpq``): its current default's point and the lowest
    swept quality whose rebuilt LPIPS is within ``tolerance`` of it (the knee)."""
    from codec.keyframe import default_keyframe_quality

    out = {}
    for codec in ("av1q", "webpq"):
        curve = {pt["quality"]: pt for pt in points if pt["codec"] == codec}
        default = default_keyframe_quality(codec[:-1])
        if default not in curve:
            continue
        base = curve[default]
        within = [q for q, pt in curve.items() if pt["lpips"] <= base["lpips"] + tolerance]
        knee = curve[min(within)]
        out[codec] = {"default_quality": default, "default_bytes": base["keyframe_bytes"],
                      "default_lpips": base["lpips"], "knee_quality": knee["quality"],
                      "knee_bytes": knee["keyframe_bytes"], "knee_lpips": knee["lpips"],
                      "bytes_saved_pct": 100.0 * (1 - knee["keyframe_bytes"] / base["keyframe_bytes"])}
        print(f"{codec}: knee q{knee['quality']} {knee['keyframe_bytes']:.0f} B LPIPS {knee['lpips']:.4f} "
              f"(default q{default}: {base['keyframe_bytes']:.0f} B, {base['lpips']:.4f})", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.keyframe_codecs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("cache/dev256"), help="cached dev crops (default: %(default)s)")
    p.add_argument("--manifest", type=Path, default=None,
                   help="read --clips clips of --split from this manifest instead of --data")
    p.add_argument("--split", default="train", help="with --manifest (default: %(default)s)")
    p.add_argument("--clips", type=int, default=8, help="with --manifest (default: %(default)s)")
    p.add_argument("--frames", type=int, default=150, help="with --manifest: first N frames (default: %(default)s)")
    p.add_argument("--qualities", action="append", default=[], metavar="[CODER=]Q,Q",
                   help="these qualities instead of the sweep: for every coder (66,78), or for one "
                        "(av1q=66,78; repeat the flag per coder)")
    p.add_argument("--tolerance", type=float, default=0.001,
                   help="the knee: rebuilt LPIPS allowed above the default quality's (default: %(default)s)")
    p.add_argument("--every", type=int, default=25, help="rebuild every N-th frame (default: %(default)s)")
    p.add_argument("--codecs", default="webp,av1,h264", help="coders to sweep (default: %(default)s)")
    p.add_argument("--segments", type=int, default=None, help="first N dev segments only (a quick look)")
    p.add_argument("--out", type=Path, required=True, help="write the JSON here")
    args = p.parse_args(argv)
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration per frame otherwise
    from benchmarks.env import cpu_name, git_state
    from codec.zoo import load_landmark_model

    env = {**git_state(), "cpu": cpu_name()}  # the code as it was when the run started
    model = load_landmark_model()
    codecs = args.codecs.split(",")
    if args.manifest is not None:
        segments = manifest_segments(args.manifest, args.split, args.clips, args.frames, Path("out/keyframe-crops"))
    else:
        segments = cached_segments(args.data, args.segments)
    lpips = lpips_model("cpu")
    points = []
    for codec in codecs:
        sweep = (QUICK if args.segments else SWEEPS)[codec]
        for item in args.qualities:
            coder, _, values = item.rpartition("=")
            if coder in ("", codec):
                sweep = tuple(int(q) for q in values.split(","))
        for quality in sweep:
            started = time.perf_counter()
            coder = still_coder(codec, quality)
            rows = [{"segment": name, **evaluate_segment(model, frames, landmarks, args.every, DEFAULT_QUALITY,
                                                         lpips, code_keyframe=coder)}
                    for name, frames, landmarks in segments]
            point = {"codec": codec, "quality": quality,
                     **{key: float(np.mean([r[key] for r in rows]))
                        for key in ("keyframe_bytes", "keyframe_psnr", "psnr", "lpips")},
                     "segments": {r["segment"]: {k: r[k] for k in ("keyframe_bytes", "psnr", "lpips")}
                                  for r in rows}}
            points.append(point)
            print(f"{codec:5s} {quality:3d}: keyframe {point['keyframe_bytes']:6.0f} B "
                  f"{point['keyframe_psnr']:5.2f} dB | rebuilt {point['psnr']:5.2f} dB LPIPS {point['lpips']:.4f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    result = {"every": args.every, "command": "python -m benchmarks.keyframe_codecs " + " ".join(
        sys.argv[1:] if argv is None else argv), "env": env,
        "segments": [name for name, _, _ in segments], "frames": [len(f) for _, f, _ in segments]}
    if args.manifest is not None:
        result.update(split=args.split, tolerance=args.tolerance, knee=knees(points, args.tolerance))
    if any((pt["codec"], pt["quality"]) == REFERENCE for pt in points):
        result.update(_summary(points))
    result["points"] = points
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


def _summary(points: list[dict]) -> dict:
    """Each coder's bytes at WebP q90's rebuilt LPIPS and its BD-rate against WebP."""
    reference = next(pt for pt in points if (pt["codec"], pt["quality"]) == REFERENCE)
    summary = {}
    for codec in dict.fromkeys(pt["codec"] for pt in points):
        curve = [pt for pt in points if pt["codec"] == codec]
        rates, values = [pt["keyframe_bytes"] for pt in curve], [pt["lpips"] for pt in curve]
        at = rate_for_quality(rates, values, reference["lpips"], lower_is_better=True)
        webp = [pt for pt in points if pt["codec"] == "webp"]
        summary[codec] = {
            "bytes_at_reference_lpips": at,
            "saving_at_reference_lpips_pct": None if at is None else 100.0 * (1 - at / reference["keyframe_bytes"]),
            "bd_rate_vs_webp_pct": bd_rate([pt["keyframe_bytes"] for pt in webp], [pt["lpips"] for pt in webp],
                                           rates, values, lower_is_better=True)}
        print(f"{codec}: {summary[codec]}")
    return {"reference": {"codec": REFERENCE[0], "quality": REFERENCE[1], "lpips": reference["lpips"],
                          "keyframe_bytes": reference["keyframe_bytes"]}, "summary": summary}


if __name__ == "__main__":
    raise SystemExit(main())
