"""Picture strips of the frames a one-shot warp gets wrong: the widest-open mouth, the most
closed eyes and the largest head turn of each dev segment, as

    plain warp | ours (refiner + reference patches) | the real frame

Each segment runs through the real sender (``codec.api.Encoder``: dlib tracking, the motion
coder, patches under their byte budget) and two receivers of that one stream: the default
model, and the plain warp that ignores the patch packets (and draws the turn as sent, without
the default model's turn limit); the plain warp is of a second stream whose sender codes the
tracker's motion as it is, without damping it (``codec.damping``), so ours against the plain
warp shows what the damping, the patches and the refiner add. Reads the cached dev crops
(``training.dataset_builder --split dev``), whose labels give the real frames'
landmarks and head pose to pick the frames by.

    python -m benchmarks.strips --data cache/dev256 --out out/strips

``--crops DIR`` reads the rd benchmark's crop cache instead (``benchmarks.rd.clips``: one
N×S×S×3 .npy per clip) and draws only the largest turn, picked from the stream itself: the
frame whose decoded yaw or pitch lies furthest from the keyframe's pose (what the receiver
knows). ``--turn-limit DEG`` adds a column: the default model with the turn limit
(``codec.families.landmark.limit_turn``); ``--refresh GAIN`` one more: the default model
behind the sender's closed loop.

    python -m benchmarks.strips --crops out/crops-dev --out out/strips-turn --turn-limit 25 --refresh 0.1
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


def stream_turns(frames: np.ndarray) -> np.ndarray:
    """Per frame, the larger of |yaw| and |pitch| of the motion the receiver decodes against
    its keyframe's pose (one keyframe, the default sender); 0 where no motion is sent."""
    encoder = Encoder(resolve_model("landmark", refiner=False), damping=None)  # the turn as tracked
    turns = np.zeros(len(frames))
    for i, frame in enumerate(frames):
        encoder.encode(np.ascontiguousarray(frame))
        decoded, source = encoder._motion.last_decoded, encoder._local_source
        if i and decoded is not None and source is not None:
            turns[i] = float(np.max(np.abs(np.asarray(decoded[:2], np.float64) - source.pose.angles[:2])))
    return turns


def _shown(frames: np.ndarray, index: int, model, refresh: float | None) -> tuple[np.ndarray | None, int]:
    """What ``model`` shows at frame ``index`` of the stream of ``frames`` (the sender's closed
    loop at gain ``refresh``, or one keyframe), and how many keyframes the stream sent."""
    from codec.api import RefreshPolicy

    encoder = Encoder(model, refresh=None if refresh is None else RefreshPolicy(gain=refresh))
    decoder = Decoder.from_header(encoder.header(), model=model)
    shown = None
    for frame in frames[: index + 1]:
        for packet in encoder.encode(np.ascontiguousarray(frame)):
            decoded = decoder.decode(packet)
            if decoded is not None and decoded.seq == index:
                shown = decoded.image
    return shown, encoder.stats.keyframes


def turn_strip(frames: np.ndarray, index: int, refresh: float | None,
               turn_limit: float | None = None) -> tuple[np.ndarray, dict]:
    """plain warp | ours | [ours with the turn limit |] [ours behind the closed loop |] real at
    frame ``index``."""
    strips, info = segment_strips(frames[: index + 1], {"turn": index})
    strip = strips["turn"]
    size = frames.shape[2]
    extra = []
    if turn_limit is not None:
        limited = resolve_model("landmark")
        limited.turn_limit_deg = turn_limit
        image, _ = _shown(frames, index, limited, None)
        extra.append(image)
    if refresh is not None:
        image, info["loop_keyframes"] = _shown(frames, index, resolve_model("landmark"), refresh)
        extra.append(image)
    extra = [image for image in extra if image is not None]
    if extra:
        strip = np.concatenate([strip[:, : 2 * size], *extra, strip[:, 2 * size:]], axis=1)
    return strip, info


