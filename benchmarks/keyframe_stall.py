"""How long a keyframe stalls a call's frame loop: WebP or AV1 coded on the loop, or AV1 coded
off it (``Encoder(keyframe_worker=True)``, what a call does), measured in the same run; and a
refresh predicted from the held reference (``codec.predicted_keyframe``: coded both ways, the
predicted packet sent) on the loop (``predicted-sync``) or off it (``predicted-worker``, what a
call does with the closed loop).

A call-like loop on a real clip's protocol crops (``benchmarks.rd``'s, the first clip of a
manifest split): frames paced at ``--fps`` in real time, ``Encoder.encode`` on each (landmarks,
motion, reference patches), a keyframe at the start and every ``--keyframe-every`` frames.
Per mode: ``encode_ms`` (wall time of each ``encode`` call) and ``late_ms`` (how far past its
slot each frame's packets were ready: finish − (due + 1/fps), 0 when on time), as median, p99
and max over all frames, the frames that overran their slot, and with the worker how many frames
after its own each keyframe went out and how many frames at the start sent no motion (the
receiver held no keyframe yet); with predicted refreshes their bytes beside the whole keyframes
coded for the same frames. ``--rounds`` 2 runs the modes A B C, then C B A (the shared
machine's load drifts), and pools each mode's frames.

    python -m benchmarks.keyframe_stall --frames 250 --out benchmarks/results/keyframe-stall.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from codec.bitstream import PacketType

# mode: (keyframe codec, coded off the loop, refreshes predicted from the held reference)
MODES = {"webp-sync": ("webp", False, False), "av1-sync": ("av1", False, False), "av1-worker": ("av1", True, False),
         "predicted-sync": ("av1", False, True), "predicted-worker": ("av1", True, True)}
DEFAULT_MODES = ("webp-sync", "av1-sync", "av1-worker")


def _stats(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(array)), "p99": float(np.percentile(array, 99)),
            "max": float(array.max()), "mean": float(array.mean())}


def run_mode(model, crops: np.ndarray, codec: str, worker: bool, fps: float, keyframe_every: int,
             predicted: bool = False) -> dict:
    """One paced pass over the crops with one keyframe setting: per-frame lists, and counts.
    ``predicted``: each keyframe after the first is a refresh predicted from the one before
    (every one, whatever it costs: the cost of coding it both ways is what is measured)."""
    from codec.api import Encoder

    encoder = Encoder(model, keyframe_codec=codec, keyframe_worker=worker, frame_rate=fps,
                      predicted_refresh=predicted)
    encoder.always_predict = predicted
    encode_ms, late_ms, sent_at = [], [], []
    interval = 1.0 / fps
    start = time.perf_counter() + 0.05
    for i, crop in enumerate(crops):
        due = start + i * interval
        if (delay := due - time.perf_counter()) > 0:
            time.sleep(delay)
        if i and keyframe_every and i % keyframe_every == 0:
            encoder.request_keyframe("periodic", refresh=predicted)
        began = time.perf_counter()
        packets = encoder.encode(np.ascontiguousarray(crop), i / fps)
        done = time.perf_counter()
        encode_ms.append(1000.0 * (done - began))
        late_ms.append(max(0.0, 1000.0 * (done - due - interval)))
        sent_at += [i for p in packets if p[0] in (PacketType.KEYFRAME, PacketType.PREDICTED_KEYFRAME)]
    encoder.close()
    stats = encoder.stats
    taken = [seq for seq, _ in stats.keyframe_reasons]
    return {"encode_ms": encode_ms, "late_ms": late_ms, "keyframes": stats.keyframes,
            "keyframe_bytes": stats.keyframe_bytes,
            "keyframe_delay_frames": [sent - seq for seq, sent in zip(taken, sent_at)],
            "frames_without_motion": stats.skipped,
            # (frame, predicted packet bytes, whole keyframe packet bytes, predicted sent)
            "refresh_choices": [list(choice) for choice in stats.refresh_choices]}


def pooled(codec: str, worker: bool, predicted: bool, passes: list[dict]) -> dict:
    """A mode's passes pooled: median, p99 and max of every frame's encode and lateness."""
    encode_ms = [v for run in passes for v in run["encode_ms"]]
    late_ms = [v for run in passes for v in run["late_ms"]]
    keyframes = sum(run["keyframes"] for run in passes)
    choices = [c for run in passes for c in run["refresh_choices"]]
    refreshes = {} if not choices else {
        "refreshes": len(choices), "predicted_sent": sum(c[3] for c in choices),
        "predicted_bytes_mean": float(np.mean([c[1] for c in choices])),
        "whole_bytes_mean": float(np.mean([c[2] for c in choices]))}
    return {"codec": codec, "worker": worker, "predicted": predicted, **refreshes,
            "passes": len(passes), "frames": len(encode_ms),
            "encode_ms": _stats(encode_ms), "late_ms": _stats(late_ms),
            "late_frames": int(sum(v > 0 for v in late_ms)), "keyframes": keyframes,
            "keyframe_bytes_mean": sum(run["keyframe_bytes"] for run in passes) / max(keyframes, 1),
            "keyframe_delay_frames": [d for run in passes for d in run["keyframe_delay_frames"]],
            "frames_without_motion": [run["frames_without_motion"] for run in passes]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.keyframe_stall", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    repo = Path(__file__).resolve().parents[1]
    p.add_argument("--manifest", type=Path, default=repo.parent / "shared" / "data" / "talking" / "MANIFEST.tsv")
    p.add_argument("--split", default="dev", help="the clip: this split's first (default: %(default)s)")
    p.add_argument("--frames", type=int, default=250)
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--keyframe-every", type=int, default=50, help="frames between keyframes (default: %(default)s)")
    p.add_argument("--modes", default=",".join(DEFAULT_MODES), help=f"of {','.join(MODES)} (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="passes per mode, alternating order (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="OpenCV threads (default: %(default)s)")
    p.add_argument("--out", type=Path, required=True, help="write the JSON here")
    args = p.parse_args(argv)
    os.environ.setdefault("SVT_LOG", "1")
    import cv2

    from benchmarks.env import cpu_name, git_state
    from benchmarks.rd.clips import load_crops, manifest_clips
    from codec.zoo import resolve_model

    cv2.setNumThreads(args.threads)
    clip = manifest_clips(args.manifest, args.split)[0]
    crops = np.asarray(load_crops(clip, 256, args.frames, Path("out/keyframe-crops")))
    model = resolve_model("landmark", refiner=False)  # the sender never loads the refiner
    run_mode(model, crops[:10], "webp", False, args.fps, 0)  # warm-up: dlib, OpenCV, PyAV
    modes = args.modes.split(",")
    if unknown := sorted(set(modes) - set(MODES)):
        p.error(f"unknown modes {unknown}; have {list(MODES)}")
    passes: dict[str, list[dict]] = {mode: [] for mode in modes}
    for round_index in range(args.rounds):
        for mode in modes if round_index % 2 == 0 else modes[::-1]:
            codec, worker, predicted = MODES[mode]
            passes[mode].append(run_mode(model, crops, codec, worker, args.fps, args.keyframe_every, predicted))
    results = {}
    for mode in modes:
        results[mode] = row = pooled(*MODES[mode], passes[mode])
        print(f"{mode:10s} encode ms median {row['encode_ms']['median']:6.1f} p99 {row['encode_ms']['p99']:6.1f} "
              f"max {row['encode_ms']['max']:6.1f} | late ms p99 {row['late_ms']['p99']:6.1f} "
              f"max {row['late_ms']['max']:6.1f}, {row['late_frames']} late frames | keyframes out after "
              f"{row['keyframe_delay_frames']} frames, {row['frames_without_motion']} without motion", flush=True)
    report = {"name": "keyframe-stall", "clip": clip.name, "frames": len(crops), "fps": args.fps,
              "keyframe_every": args.keyframe_every, "threads": args.threads,
              "env": {**git_state(), "cpu": cpu_name(), "cpus": os.cpu_count()},
              "command": "python -m benchmarks.keyframe_stall " + " ".join(sys.argv[1:] if argv is None else argv),
              "modes": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
