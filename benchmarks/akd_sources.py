"""Where our AKD comes from: the landmark family's error split by source, per clip.

On the rd protocol's pictures (``benchmarks.rd.clips``: 256-px crops, or whole frames with
``--frame``) and its scored frames (0, K, 2K, … with ``--metric-every K``), the shipped sender
(``codec.api.Encoder``, one keyframe, quality Q) codes each clip, and every scored frame's
landmarks are compared, as AKD (``evaluation.metrics.FaceLandmarkMetrics``: mean distance of
dlib's 68 points), with dlib's on the real frame:

* ``tracker``: the sender tracker's own landmarks on that frame (no warp, no model): how far
  what the sender sees is from what the metric sees on the same picture;
* ``model``: the landmarks the receiver's motion model draws from the unquantised motion
  (the keyframe's canonical face driven by the fitted pose and expression coefficients);
* ``quantised``: the same from the motion as coded at quality Q;
* ``warp_*``: dlib re-detected on the rendered picture, from the unquantised (``raw``) or the
  quantised (``q``) motion, with the refiner (``refined``) or without (``plain``); the
  reference patches the sender sent so far are drawn in every render, as the receiver does;
* ``decoded``: dlib on the frame the Decoder rebuilds from the stream (what rd scores).

Each source's AKD is averaged over the frames where it and the real frame have a face, and
again over the frames where every source has one (``common``), so sources compare on the
same frames. ``--detect-side`` / ``--detect-fit`` try the whole-frame tracker's
alternatives (``codec.families.landmark``) without editing it.

    python -m benchmarks.akd_sources --manifest ../shared/data/talking/MANIFEST.tsv \\
        --split dev --size 256 --json benchmarks/results/akd-sources-dev.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from codec.progress import ProgressBar

from .rd.clips import SkipClip, load_crops, load_frames, manifest_clips
from .rd.ours import shipped_keyframes
from .rd.protocol import FPS, scored_indices

SOURCES = ("tracker", "model", "quantised", "warp_raw_plain", "warp_raw_refined", "warp_q_plain",
           "warp_q_refined", "decoded")


def _distance(pred: np.ndarray | None, ref: np.ndarray | None) -> float:
    """Mean point distance (px) of two 68-point sets; NaN when either is missing."""
    if pred is None or ref is None:
        return float("nan")
    return float(np.linalg.norm(pred - ref, axis=1).mean())


def clip_sources(pictures: np.ndarray, model: Any, quality: int, every: int, faces: Any,
                 whole_frame: bool) -> dict[str, Any]:
    """Per scored frame, each source's distance to dlib on the real picture (NaN: no face),
    and the stream's motion bytes."""
    from codec.api import Decoder, Encoder
    from codec.families.landmark import motion_from_landmarks

    n, height, width = pictures.shape[:3]
    model = model.at_size(width, height, whole_frame=whole_frame)
    plain = model.plain()
    keyframes = shipped_keyframes(whole_frame=whole_frame)
    encoder = Encoder(model, quality=quality, frame_rate=FPS, keyframe_codec=keyframes["codec"],
                      keyframe_quality=keyframes["quality"])
    header = encoder.header()
    wanted = set(scored_indices(n, every).tolist())
    stream: list[bytes] = []
    values: dict[str, list[float]] = {name: [] for name in SOURCES if name != "decoded"}
    real_found = []
    for i in range(n):
        picture = np.ascontiguousarray(pictures[i])
        stream += encoder.encode(picture, timestamp=i / FPS)
        if i not in wanted:
            continue
        # The sender's state after this frame (a diagnostic reads the Encoder's internals):
        # its tracker's landmarks, the motion they fit, that motion as coded, and the
        # receiver's source as the sender mirrors it (keyframe and the patches sent so far).
        tracked = encoder._tracker._last
        source = encoder._local_source
        coded = encoder._motion.last_decoded
        ref = faces.landmarks([picture])[0]
        real_found.append(ref is not None)
        raw = None if tracked is None else motion_from_landmarks(tracked, model.frame_size, model.face)
        usable_raw = raw is not None and bool(np.all(np.isfinite(raw))) and source is not None
        usable_q = coded is not None and bool(np.all(np.isfinite(coded))) and source is not None
        values["tracker"].append(_distance(tracked, ref))
        values["model"].append(_distance(model._landmarks_px(source, raw), ref) if usable_raw else np.nan)
        values["quantised"].append(_distance(model._landmarks_px(source, coded), ref) if usable_q else np.nan)
        for name, motion, usable in (("raw", raw, usable_raw), ("q", coded, usable_q)):
            for kind, renderer in (("plain", plain), ("refined", model)):
                if not usable:
                    values[f"warp_{name}_{kind}"].append(np.nan)
                    continue
                image = renderer.render(source, motion[None])[0]
                values[f"warp_{name}_{kind}"].append(_distance(faces.landmarks([image])[0], ref))
    motion_bytes = encoder.stats.motion_bytes
    decoder = Decoder.from_header(header, model=model)
    decoded = [frame.image for frame in decoder.decode_stream(stream, batch_size=1,
                                                              render=lambda seq: seq % every == 0)]
    refs = faces.landmarks([np.ascontiguousarray(pictures[i]) for i in sorted(wanted)])
    values["decoded"] = [_distance(p, r) for p, r in zip(faces.landmarks(decoded), refs)]
    return {"values": values, "motion_bytes": int(motion_bytes),
            "motion_kbps": 8.0 * motion_bytes / (n / FPS) / 1000.0, "frames": int(n),
            "picture_size": [int(width), int(height)], "real_face_frames": int(sum(real_found))}


