"""Drift of chained predicted refreshes over a long call (codec.predicted_keyframe).

Each refresh is coded against the warp of the reference before it, which was itself rebuilt
from a warp: errors could pile up, and sender and receiver could part. This benchmark
chains them for ``--minutes`` of a talker (a dev clip played forwards and backwards, so the
scene never cuts) with a refresh forced every ``--every`` frames, EVERY one predicted
(``Encoder.always_predict``: no whole keyframe resets the chain; the shipped Encoder would
send a whole one where that is smaller or better). The stream holds only the refresh frames
(frame rate 25/every: one motion packet and one refresh per frame).

It reports, per refresh: the predicted packet's bytes and the whole keyframe's (the same
frame coded with the keyframe codec, which accumulates nothing), LPIPS and PSNR of each
reference against the real frame, and whether a receiver in a second process
(``codec.api.Decoder`` with the refiner, as a call's receiver runs it) holds the sender's
reference byte for byte (sha256). Strips (real | whole | predicted | the warp it was
predicted from) at a few refreshes go to ``--strips`` (out/: frames cut from the clips are
never committed).

    python -m benchmarks.refresh_drift --manifest ../shared/data/talking/MANIFEST.tsv \\
        --split dev --clips 2 --minutes 10 --every 50 --json benchmarks/results/refresh-drift.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from benchmarks.env import cpu_name, git_state, write_json
from benchmarks.rd.clips import load_crops, manifest_clips
from codec.api import Encoder
from codec.bitstream import PacketType, encode_uvarint

FPS = 25.0
REFERENCE_TYPES = (PacketType.KEYFRAME, PacketType.PREDICTED_KEYFRAME)

RECEIVER = """
import hashlib, json, sys
from codec.api import Decoder
from codec.bitstream import PacketType, decode_uvarint
data = open(sys.argv[1], "rb").read()
messages, offset = [], 0
while offset < len(data):
    length, offset = decode_uvarint(data, offset)
    messages.append(data[offset:offset + length])
    offset += length
decoder = Decoder.from_header(messages[0])
held = []
for packet in messages[1:]:
    decoder.decode(packet)
    if packet[0] in (PacketType.KEYFRAME, PacketType.PREDICTED_KEYFRAME):
        held.append(hashlib.sha256(decoder.references[0].source.image.tobytes()).hexdigest())
