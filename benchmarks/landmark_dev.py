"""Quick dev check of the landmark family on the cached dev crops (no re-detection).

Reads ``cache/dev256`` (written by ``training.dataset_builder --split dev``: the
rd protocol's fixed 256px crops, first 250 frames, with dlib landmarks per frame),
takes frame 0 as the keyframe, and scores the rebuilt frames against the real ones:
RGB PSNR and LPIPS (AlexNet), for the default model (the warp, the reference patches and
the refiner; ``--no-patches`` / ``--no-refiner`` leave them out) and for the frozen
keyframe, per segment, and the mean absolute error (0-255) in the mouth and eye boxes of
the real frame. Motion goes through the real quantizer and range coder, and patches
through the sender's patch coder and budget, so bits/frame are the codec's. It is the
fast loop for choosing warp settings; the rd benchmark
(``benchmarks.rd``) is the full protocol with the sender's own landmark tracking.

    python -m benchmarks.landmark_dev --data cache/dev256 --every 5 --json out/landmark_dev.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from codec.families.landmark import LandmarkModel, motion_from_landmarks, pack_keyframe_info
from app.model_args import add_quality_arg
from codec.motion_coding import MotionDecoder, MotionEncoder, quant_table_for
from codec.reference_patches import REGIONS, PatchSender, patch_box
from evaluation.metrics import frames_to_tensor, lpips_model, psnr_frames
from training.dataset import read_segment


def region_errors(rebuilt: np.ndarray, real: np.ndarray, landmarks: np.ndarray) -> dict[str, float]:
    """Mean absolute error (0-255) of each patch region's box on the real frame's landmarks."""
    errors = {}
    for region in REGIONS:
        box = patch_box(region, landmarks, real.shape[0])
        if box is not None:
            x0, y0, x1, y1 = box
            diff = rebuilt[y0:y1, x0:x1].astype(np.float32) - real[y0:y1, x0:x1].astype(np.float32)
            errors[region.name] = float(np.abs(diff).mean())
    return errors


def evaluate_segment(model: LandmarkModel, frames: np.ndarray, landmarks: np.ndarray, every: int,
                     quality: int, lpips, keyframe_codec: str = "webp", keyframe_quality: int = 90,
                     patches: bool = True,
                     code_keyframe: Callable[[np.ndarray], tuple[bytes, np.ndarray]] | None = None) -> dict:
    """One segment's scores. ``code_keyframe`` (image -> (bytes, decoded image)) replaces the
    keyframe codec, for trying image coders the bitstream does not carry."""
    from codec.keyframe import KEYFRAME_CODEC_IDS, decode_keyframe, encode_keyframe

    size = model.image_size
    table = quant_table_for(model.layout, quality)
    encoder = MotionEncoder(table, model.layout.expression_count, intra_period=25)
    decoder = MotionDecoder(table, model.layout.expression_count)
    # The keyframe as the receiver holds it: coded and decoded.
    if code_keyframe is None:
        keyframe_bytes = encode_keyframe(frames[0], keyframe_codec, keyframe_quality)
        keyframe = decode_keyframe(keyframe_bytes, KEYFRAME_CODEC_IDS[keyframe_codec])
    else:
        keyframe_bytes, keyframe = code_keyframe(frames[0])
    source = model.prepare_source(keyframe, pack_keyframe_info(landmarks[0]))
    # The sender's patches go into ``source`` itself, as the receiver would add them.
    patch_sender = PatchSender(model, keyframe_codec) if patches else None
    motion_bytes = 0
    scored, targets, render_ms, regions = [], [], [], []
    for i in range(len(frames)):
        vector = motion_from_landmarks(landmarks[i], size, model.face)
        intra, payload = encoder.encode_vector(vector, i)
        motion_bytes += len(payload) + 4  # + type byte and the varints of a motion packet
        decoded = decoder.decode_vector(intra, i, payload)
        if patch_sender is not None:
            patch_sender.packets(source, frames[i], decoded, i, 40 * i, i / 25.0)
        if i == 0 or i % every:
            continue
        started = time.perf_counter()
        scored.append(model.render(source, decoded[None])[0])
        render_ms.append(1000 * (time.perf_counter() - started))
        targets.append(frames[i])
        regions.append(region_errors(scored[-1], frames[i], landmarks[i]))
    pred, real = np.stack(scored), np.stack(targets)
    frozen = np.repeat(keyframe[None], len(real), axis=0)
    with torch.inference_mode():
        lp_ours = lpips(frames_to_tensor(pred).float(), frames_to_tensor(real).float()).mean().item()
        lp_frozen = lpips(frames_to_tensor(frozen).float(), frames_to_tensor(real).float()).mean().item()
    return {"frames": len(frames), "scored": len(real), "keyframe_bytes": len(keyframe_bytes),
            "keyframe_psnr": float(psnr_frames(keyframe[None], frames[:1])[0]),
            "psnr": float(psnr_frames(pred, real).mean()), "lpips": lp_ours,
            "frozen_psnr": float(psnr_frames(frozen, real).mean()), "frozen_lpips": lp_frozen,
            "motion_bits_per_frame": 8.0 * motion_bytes / len(frames),
            "patches": patch_sender.sent if patch_sender else 0,
            "patch_bits_per_frame": 8.0 * (patch_sender.sent_bytes if patch_sender else 0) / len(frames),
            **{f"{region.name}_error": float(np.mean([r[region.name] for r in regions if region.name in r]))
               for region in REGIONS if any(region.name in r for r in regions)},
            "render_ms_median": float(np.median(render_ms))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.landmark_dev", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("cache/dev256"),
                   help="cached dev crops (default: %(default)s)")
    p.add_argument("--every", type=int, default=5, help="score every N-th frame (default: %(default)s)")
    add_quality_arg(p)
    p.add_argument("--face-model", type=Path, default=None,
                   help="face model file (default: the registered one)")
    p.add_argument("--coefficients", type=int, default=None,
                   help="expression coefficients N (default: the model's)")
    p.add_argument("--keyframe-codec", default="webp", help="keyframe image codec (default: %(default)s)")
    p.add_argument("--keyframe-quality", type=int, default=90, help="keyframe image quality (default: %(default)s)")
    p.add_argument("--no-patches", action="store_true", help="the sender sends no reference patches")
    p.add_argument("--no-refiner", action="store_true", help="render the plain warp")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    from codec.zoo import load_landmark_model

    model = load_landmark_model(face_model=args.face_model, coefficients=args.coefficients,
                                refiner=not args.no_refiner)
    index = json.loads((args.data / "index.json").read_text(encoding="utf-8"))
    if index.get("split") != "dev":
        p.error(f"{args.data} is not the dev split")
    lpips = lpips_model("cpu")
    rows = []
    for segment in index["segments"]:
        frames, landmarks = read_segment(args.data, segment)
        row = {"segment": segment["name"], **evaluate_segment(
            model, frames, landmarks, args.every, args.quality, lpips, args.keyframe_codec,
            args.keyframe_quality, patches=not args.no_patches)}
        rows.append(row)
        print(f"{row['segment'][:44]:44s} ours {row['psnr']:5.2f} dB {row['lpips']:.3f}  frozen "
              f"{row['frozen_psnr']:5.2f} dB {row['frozen_lpips']:.3f}  "
              f"{row['motion_bits_per_frame']:5.1f} b/f {row['patch_bits_per_frame']:5.1f} patch b/f "
              f"{row['render_ms_median']:4.1f} ms", flush=True)
    keys = ("psnr", "lpips", "frozen_psnr", "frozen_lpips", "motion_bits_per_frame", "patch_bits_per_frame",
            "patches", "render_ms_median", "keyframe_bytes", *(f"{r.name}_error" for r in REGIONS))
    mean = {key: float(np.mean([r[key] for r in rows if key in r])) for key in keys}
    worse = [r["segment"] for r in rows if r["psnr"] < r["frozen_psnr"] or r["lpips"] > r["frozen_lpips"]]
    print(f"MEAN ours {mean['psnr']:.2f} dB LPIPS {mean['lpips']:.4f} | frozen {mean['frozen_psnr']:.2f} dB "
          f"{mean['frozen_lpips']:.4f} | {mean['motion_bits_per_frame']:.1f} bits/frame | "
          f"patches {mean['patch_bits_per_frame']:.1f} bits/frame | "
          f"render {mean['render_ms_median']:.1f} ms | "
          f"keyframe {mean['keyframe_bytes']:.0f} B | mouth/eye error {mean['mouth_error']:.2f} / "
          f"{mean['right_eye_error']:.2f} / {mean['left_eye_error']:.2f} | worse than frozen: {worse or 'none'}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"every": args.every, "quality": args.quality, "mean": mean,
                                         "patches": not args.no_patches, "refiner": not args.no_refiner,
                                         "worse_than_frozen": worse, "segments": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
