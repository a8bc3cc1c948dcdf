"""Picture strips of the reference memory at work: one clip through the closed loop with K = 1
and with K reference slots, rows

    K = 1 (ours) | K slots (ours) | the real frame

at the frames asked for, each labelled with the slot it was warped from and the keyframes
sent so far, so a head that turns away and back shows the reference it reused.

    python -m benchmarks.reference_strips --crops out/crops-dev/first-order-model_10.mp4_256px_250f.npy \
        --frames 30,100,124,130,160,200 --references 4 --out out/reference-strips.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from codec.api import Decoder, Encoder, RefreshPolicy
from codec.zoo import resolve_model


def run(crops: np.ndarray, references: int, wanted: set[int], gain: float, model, plain) -> tuple[dict, Encoder]:
    """{frame: (image, slot)} for the ``wanted`` frames, and the Encoder (its stats)."""
    encoder = Encoder(plain, quality=3, refresh=RefreshPolicy(gain=gain), references=references)
    decoder = Decoder.from_header(encoder.header(), model=model)
    shown = {}
    for i, crop in enumerate(crops):
        packets = encoder.encode(np.ascontiguousarray(crop), timestamp=i / 25.0)
        for frame in decoder.decode_stream(packets, render=lambda seq: seq in wanted):
            shown[frame.seq] = (frame.image, frame.reference)
    return shown, encoder


def _label(image: np.ndarray, text: str) -> np.ndarray:
    out = image.copy()
    cv2.rectangle(out, (0, 0), (out.shape[1], 18), (0, 0, 0), -1)
    cv2.putText(out, text, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--crops", type=Path, required=True, help="N×S×S×3 uint8 .npy of face crops (rd's cache)")
    parser.add_argument("--frames", required=True, help="comma list of frames to show")
    parser.add_argument("--references", type=int, default=4)
    parser.add_argument("--gain", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=Path("out/reference-strips.png"))
    args = parser.parse_args(argv)
    crops = np.load(args.crops)
    wanted = [int(f) for f in args.frames.split(",")]
    model, plain = resolve_model("landmark"), resolve_model("landmark", refiner=False)
    columns = []
    results = {}
    for k in (1, args.references):
        shown, encoder = run(crops, k, set(wanted), args.gain, model, plain)
        results[k] = (shown, encoder.stats)
        print(f"K={k}: keyframes {[seq for seq, _ in encoder.stats.keyframe_reasons]} "
              f"into slots {encoder.stats.keyframe_slots}, switches (frame, slot) {encoder.stats.switches}, "
              f"{encoder.stats.keyframe_bytes} keyframe bytes")
    for frame in wanted:
        cells = []
        for k in (1, args.references):
            shown, stats = results[k]
            image, slot = shown[frame]
            sent = sum(1 for seq, _ in stats.keyframe_reasons if seq <= frame)
            cells.append(_label(image, f"K={k} f{frame} slot {slot} kf {sent}"))
        cells.append(_label(crops[frame], f"real f{frame}"))
        columns.append(np.concatenate(cells, axis=0))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(np.concatenate(columns, axis=1), cv2.COLOR_RGB2BGR))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