print(json.dumps(held))
"""


def ping_pong(length: int, count: int) -> np.ndarray:
    """``count`` frame indices walking a clip of ``length`` frames forwards and backwards."""
    cycle = np.concatenate([np.arange(length), np.arange(length - 2, 0, -1)])
    return np.resize(cycle, count)


def receiver_hashes(header: bytes, packets: list[bytes], path: Path) -> list[str]:
    """sha256 of the reference a Decoder in a fresh process holds after each keyframe packet."""
    path.write_bytes(b"".join(encode_uvarint(len(m)) + m for m in [header, *packets]))
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", RECEIVER, str(path)], capture_output=True, text=True,
                            cwd=repo, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def strip(*images: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.concatenate(images, axis=1), cv2.COLOR_RGB2BGR)


def run_clip(crops: np.ndarray, minutes: float, every: int, work: Path, strips: Path | None,
             name: str) -> dict:
    from evaluation.metrics import frames_to_tensor, lpips_model, psnr_frames

    lpips = lpips_model()

    def lpips_of(a: np.ndarray, b: np.ndarray) -> float:
        import torch

        with torch.inference_mode():
            return float(lpips(frames_to_tensor(a).float(), frames_to_tensor(b).float())[0])

    count = int(round(minutes * 60 * FPS / every))
    indices = ping_pong(len(crops), count * every)[::every]
    encoder = Encoder.from_pretrained(frame_rate=FPS / every)
    encoder.always_predict = True
    header = encoder.header()
    packets: list[bytes] = []
    rows, sent = [], []
    strip_at = {1, count // 2, count - 1}
    started = time.perf_counter()
    for i, index in enumerate(indices):
        frame = np.ascontiguousarray(crops[index])
        if i:
            encoder.request_keyframe("drift", refresh=True)
        out = encoder.encode(frame, i * every / FPS)
        packets += out
        kinds = [p[0] for p in out if p[0] in REFERENCE_TYPES]
        if not kinds:
            continue
        reference = encoder._local_source.image
        sent.append(hashlib.sha256(reference.tobytes()).hexdigest())
        choice = encoder.last_refresh if kinds[0] == PacketType.PREDICTED_KEYFRAME else None
        row = {"refresh": i, "t_s": i * every / FPS, "frame": int(index), "kind": int(kinds[0]),
               "bytes": len(next(p for p in out if p[0] in REFERENCE_TYPES)),
               "lpips": lpips_of(reference, frame), "psnr": float(psnr_frames(reference, frame)[0])}
        if choice is not None:
            row.update(whole_bytes=choice.whole_bytes, whole_lpips=lpips_of(choice.whole_received, frame),
                       whole_psnr=float(psnr_frames(choice.whole_received, frame)[0]))
            if strips is not None and i in strip_at:
                cv2.imwrite(str(strips / f"{name}_refresh{i:04d}.png"),
                            strip(frame, choice.whole_received, choice.predicted_received))
        rows.append(row)
        if i % 50 == 0:
            print(f"  {name}: refresh {i}/{count} ({time.perf_counter() - started:.0f} s) "
                  f"{row['bytes']} B lpips {row['lpips']:.4f}", flush=True)
    held = receiver_hashes(header, packets, work / f"{name}.stream")
    predicted = [r for r in rows if r["kind"] == PacketType.PREDICTED_KEYFRAME]
    minute = [[r for r in predicted if m * 60 <= r["t_s"] < (m + 1) * 60] for m in range(int(np.ceil(minutes)))]

    def mean(rows_: list[dict], key: str) -> float | None:
        return float(np.mean([r[key] for r in rows_])) if rows_ else None

    return {
        "clip": name,
        "refreshes": len(rows),
        "predicted": len(predicted),
        "receiver_equal": int(sum(a == b for a, b in zip(sent, held))),
        "receiver_compared": len(held),
        "all_equal": held == sent,
        "per_minute": [{"minute": m, "predicted_bytes": mean(rows_, "bytes"), "whole_bytes": mean(rows_, "whole_bytes"),
                        "predicted_lpips": mean(rows_, "lpips"), "whole_lpips": mean(rows_, "whole_lpips"),
                        "predicted_psnr": mean(rows_, "psnr"), "whole_psnr": mean(rows_, "whole_psnr")}
                       for m, rows_ in enumerate(minute)],
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--split", default="dev")
    parser.add_argument("--clips", type=int, default=1, help="the first N clips of the split")
    parser.add_argument("--skip", type=int, default=0, help="skip the first N clips")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--every", type=int, default=50, help="a refresh every N frames (25 fps)")
    parser.add_argument("--frames", type=int, default=250, help="frames of each clip (the rd protocol's)")
    parser.add_argument("--cache", type=Path, default=Path("out/crops"), help="the rd protocol's crop cache")
    parser.add_argument("--work", type=Path, default=Path("out/refresh-drift"))
    parser.add_argument("--strips", type=Path, default=Path("out/refresh-drift/strips"))
    parser.add_argument("--json", type=Path, default=Path("out/refresh-drift/refresh-drift.json"))
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    args.strips.mkdir(parents=True, exist_ok=True)
    clips = manifest_clips(args.manifest, args.split)[args.skip:args.skip + args.clips]
    results = []
    for clip in clips:
        crops = load_crops(clip, 256, args.frames, args.cache)
        print(f"{clip.name}: {len(crops)} frames", flush=True)
        results.append(run_clip(crops, args.minutes, args.every, args.work, args.strips,
                                Path(clip.name).stem.replace("/", "_")))
        summary = {k: v for k, v in results[-1].items() if k not in ("rows",)}
        print(json.dumps(summary, indent=1), flush=True)
    command = "python -m benchmarks.refresh_drift " + " ".join(argv if argv is not None else sys.argv[1:])
    write_json(args.json, {"name": "refresh-drift", "command": command,
                           "env": {**git_state(), "cpu": cpu_name()},
                           "minutes": args.minutes, "every": args.every, "results": results})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