def segment_strips(frames: np.ndarray, picks: dict[str, int]) -> tuple[dict[str, np.ndarray], dict]:
    """{kind: H×3W×3 strip} for one segment, and the stream's byte counts."""
    ours = resolve_model("landmark")
    plain = resolve_model("landmark", refiner=False)
    plain.turn_limit_deg = None  # the turn as sent
    encoder = Encoder(ours)
    undamped = Encoder(ours, damping=None)  # the plain warp's stream: the tracker's motion as it is
    ours_decoder = Decoder.from_header(encoder.header(), model=ours)
    plain_decoder = Decoder.from_header(undamped.header(), model=plain)
    wanted = set(picks.values())
    shown: dict[str, dict[int, np.ndarray]] = {"ours": {}, "plain": {}}
    damping: dict[int, str] = {}  # the candidate ours coded at a picked frame ("" undamped)
    for i, frame in enumerate(frames):
        for packet in encoder.encode(frame):
            decoded = ours_decoder.decode(packet)
            if decoded is not None and decoded.seq in wanted:
                shown["ours"][decoded.seq] = decoded.image
        if i in wanted:
            choice = encoder.last_damping
            damping[i] = "not tried" if choice is None else (choice.label or "undamped")
        for packet in undamped.encode(frame):
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
                    "keyframe_bytes": stats.keyframe_bytes, "frames": picks,
                    "damping": {kind: damping.get(i) for kind, i in picks.items()},
                    "damped_frames": dict(stats.damped), "damping_tried": stats.damping_tried}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.strips", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("cache/dev256"))
    parser.add_argument("--out", type=Path, default=Path("out/strips"))
    parser.add_argument("--segments", default="",
                        help="comma list of segment names (default: every segment of --data)")
    parser.add_argument("--per-strip", type=int, default=6, help="segments per picture")
    parser.add_argument("--crops", type=Path, default=None,
                        help="the rd benchmark's crop cache (one .npy per clip): the largest turn only")
    parser.add_argument("--refresh", type=float, default=None,
                        help="with --crops: add ours behind the closed loop at this gain")
    parser.add_argument("--turn-limit", type=float, default=None,
                        help="with --crops: add ours with yaw and pitch limited to this many degrees "
                             "from the keyframe's (codec.families.landmark.limit_turn)")
    args = parser.parse_args(argv)
    if args.crops is not None:
        return _crop_turns(args)
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


def _crop_turns(args: argparse.Namespace) -> int:
    """The largest turn of every clip in the crop cache, ``--per-strip`` clips a picture."""
    args.out.mkdir(parents=True, exist_ok=True)
    names = set(args.segments.split(",")) if args.segments else None
    strips, report = [], {}
    for path in sorted(args.crops.glob("*.npy")):
        if names is not None and path.stem not in names:
            continue
        frames = np.load(path, mmap_mode="r")
        turns = stream_turns(frames)
        index = int(np.argmax(turns))
        strip, info = turn_strip(np.asarray(frames), index, args.refresh, args.turn_limit)
        report[path.stem] = {"frame": index, "turn_deg": float(turns[index]), **info}
        strips.append(strip)
        # Each clip's strip on its own too, lossless: the damage to judge is in the detail.
        cv2.imwrite(str(args.out / f"turn_{path.stem}.png"), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
        print(path.stem, json.dumps(report[path.stem]), flush=True)
    for k in range(0, len(strips), args.per_strip):
        picture = np.concatenate(strips[k:k + args.per_strip], axis=0)
        cv2.imwrite(str(args.out / f"turn_{k // args.per_strip}.jpg"), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 85])
    (args.out / "strips.json").write_text(json.dumps(report, indent=1))
    columns = " | ".join(["plain warp", "ours"]
                         + ([f"ours, turn limit {args.turn_limit:g}°"] if args.turn_limit is not None else [])
                         + ([f"ours, closed loop {args.refresh:g}"] if args.refresh is not None else []) + ["real"])
    print(f"wrote {args.out}/turn_*.jpg ({columns}) and strips.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
