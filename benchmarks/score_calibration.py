"""Calibrate the sender's cheap rebuild scores against LPIPS on the dev crops.

The closed loop (``codec.api.RefreshPolicy``) scores the sender's own render of each frame
(the plain warp, as the Encoder's check renders it) against the real crop. What the
receiver shows is the default model's render (with the refiner), and LPIPS scores that.
For each dev segment, a keyframe at frame 0 and one at mid-segment, every N-th frame of
the segment: LPIPS of the receiver's render and each cheap score of the sender's. Reported:
Spearman and Pearson correlation with LPIPS over all frames, and Spearman within each
segment (mean over segments: does the score rank a clip's own frames as LPIPS does?), and
each score's time per call.

    python -m benchmarks.score_calibration --data cache/dev256 --every 5 \\
        --out benchmarks/results/score-calibration.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from codec.families.landmark import motion_from_landmarks, pack_keyframe_info
from codec.keyframe import decode_keyframe, encode_keyframe
from codec.rebuild_score import gmsd, rebuild_psnr, ssim_error
from evaluation.metrics import frames_to_tensor, lpips_model
from training.dataset import read_segment

SCORES = {"psnr_half": lambda a, b: -rebuild_psnr(a, b), "ssim_half": ssim_error, "gmsd_half": gmsd}


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.score_calibration", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("cache/dev256"), help="cached dev crops (default: %(default)s)")
    p.add_argument("--every", type=int, default=5, help="score every N-th frame (default: %(default)s)")
    p.add_argument("--out", type=Path, required=True, help="write the JSON here")
    args = p.parse_args(argv)
    from codec.zoo import load_landmark_model

    receiver = load_landmark_model()
    sender = receiver.plain()
    lpips = lpips_model("cpu")
    index = json.loads((args.data / "index.json").read_text(encoding="utf-8"))
    if index.get("split") != "dev":
        p.error(f"{args.data} is not the dev split")
    rows = []  # (segment, lpips, score...)
    timings: dict[str, list[float]] = {name: [] for name in SCORES}
    for segment in index["segments"]:
        frames, landmarks = read_segment(args.data, segment)
        for key in (0, len(frames) // 2):
            data = encode_keyframe(frames[key], "webp", 90)
            keyframe = decode_keyframe(data, "webp")
            info = pack_keyframe_info(landmarks[key])
            shown_source = receiver.prepare_source(keyframe, info)
            check_source = sender.prepare_source(keyframe, info)
            picks = [i for i in range(0, len(frames), args.every) if i != key]
            motions = np.stack([motion_from_landmarks(landmarks[i], receiver.image_size, receiver.face)
                                for i in picks])
            shown = np.stack(receiver.render(shown_source, motions))
            checked = sender.render(check_source, motions)
            real = frames[picks]
            with torch.inference_mode():
                lp = lpips(frames_to_tensor(shown).float(), frames_to_tensor(real).float()).numpy()
            for j, i in enumerate(picks):
                row = {"segment": segment["name"], "keyframe": key, "frame": i, "lpips": float(lp[j])}
                for name, score in SCORES.items():
                    started = time.perf_counter()
                    row[name] = float(score(checked[j], real[j]))
                    timings[name].append(1000 * (time.perf_counter() - started))
                rows.append(row)
        print(f"{segment['name'][:50]:50s} {len(rows)} frames so far", flush=True)
    lp = np.array([r["lpips"] for r in rows])
    summary = {}
    for name in SCORES:
        values = np.array([r[name] for r in rows])
        within = []
        for seg in dict.fromkeys(r["segment"] for r in rows):
            mask = np.array([r["segment"] == seg for r in rows])
            within.append(spearman(values[mask], lp[mask]))
        summary[name] = {"spearman": spearman(values, lp), "pearson": float(np.corrcoef(values, lp)[0, 1]),
                         "spearman_within_segment_mean": float(np.mean(within)),
                         "ms_median": float(np.median(timings[name]))}
        print(f"{name:10s} {summary[name]}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"every": args.every, "frames": len(rows), "summary": summary,
                                    "rows": rows}, indent=0))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
