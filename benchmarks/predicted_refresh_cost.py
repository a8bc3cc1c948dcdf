"""What a refresh costs coded whole and predicted from the receiver's warp, at matched rebuilt
quality (codec.predicted_keyframe).

For each clip: the first frame is the keyframe the receiver holds (AV1 at the shipped
quality, decoded); frame ``--refresh`` is the refresh. It is coded whole (AV1 at several
qualities) and predicted (an x264 inter frame over the plain warp of the held keyframe, at
several CRFs). Each reference is scored by LPIPS against its own frame and, what matters, by
the mean LPIPS of the frames the receiver rebuilds from it over the next ``--after`` frames
(every 5th, the plain warp with the real motion), so costs compare at matched rebuilt LPIPS.

    python -m benchmarks.predicted_refresh_cost --manifest ../shared/data/talking/MANIFEST.tsv \\
        --split dev --json benchmarks/results/predicted-refresh-cost-dev.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from benchmarks.env import cpu_name, git_state, write_json
from benchmarks.rd.clips import load_crops, manifest_clips
from codec.keyframe import default_keyframe_quality, encode_keyframe, received_keyframe
from codec.predicted_keyframe import code_predicted
from codec.zoo import resolve_model

WHOLE_QUALITIES = (42, 50, 58, 66, 74)
CRFS = (18, 22, 26, 30)


def main(argv: list[str] | None = None) -> int:
    import torch

    from evaluation.metrics import frames_to_tensor, lpips_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--split", default="dev")
    parser.add_argument("--refresh", type=int, default=50, help="the refreshed frame (the keyframe is frame 0)")
    parser.add_argument("--after", type=int, default=50, help="frames after it rebuilt from the reference")
    parser.add_argument("--clips", type=int, default=None, help="the first N clips only")
    parser.add_argument("--cache", type=Path, default=Path("out/crops"), help="the rd protocol's crop cache")
    parser.add_argument("--json", type=Path, default=Path("out/predicted-refresh-cost.json"))
    args = parser.parse_args(argv)
    model = resolve_model("landmark", refiner=False)
    lpips = lpips_model()

    def lpips_of(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return lpips(frames_to_tensor(np.asarray(a)).float(), frames_to_tensor(np.asarray(b)).float()).numpy()

    rows = []
    for clip in manifest_clips(args.manifest, args.split)[:args.clips]:
        crops = load_crops(clip, 256, 250, args.cache)  # the rd protocol's 250 frames
        tracker = model.motion_tracker()
        first = np.ascontiguousarray(crops[0])
        held = received_keyframe(encode_keyframe(first, "av1", default_keyframe_quality("av1")), "av1", 256)
        source = model.prepare_source(held, tracker.keyframe_info(first))
        frame = np.ascontiguousarray(crops[args.refresh])
        motion, info = tracker.motion(frame), tracker.keyframe_info(frame)
        later = [np.ascontiguousarray(crops[k]) for k in range(args.refresh + 5, args.refresh + args.after + 1, 5)]
        motions = [tracker.motion(f) for f in later]
        if any(np.isnan(m).any() for m in [motion, *motions]):
            print(f"{clip.name}: skipped (no face in a frame)", flush=True)
            continue
        row = {"clip": clip.name}

        def score(reference: np.ndarray, size: int) -> dict:
            rebuilt = model.render(model.prepare_source(reference, info), np.stack(motions))
            return {"bytes": size, "reference_lpips": float(lpips_of(reference, frame)[0]),
                    "rebuilt_lpips": float(lpips_of(np.stack(rebuilt), np.stack(later)).mean())}

        for quality in WHOLE_QUALITIES:
            data = encode_keyframe(frame, "av1", quality)
            row[f"whole_av1_q{quality}"] = score(received_keyframe(data, "av1", 256), len(data))
        for crf in CRFS:
            coded = code_predicted(model, source, frame, motion, crf)
            row[f"predicted_x264_crf{crf}"] = score(coded.received, len(coded.data))
        row["warp"] = score(coded.prediction, 0)
        rows.append(row)
        print(clip.name, {k: v["bytes"] for k, v in row.items() if k != "clip"}, flush=True)
    keys = [k for k in rows[0] if k != "clip"]
    summary = {k: {m: float(np.mean([r[k][m] for r in rows])) for m in ("bytes", "reference_lpips", "rebuilt_lpips")}
               for k in keys}
    for key, values in summary.items():
        print(f"{key:24s} {values['bytes']:7.0f} B  reference LPIPS {values['reference_lpips']:.4f}  "
              f"rebuilt LPIPS {values['rebuilt_lpips']:.4f}")
    command = "python -m benchmarks.predicted_refresh_cost " + " ".join(argv if argv is not None else sys.argv[1:])
    write_json(args.json, {"name": "predicted-refresh-cost", "command": command,
                           "env": {**git_state(), "cpu": cpu_name()}, "refresh": args.refresh,
                           "after": args.after, "clips": len(rows), "summary": summary, "rows": rows})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
