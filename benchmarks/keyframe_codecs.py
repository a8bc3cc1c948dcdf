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
"""

from __future__ import annotations

import argparse
import json
import os
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
          "h264": (26, 22, 18, 14, 10)}
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
    """image -> (bytes, decoded image) for one coder at one quality (WebP quality or CRF)."""
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.keyframe_codecs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("cache/dev256"), help="cached dev crops (default: %(default)s)")
    p.add_argument("--every", type=int, default=25, help="rebuild every N-th frame (default: %(default)s)")
    p.add_argument("--codecs", default="webp,av1,h264", help="coders to sweep (default: %(default)s)")
    p.add_argument("--segments", type=int, default=None, help="first N dev segments only (a quick look)")
    p.add_argument("--out", type=Path, required=True, help="write the JSON here")
    args = p.parse_args(argv)
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration per frame otherwise
    from codec.zoo import load_landmark_model

    model = load_landmark_model()
    index = json.loads((args.data / "index.json").read_text(encoding="utf-8"))
    if index.get("split") != "dev":
        p.error(f"{args.data} is not the dev split")
    segments = [(s["name"], *read_segment(args.data, s)) for s in index["segments"][:args.segments]]
    lpips = lpips_model("cpu")
    points = []
    for codec in args.codecs.split(","):
        for quality in (QUICK if args.segments else SWEEPS)[codec]:
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"every": args.every, "reference": {"codec": REFERENCE[0],
                                                                        "quality": REFERENCE[1],
                                                                        "lpips": reference["lpips"],
                                                                        "keyframe_bytes": reference["keyframe_bytes"]},
                                    "summary": summary, "points": points}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
