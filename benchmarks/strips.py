"""Picture strips of the frames a one-shot warp gets wrong: the widest-open mouth, the most
closed eyes and the largest head turn of each dev segment, as

    plain warp | ours (refiner + reference patches) | the real frame

Each segment runs through the real sender (``codec.api.Encoder``: dlib tracking, the motion
coder, patches under their byte budget) and two receivers of that one stream: the default
model, and the plain warp that ignores the patch packets. Reads the cached dev crops
(``training.dataset_builder --split dev``), whose labels give the real frames'
landmarks and head pose to pick the frames by.

    python -m benchmarks.strips --data cache/dev256 --out out/strips
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from codec.api import Decoder, Encoder
from codec.bitstream import PacketType
from codec.reference_patches import MOUTH, RIGHT_EYE, openness
from codec.zoo import resolve_model
from training.dataset import read_segment

KINDS = ("open_mouth", "blink", "turn")


def pick_frames(landmarks: np.ndarray, pose: np.ndarray) -> dict[str, int]:
    """The frame of each kind: the widest mouth, the most closed right eye, the largest yaw
    away from the keyframe's (frame 0 is the keyframe, never picked)."""
    mouth = np.array([openness(MOUTH, points) for points in landmarks])
    eye = np.array([openness(RIGHT_EYE, points) for points in landmarks])
    turn = np.abs(pose[:, 0] - pose[0, 0])
    mouth[0], eye[0], turn[0] = -np.inf, np.inf, -np.inf
    return {"open_mouth": int(np.argmax(mouth)), "blink": int(np.argmin(eye)), "turn": int(np.argmax(turn))}


def segment_strips(frames: np.ndarray, picks: dict[str, int]) -> tuple[dict[str, np.ndarray], dict]:
    """{kind: H×3W×3 strip} for one segment, and the stream's byte counts."""
    ours = resolve_model("landmark")
    plain = resolve_model("landmark", refiner=False)
    encoder = Encoder(ours)
    header = encoder.header()
    ours_decoder = Decoder.from_header(header, model=ours)
    plain_decoder = Decoder.from_header(header, model=plain)
    wanted = set(picks.values())
    shown: dict[str, dict[int, np.ndarray]] = {"ours": {}, "plain": {}}
    for i, frame in enumerate(frames):
        for packet in encoder.encode(frame):
            decoded = ours_decoder.decode(packet)
            if decoded is not None and decoded.seq in wanted:
                shown["ours"][decoded.seq] = decoded.image
            if packet[0] == PacketType.PATCH:
                continue  # the plain warp: what the stream gives without patches or refiner
            decoded = plain_decoder.decode(packet)
            if decoded is not None and decoded.seq in wanted:
                shown["plain"][decoded.seq] = decoded.image
    strips = {kind: np.concatenate([shown["plain"][i], shown["ours"][i], frames[i]], axis=1)
              for kind, i in picks.items() if i in shown["ours"] and i in shown["plain"]}
    stats = encoder.stats
    seconds = len(frames) / encoder.frame_rate
    return strips, {"patches": stats.patches, "patch_bytes": stats.patch_bytes,
                    "patch_kbps": 8.0 * stats.patch_bytes / seconds / 1000.0,
                    "motion_kbps": 8.0 * stats.motion_bytes / seconds / 1000.0,
                    "keyframe_bytes": stats.keyframe_bytes, "frames": picks}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.strips", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("cache/dev256"))
    parser.add_argument("--out", type=Path, default=Path("out/strips"))
    parser.add_argument("--segments", default="",
                        help="comma list of segment names (default: every segment of --data)")
    parser.add_argument("--per-strip", type=int, default=6, help="segments per picture")
    args = parser.parse_args(argv)
    index = json.loads((args.data / "index.json").read_text())
    segments = index["segments"]
    if args.segments:
        names = args.segments.split(",")
        segments = [s for s in segments if s["name"] in names]
    args.out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[np.ndarray]] = {kind: [] for kind in KINDS}
    report = {}
    for segment in segments:
        frames, landmarks = read_segment(args.data, segment)
        pose = np.load(args.data / segment["labels"])["pose"][: len(frames)].astype(np.float64)
        strips, report[segment["name"]] = segment_strips(frames, pick_frames(landmarks, pose))
        for kind, strip in strips.items():
            rows[kind].append(strip)
        print(segment["name"], json.dumps(report[segment["name"]]), flush=True)
    for kind, strips in rows.items():
        for k in range(0, len(strips), args.per_strip):
            picture = np.concatenate(strips[k:k + args.per_strip], axis=0)
            path = args.out / f"{kind}_{k // args.per_strip}.jpg"
            cv2.imwrite(str(path), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    (args.out / "strips.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}/*.jpg (plain warp | ours | real) and strips.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
