"""Per-frame CPU cost of the landmark family, sender and receiver, stage by stage.

    python -m benchmarks.landmark_speed --threads 2 --json out/landmark_speed.json

Sender stages: ``landmarks`` (dlib shape predictor in the box of the last landmarks),
``pose_expression`` (pose fit + expression coefficients), ``motion_code`` (quantize +
range-code + packet), ``encode_total`` (``Encoder.encode`` on an inter frame, all of the
above) and, with ``--refresh GAIN``, ``encode_closed_loop`` (the same with the closed loop:
a check render every frame, a trial keyframe every 5th; its mean is the per-frame cost).
Receiver stages: ``motion_decode`` (parse + range-decode), ``warp_maps`` (driving
points + mesh rasterisation), ``remap`` (sampling the keyframe), ``render`` (the model's
render: the warp, plus the learned refiner unless ``--no-refiner``) and ``decode_total``
(``Decoder.decode`` of a motion packet: decode + render, with the reference patches the
sender sent blended in unless ``--no-patches``). Input: the first dev segment's
256 px crops when ``cache/dev256`` exists, else the built-in default (the portrait turned by
the model). ``--size 512`` times 512-px crops, ``--size 1280x720`` whole frames of that size
(the model ``at_size``); ``--clip VIDEO`` takes a video's frames (its face crop, or its whole
frame scaled to the size) instead of the built-in portrait. Medians and p90 over ``--frames`` frames after ``--warmup``; the machine is
shared, so compare stages within one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from codec.families.landmark import LandmarkModel


def _input_frames(data: Path, frames: int, model: LandmarkModel,
                  clip: Path | None = None) -> tuple[list[np.ndarray], str]:
    width, height = model.frame_size
    if clip is not None:
        from codec.facecrop import FIT_FRAMES, FaceCropper
        from codec.keyframe import fit_frame
        from codec.media import read_frames

        pictures = [item.image for item in read_frames(clip, fps=25.0, max_frames=frames)]
        if model.whole_frame:
            return [fit_frame(p, model.frame_size) for p in pictures], f"{clip} whole frame at {width}×{height}"
        box = FaceCropper(out_size=width).fit(pictures[:FIT_FRAMES])
        return [box.crop(p, width) for p in pictures], f"{clip} face crop at {width} px"
    index_file = data / "index.json"
    if model.frame_size == (256, 256) and index_file.is_file():
        from training.dataset import read_segment

        segment = json.loads(index_file.read_text(encoding="utf-8"))["segments"][0]
        crops, _ = read_segment(data, segment)
        return list(crops[:frames]), f"dev segment {segment['name']}"
    from sender.sources import FreeViewPortraitSource

    if model.whole_frame:
        return (list(FreeViewPortraitSource(model, num_frames=frames, frame_size=model.frame_size)),
                f"built-in default portrait, whole photo at {width}×{height}")
    return list(FreeViewPortraitSource(model, num_frames=frames)), f"built-in default portrait at {width} px"


def _summary(times_ms: list[float]) -> dict[str, float]:
    values = np.asarray(times_ms)
    return {"median_ms": float(np.median(values)), "mean_ms": float(values.mean()),
            "p90_ms": float(np.percentile(values, 90)),
            "min_ms": float(values.min()), "count": int(values.size)}


def measure(frames: list[np.ndarray], model: LandmarkModel, warmup: int,
            patches: bool = True, refresh_gain: float | None = None) -> dict[str, dict[str, float]]:
    from codec.api import Decoder, Encoder, RefreshPolicy
    from codec.bitstream import MotionPacket, is_motion_packet, parse_packet
    from codec.families.landmark import motion_from_landmarks
    from codec.motion_coding import MotionDecoder, MotionEncoder, quant_table_for

    stages: dict[str, list[float]] = {name: [] for name in (
        "landmarks", "pose_expression", "motion_code", "encode_total",
        "encode_closed_loop", "motion_decode", "warp_maps", "remap", "render", "decode_total")}
    clock = time.perf_counter

    # Stage by stage, on the same frames the end-to-end runs use.
    tracker = model.motion_tracker()
    table = quant_table_for(model.layout, 3)
    coder = MotionEncoder(table, model.layout.expression_count, 25)
    motion_decoder = MotionDecoder(table, model.layout.expression_count)
    tracker.motion(frames[0])  # the keyframe's own landmarks (info falls back when it has no face)
    source = model.prepare_source(frames[0], tracker.keyframe_info(frames[0]))
    for i, frame in enumerate(frames):
        t0 = clock()
        landmarks = tracker.landmarks(frame)
        t1 = clock()
        vector = (motion_from_landmarks(landmarks, model.frame_size, model.face) if landmarks is not None
                  else np.full(model.layout.vector_length, np.nan, np.float32))
        t2 = clock()
        intra, payload = coder.encode_vector(vector, i)
        packet = MotionPacket(i, 40 * i, intra, payload).pack()
        t3 = clock()
        parsed = parse_packet(packet)
        decoded = motion_decoder.decode_vector(parsed.intra, parsed.seq, parsed.payload)
        t4 = clock()
        map_x, map_y = model.warp_maps(source, decoded)
        t5 = clock()
        cv2.remap(source.image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        t6 = clock()
        model.render(source, decoded[None])  # warp_maps + remap, + the refiner when it has one
        t7 = clock()
        if i >= warmup:
            for name, start, stop in (("landmarks", t0, t1), ("pose_expression", t1, t2),
                                      ("motion_code", t2, t3), ("motion_decode", t3, t4),
                                      ("warp_maps", t4, t5), ("remap", t5, t6), ("render", t6, t7)):
                stages[name].append(1000.0 * (stop - start))

    # End to end through the API.
    encoder = Encoder(model, patches=patches)
    decoder = Decoder.from_header(encoder.header(), model=model)
    for i, frame in enumerate(frames):
        t0 = clock()
        packets = encoder.encode(frame, i / 25)
        t1 = clock()
        for data in packets:
            is_motion = is_motion_packet(data)
            t2 = clock()
            decoder.decode(data)
            t3 = clock()
            if i >= warmup and is_motion and i > 0:
                stages["decode_total"].append(1000.0 * (t3 - t2))
        if i >= warmup and i > 0:
            stages["encode_total"].append(1000.0 * (t1 - t0))
    if refresh_gain is not None:
        # The closed loop's keyframes are timed with the rest: they are part of its cost.
        encoder = Encoder(model, patches=patches, refresh=RefreshPolicy(gain=refresh_gain))
        for i, frame in enumerate(frames):
            t0 = clock()
            encoder.encode(frame, i / 25)
            if i >= warmup and i > 0:
                stages["encode_closed_loop"].append(1000.0 * (clock() - t0))
    return {name: _summary(values) for name, values in stages.items() if values}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.landmark_speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="OpenCV threads (default: %(default)s)")
    p.add_argument("--frames", type=int, default=200, help="frames timed (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=10, help="frames not timed (default: %(default)s)")
    p.add_argument("--data", type=Path, default=Path("cache/dev256"),
                   help="cached dev crops, if present (default: %(default)s)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--no-refiner", action="store_true", help="time the plain warp, without the refiner")
    p.add_argument("--no-patches", action="store_true",
                   help="the end-to-end stages without reference patches (the sender sends none)")
    p.add_argument("--size", default="256",
                   help="256 / 512 …: square face crops of that side; WxH (e.g. 1280x720): whole "
                        "frames of that size (default: %(default)s)")
    p.add_argument("--clip", type=Path, default=None, help="time a video's frames instead")
    p.add_argument("--refresh", type=float, default=None, metavar="GAIN",
                   help="also time Encoder.encode with the closed-loop refresh at this gain")
    args = p.parse_args(argv)
    import torch

    from codec.zoo import resolve_model

    cv2.setNumThreads(args.threads)
    torch.set_num_threads(args.threads)
    model = resolve_model("landmark", refiner=not args.no_refiner)
    if "x" in args.size.lower():
        from app.model_args import resolution

        model = model.at_size(*resolution(args.size), whole_frame=True)
    else:
        model = model.at_size(int(args.size), int(args.size))
    frames, what = _input_frames(args.data, args.frames + args.warmup, model, args.clip)
    results = measure(frames, model, args.warmup, patches=not args.no_patches, refresh_gain=args.refresh)
    for name, row in results.items():
        print(f"{name:18s} median {row['median_ms']:6.2f} ms  mean {row['mean_ms']:6.2f} ms  "
              f"p90 {row['p90_ms']:6.2f} ms  (n={row['count']})")
    report = {"name": "landmark-speed", "input": what, "threads": args.threads, "model": model.name,
              "size": list(model.frame_size), "whole_frame": model.whole_frame,
              "refiner": model.refiner is not None, "patches": not args.no_patches,
              "env": {"machine": platform.machine(), "processor": platform.processor(),
                      "python": platform.python_version(), "opencv": cv2.__version__},
              "command": "python -m benchmarks.landmark_speed " + " ".join(sys.argv[1:] if argv is None else argv),
              "stages": results}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