def summarise(values: dict[str, list[float]]) -> dict[str, Any]:
    """Each source's mean over its own valid frames, and over the frames every source has."""
    table = np.array([values[name] for name in SOURCES], np.float64)
    common = np.all(np.isfinite(table), axis=0)
    out: dict[str, Any] = {"common_frames": int(common.sum())}
    for k, name in enumerate(SOURCES):
        row = table[k]
        finite = np.isfinite(row)
        out[name] = float(row[finite].mean()) if finite.any() else None
        out[f"{name}_frames"] = int(finite.sum())
        out[f"{name}_common"] = float(row[common].mean()) if common.any() else None
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.akd_sources", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", type=Path, required=True, help="MANIFEST.tsv of the clips")
    p.add_argument("--folder", type=Path, default=None, help="clip paths relative to this (default: the manifest's)")
    p.add_argument("--split", default="dev", help="manifest split (default: %(default)s)")
    p.add_argument("--clips", type=int, default=None, help="first N clips only")
    protocol = p.add_mutually_exclusive_group()
    protocol.add_argument("--size", type=int, default=256, help="crop side (default: %(default)s)")
    protocol.add_argument("--frame", action="store_true", help="whole frames (rd's --frame protocol)")
    p.add_argument("--frames", type=int, default=250, help="frames per clip (default: %(default)s)")
    p.add_argument("--metric-every", type=int, default=25, help="score every K-th frame (default: %(default)s)")
    p.add_argument("--quality", type=int, default=3, help="motion quality (default: %(default)s)")
    p.add_argument("--coefficients", type=int, default=None,
                   help="expression coefficients sent (default: the registered model's)")
    p.add_argument("--no-refiner", action="store_true", help="load no refiner (warp_*_refined = plain)")
    p.add_argument("--detect-side", type=int, default=None,
                   help="whole frames: the tracker's DETECT_SIDE (default: the shipped one)")
    p.add_argument("--detect-fit", choices=("box", "native", "frame"), default=None,
                   help="whole frames: how the tracker fits the points (DETECT_FIT; default: the shipped way)")
    p.add_argument("--out", type=Path, default=Path("out/akd-sources"),
                   help="working folder; the protocol's pictures are cached under OUT/crops as rd does")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)

    from codec.families import landmark
    from codec.zoo import load_landmark_model
    from evaluation.metrics import FaceLandmarkMetrics

    if args.detect_side is not None:
        landmark.DETECT_SIDE = args.detect_side
    if args.detect_fit is not None:
        landmark.DETECT_FIT = args.detect_fit
    model = load_landmark_model(coefficients=args.coefficients, refiner=not args.no_refiner)
    faces = FaceLandmarkMetrics()
    clips = manifest_clips(args.manifest, args.split, args.folder)[: args.clips]
    started = time.perf_counter()
    rows, skipped = [], {}
    bar = ProgressBar(len(clips), "clips")
    for clip in clips:
        try:
            pictures = (load_frames(clip, args.frames, args.out / "crops") if args.frame
                        else load_crops(clip, args.size, args.frames, args.out / "crops"))
        except SkipClip as exc:
            skipped[clip.name] = str(exc)
            bar.update()
            continue
        result = clip_sources(pictures, model, args.quality, args.metric_every, faces, args.frame)
        row = {"clip": clip.name, **summarise(result["values"]), **{k: v for k, v in result.items()}}
        rows.append(row)
        bar.update()
        print(f"{clip.name[:40]:40s} " + " ".join(f"{name} {row[name]:.3f}" if row[name] is not None
                                                  else f"{name} -" for name in SOURCES), file=sys.stderr)
    bar.close()
    mean = {}
    for name in SOURCES:
        for key in (name, f"{name}_common"):
            got = [r[key] for r in rows if r[key] is not None]
            mean[key] = float(np.mean(got)) if got else None
    mean["motion_kbps"] = float(np.mean([r["motion_kbps"] for r in rows])) if rows else None
    print("MEAN " + " ".join(f"{name} {mean[name]:.3f} ({mean[name + '_common']:.3f})" for name in SOURCES
                             if mean[name] is not None) + f" motion {mean['motion_kbps']:.2f} kbit/s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": "python -m benchmarks.akd_sources " + " ".join(argv if argv is not None else sys.argv[1:]),
            "protocol": {"split": args.split, "picture": "frame" if args.frame else args.size,
                         "frames": args.frames, "metric_every": args.metric_every, "quality": args.quality,
                         "coefficients": model.layout.expression_count,
                         "refresh": "one keyframe", "refiner": not args.no_refiner,
                         "detect_side": landmark.DETECT_SIDE, "detect_fit": landmark.DETECT_FIT},
            "sources": list(SOURCES), "mean": mean, "clips": rows, "skipped": skipped,
            "wall_s": time.perf_counter() - started}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
