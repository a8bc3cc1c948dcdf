"""Where the warp breaks on head turns: per frame, the head's pose against the keyframe's
(yaw, pitch, roll deltas of the motion the receiver decodes) beside the plain warp's frame
LPIPS, the frozen keyframe's and the closed loop's rebuild error, and the same frames drawn
with the turn limit (``codec.families.landmark.limit_turn``) at several limits.

Each clip is sent once through the real sender (``codec.api.Encoder``, one keyframe, no
reference patches: a patch is placed with the pose of its frame, so a patch placed without
the limit would sit wrong in a render with it; the geometry alone is measured); the frames
are rebuilt from the sender's own copy of the receiver's state (decoded keyframe, quantized
motion) by the plain warp (no refiner: what the closed loop scores). Reads the rd benchmark's crop cache (``benchmarks.rd.clips.load_crops``), writing it
for clips it lacks.

    python -m benchmarks.pose_breaks --manifest ../shared/data/talking/MANIFEST.tsv \\
        --split dev --crops out/crops-dev --every 3 --limits 15,20,25,30 --out out/pose-breaks.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# |yaw| or |pitch| delta bins (degrees) of the table.
BINS = (0, 5, 10, 15, 20, 25, 30, 40, 90)


def clip_frames(crops: np.ndarray, every: int, limits: list[float], lpips: Any) -> dict[str, Any]:
    """Per scored frame (0, every, 2·every, …, the keyframe's own frame left out): pose deltas,
    driving landmarks inside the crop, LPIPS of the plain warp, of each limit and of the
    frozen keyframe, and the loop's rebuild error of the plain warp."""
    import torch

    from codec.api import Encoder
    from codec.face3d import NUM_LANDMARKS
    from codec.rebuild_score import rebuild_error
    from codec.zoo import resolve_model
    from evaluation.metrics import frames_to_tensor

    model = resolve_model("landmark", refiner=False)
    encoder = Encoder(model, patches=False)
    rows: dict[str, list] = {k: [] for k in ("frame", "yaw", "pitch", "roll", "inside", "error",
                                             "lpips_warp", "lpips_frozen",
                                             *[f"lpips_limit{t:g}" for t in limits])}
    batch: list[tuple[int, np.ndarray, list[np.ndarray]]] = []

    def flush() -> None:
        if not batch:
            return
        with torch.inference_mode():
            real = frames_to_tensor(np.stack([b[1] for b in batch])).float()
            for column in range(len(batch[0][2])):
                pred = frames_to_tensor(np.stack([b[2][column] for b in batch])).float()
                values = lpips(pred, real).reshape(-1).tolist()
                name = ["lpips_warp", "lpips_frozen", *[f"lpips_limit{t:g}" for t in limits]][column]
                rows[name] += values
        batch.clear()

    for i, crop in enumerate(crops):
        crop = np.ascontiguousarray(crop)
        encoder.encode(crop)
        decoded = encoder._motion.last_decoded  # what the receiver decodes for this frame
        source = encoder._local_source
        if i == 0 or i % every or decoded is None or source is None:
            continue
        delta = np.asarray(decoded[:3], np.float64) - source.pose.angles
        model.turn_limit_deg = None
        driving, _ = model.driving_points(source, decoded)
        points = driving[:NUM_LANDMARKS]
        size = model.image_size
        inside = float(((points >= 0) & (points < size)).all(axis=1).mean())
        warp = model.render(source, decoded[None])[0]
        images = [warp, source.image]
        for limit in limits:
            model.turn_limit_deg = limit
            images.append(model.render(source, decoded[None])[0])
        model.turn_limit_deg = None
        rows["frame"].append(i)
        rows["yaw"].append(float(delta[0]))
        rows["pitch"].append(float(delta[1]))
        rows["roll"].append(float(delta[2]))
        rows["inside"].append(inside)
        rows["error"].append(rebuild_error(warp, crop))
        batch.append((i, crop, images))
        if len(batch) == 16:
            flush()
    flush()
    return rows


def binned(clips: dict[str, dict[str, Any]], limits: list[float]) -> list[dict[str, Any]]:
    """Frames of every clip by the larger of |yaw| and |pitch| delta: count, mean LPIPS of the
    warp, of the frozen keyframe and of each limit, the share where the warp is worse than
    frozen, and the mean rebuild error."""
    columns = ["lpips_warp", "lpips_frozen", *[f"lpips_limit{t:g}" for t in limits], "error"]
    turn = np.concatenate([np.maximum(np.abs(c["yaw"]), np.abs(c["pitch"])) for c in clips.values()])
    values = {k: np.concatenate([np.asarray(c[k], np.float64) for c in clips.values()]) for k in columns}
    out = []
    for low, high in zip(BINS[:-1], BINS[1:]):
        pick = (turn >= low) & (turn < high)
        if not pick.any():
            continue
        row: dict[str, Any] = {"turn_deg": f"{low}-{high}", "frames": int(pick.sum())}
        row.update({k: float(values[k][pick].mean()) for k in columns})
        row["warp_worse_than_frozen"] = float((values["lpips_warp"][pick] > values["lpips_frozen"][pick]).mean())
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    from benchmarks.rd.clips import SkipClip, load_crops, manifest_clips

    parser = argparse.ArgumentParser(prog="python -m benchmarks.pose_breaks", description=__doc__.split("\n")[0])
    parser.add_argument("--manifest", type=Path, default=Path("../shared/data/talking/MANIFEST.tsv"))
    parser.add_argument("--split", default="dev")
    parser.add_argument("--folder", type=Path, default=None, help="where the manifest's paths live")
    parser.add_argument("--clips", type=int, default=None, help="first N clips")
    parser.add_argument("--crops", type=Path, default=Path("out/rd/crops"), help="rd's crop cache")
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--every", type=int, default=3, help="score every N-th frame")
    parser.add_argument("--limits", default="15,20,25,30", help="turn limits to try (degrees)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("out/pose-breaks.json"))
    args = parser.parse_args(argv)
    import torch

    from evaluation.metrics import lpips_model

    torch.set_num_threads(args.threads)
    limits = [float(t) for t in args.limits.split(",") if t.strip()]
    lpips = lpips_model()
    clips = manifest_clips(args.manifest, args.split, args.folder)[: args.clips]
    started = time.perf_counter()
    per_clip: dict[str, dict[str, Any]] = {}
    for clip in clips:
        try:
            crops = load_crops(clip, 256, args.frames, args.crops)
        except SkipClip as exc:
            print(f"skip {clip.name}: {exc}", file=sys.stderr)
            continue
        per_clip[clip.name] = clip_frames(crops, args.every, limits, lpips)
        rows = per_clip[clip.name]
        turn = np.maximum(np.abs(rows["yaw"]), np.abs(rows["pitch"]))
        print(f"{clip.name}: max turn {turn.max():.0f}°, warp LPIPS mean {np.mean(rows['lpips_warp']):.3f} "
              f"p95 {np.percentile(rows['lpips_warp'], 95):.3f}; "
              + ", ".join(f"limit {t:g}: p95 {np.percentile(rows[f'lpips_limit{t:g}'], 95):.3f}"
                          for t in limits), file=sys.stderr, flush=True)
    table = binned(per_clip, limits)
    summary = {name: {"max_turn": float(np.max(np.maximum(np.abs(r["yaw"]), np.abs(r["pitch"])))),
                      **{k: {"mean": float(np.mean(r[k])), "p95": float(np.percentile(r[k], 95))}
                         for k in r if k.startswith("lpips")}}
               for name, r in per_clip.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": "python -m benchmarks.pose_breaks " + " ".join(
        sys.argv[1:] if argv is None else argv), "limits": limits, "every": args.every, "bins": table,
        "clips": summary, "frames": per_clip, "wall_s": time.perf_counter() - started}, indent=1))
    head = ["turn °", "frames", "warp", "frozen", *[f"limit {t:g}" for t in limits], "error", "warp>frozen"]
    print("| " + " | ".join(head) + " |\n|" + " --- |" * len(head))
    for row in table:
        print(f"| {row['turn_deg']} | {row['frames']} | {row['lpips_warp']:.3f} | {row['lpips_frozen']:.3f} | "
              + " | ".join(f"{row[f'lpips_limit{t:g}']:.3f}" for t in limits)
              + f" | {row['error']:.3f} | {row['warp_worse_than_frozen']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
