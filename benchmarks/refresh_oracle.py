"""How much can choosing *when* to send keyframes win, at best? An offline study on the dev
clips, in the closed loop's own score (``codec.rebuild_score.rebuild_error``, calibrated
against LPIPS by ``benchmarks.score_calibration``).

For every clip (the rd protocol's crops), a keyframe is tried at every ``--step``-th frame:
the sender's plain warp rebuilds every later frame from it, and E[k, t] is the rebuild error
of frame t from the keyframe at frame k (WebP q90, as sent). Any refresh schedule on that
grid then costs nothing to evaluate: its mean error over the clip, and its keyframes per
second. Compared, per number of keyframes:

- periodic: a keyframe every P seconds (what ``--keyframe-refresh P`` sends);
- oracle: the schedule with the least error for its number of keyframes, found by dynamic
  programming with the whole clip known in advance (no online rule can beat it);
- online: ``codec.api.Encoder``'s closed loop replayed on E, at each ``--gains`` value
  (its trial keyframes and its cut rule; no pose trigger, no face test, no byte budget);
- periodic_select: the periodic schedules, but each refresh sends, of the frames of the last
  ``--select-s`` seconds, the one that rebuilds the last second best.

The gap between periodic and the oracle bounds what any closed loop can win by timing
alone, on this score; the online rows show how much of it the shipped rule takes.

    python -m benchmarks.refresh_oracle --manifest ../shared/data/talking/MANIFEST.tsv \\
        --out benchmarks/results/refresh-oracle.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.rd.clips import load_crops, manifest_clips
from benchmarks.rd.curves import bd_rate
from benchmarks.score_calibration import spearman
from codec.api import RefreshPolicy
from codec.families.base import NUM_POSE_VALUES
from codec.families.landmark import motion_from_landmarks, pack_keyframe_info
from codec.keyframe import decode_keyframe, encode_keyframe
from codec.rebuild_score import rebuild_error

FPS = 25.0
FAMILIES = ("periodic", "periodic_select", "online", "oracle")


def error_matrix(model, crops: np.ndarray, step: int) -> tuple[np.ndarray, int, np.ndarray]:
    """E[i, t]: error of frame t rebuilt from a keyframe at frame i·step (every t, before the
    keyframe too: a sender choosing among recent frames scores them on frames it has seen)."""
    tracker = model.motion_tracker()
    landmarks = [tracker.landmarks(np.ascontiguousarray(c)) for c in crops]
    fallback = model.default_landmarks()
    landmarks = [fallback if lm is None else lm for lm in landmarks]
    motions = np.stack([motion_from_landmarks(lm, model.image_size, model.face) for lm in landmarks])
    for i in range(1, len(motions)):  # the coder holds the last values where tracking failed
        bad = ~np.isfinite(motions[i])
        motions[i, bad] = motions[i - 1, bad]
    n = len(crops)
    starts = list(range(0, n, step))
    errors = np.full((len(starts), n), np.nan, np.float32)
    keyframe_bytes = 0
    for row, k in enumerate(starts):
        data = encode_keyframe(np.ascontiguousarray(crops[k]), "webp", 90)
        keyframe_bytes += len(data)
        source = model.prepare_source(decode_keyframe(data, "webp"), pack_keyframe_info(landmarks[k]))
        for at in range(0, n, 25):
            chunk = motions[at:min(at + 25, n)]
            for j, image in enumerate(model.render(source, chunk)):
                errors[row, at + j] = rebuild_error(image, np.ascontiguousarray(crops[at + j]))
    return errors, keyframe_bytes // len(starts), motions


def schedule_error(errors: np.ndarray, step: int, keyframes: list[int] | list[tuple[int, int]]) -> float:
    """Mean error over the clip of a schedule: keyframe frames (multiples of ``step``, the
    first 0), or (from frame, keyframe frame) pairs where a refresh sends an earlier frame."""
    n = errors.shape[1]
    pairs = [k if isinstance(k, tuple) else (k, k) for k in keyframes]
    total = 0.0
    for (a, k), (b, _) in zip(pairs, [*pairs[1:], (n, 0)]):
        total += float(np.sum(errors[k // step, a:b]))
    return total / n


def select(errors: np.ndarray, step: int, t: int, select_s: float, window_s: float) -> int:
    """The keyframe a selecting sender sends at frame t: of the grid frames of the last
    ``select_s`` seconds, the one that rebuilds the last ``window_s`` seconds best."""
    lo = max(0, t - round(select_s * FPS))
    candidates = [k for k in range(lo - lo % step, t + 1, step) if k >= lo] or [t - t % step]
    window = slice(max(0, t - round(window_s * FPS)), t + 1)
    return min(candidates, key=lambda k: float(np.mean(errors[k // step, window])))


def periodic(errors: np.ndarray, step: int, frames: int, select_s: float = 0.0,
             window_s: float = 1.0) -> list[tuple[int, int]]:
    """A keyframe every ``frames`` frames; with ``select_s`` the best recent frame is sent."""
    n = errors.shape[1]
    return [(t, select(errors, step, t, select_s, window_s) if select_s and t else t)
            for t in range(0, n, frames)]


def oracle(errors: np.ndarray, step: int, count: int) -> list[int]:
    """The schedule of ``count`` keyframes (the first at frame 0) with the least total error."""
    m, n = errors.shape
    starts = [i * step for i in range(m)]
    # cost[i][j]: frames from starts[i] up to starts[j] (or the end) shown from keyframe i
    cum = np.nancumsum(np.nan_to_num(errors, nan=0.0), axis=1)

    def cost(i: int, end: int) -> float:
        a = starts[i]
        return float(cum[i, end - 1] - (cum[i, a - 1] if a > 0 else 0.0))

    best = np.full((count + 1, m), np.inf)  # best[c][i]: least error of frames before starts[i] with c keyframes, the c-th at i
    back = np.zeros((count + 1, m), np.int64)
    best[1][0] = 0.0
    for c in range(2, count + 1):
        for j in range(1, m):
            options = [best[c - 1][i] + cost(i, starts[j]) for i in range(j)]
            i = int(np.argmin(options))
            best[c][j], back[c][j] = options[i], i
    totals = [best[count][i] + cost(i, n) for i in range(m)]
    last = int(np.argmin(totals))
    chosen = [last]
    for c in range(count, 1, -1):
        chosen.append(int(back[c][chosen[-1]]))
    return sorted(starts[i] for i in chosen)


def online(errors: np.ndarray, step: int, policy: RefreshPolicy) -> list[int]:
    """The Encoder's closed loop replayed on E: every ``candidate_every``-th grid frame, once
    ``min_interval_s`` has passed, the frame at hand is a trial keyframe, sent when it rebuilds
    the window's frames (E[trial, ·]) better than the held keyframe did by ``gain``; a cut
    (the error ``jump`` over the first check for ``hold_checks`` frames) refreshes at the next
    grid frame."""
    n = errors.shape[1]
    every = max(step, -(-policy.candidate_every // step) * step)
    gap, span = round(policy.window_gap_s * FPS), round(policy.window_s * FPS)
    keyframes, last, floor, jumps = [0], 0, None, 0
    for t in range(1, n):
        error = float(errors[last // step, t])
        floor = error if floor is None else floor
        jumps = jumps + 1 if error - floor > policy.jump else 0
        if t % every or (t - last) / FPS < policy.min_interval_s:
            continue
        window = np.arange(t - gap, max(last, t - span - 1), -policy.window_step)
        if jumps < policy.hold_checks and (len(window) < 2 or float(
                np.mean(errors[last // step, window]) - np.mean(errors[t // step, window])) < policy.gain):
            continue
        keyframes.append(t)
        last, floor, jumps = t, None, 0
    return keyframes


def _spearman_finite(a: np.ndarray, b: np.ndarray) -> float:
    """``spearman`` over the pairs where both are finite; NaN with fewer than 3."""
    keep = np.isfinite(a) & np.isfinite(b)
    return spearman(a[keep], b[keep]) if keep.sum() >= 3 else float("nan")


def keyframe_predictors(errors: np.ndarray, motions: np.ndarray, step: int) -> dict[str, float]:
    """How well what the sender knows at a frame predicts how good a keyframe it makes: the
    Spearman correlation, over the grid keyframes, between a keyframe's mean error over the
    clip and how far its pose (the largest of |yaw, pitch, roll − the clip's median|) and its
    expression (the distance of its expression coefficients from their median) are from the
    clip's usual."""
    keys = motions[np.arange(errors.shape[0]) * step]
    median = np.nanmedian(motions, axis=0)
    pose = np.max(np.abs(keys[:, :3] - median[:3]), axis=1)
    expression = np.linalg.norm(keys[:, NUM_POSE_VALUES:] - median[NUM_POSE_VALUES:], axis=1)
    quality = np.nanmean(errors, axis=1)
    return {"pose": _spearman_finite(pose, quality), "expression": _spearman_finite(expression, quality)}


def policy_overrides(spec: str) -> dict[str, float]:
    """"name=value,…" -> RefreshPolicy fields (numeric ones; the gain comes from --gains)."""
    import dataclasses

    # Field types are strings under postponed annotations, classes otherwise.
    fields = {f.name: getattr(f.type, "__name__", f.type) for f in dataclasses.fields(RefreshPolicy)}
    out: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, value = item.partition("=")
        if name not in fields or name == "gain" or fields[name] not in ("float", "int"):
            raise ValueError(f"not a numeric RefreshPolicy field: {name!r}")
        out[name] = int(value) if fields[name] == "int" else float(value)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.refresh_oracle", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--split", default="dev")
    p.add_argument("--frames", type=int, default=250)
    p.add_argument("--step", type=int, default=5, help="keyframe grid, in frames (default: %(default)s)")
    p.add_argument("--periods", default="10,8,6,4,3,2,1.4,1", help="periodic refresh, seconds")
    p.add_argument("--gains", default="0.2,0.12,0.08,0.05,0.03,0.02", help="the online loop's gains")
    p.add_argument("--policy", default="",
                   help="replay the online loop with these RefreshPolicy fields changed, e.g. "
                        "window_s=3,min_interval_s=2 (numbers only)")
    p.add_argument("--select-s", type=float, default=2.0,
                   help="the selecting variants pick the keyframe among the last N seconds' frames")
    p.add_argument("--crops", type=Path, default=Path("out/rd/crops"), help="the rd crop cache")
    p.add_argument("--clips", type=int, default=None, help="first N clips")
    p.add_argument("--save", type=Path, default=None,
                   help="keep each clip's E and motion here (.npz), and reuse those already there")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    from codec.zoo import load_landmark_model

    model = load_landmark_model(refiner=False)  # what the sender's check renders
    try:
        overrides = policy_overrides(args.policy)
    except ValueError as exc:
        p.error(f"--policy: {exc}")
    periods = [float(x) for x in args.periods.split(",")]
    gains = [float(x) for x in args.gains.split(",")]
    clips = manifest_clips(args.manifest, args.split)[:args.clips]
    rows = []
    for clip in clips:
        started = time.perf_counter()
        saved = None if args.save is None else args.save / f"{clip.name.replace('/', '__')}.npz"
        if saved is not None and saved.is_file() and int(np.load(saved)["step"]) == args.step:
            kept = np.load(saved)  # a run before computed this clip's matrix
            errors, keyframe_bytes, motions = kept["errors"], int(kept["keyframe_bytes"]), kept["motions"]
        else:
            crops = load_crops(clip, 256, args.frames, args.crops)
            errors, keyframe_bytes, motions = error_matrix(model, crops, args.step)
            if saved is not None:
                saved.parent.mkdir(parents=True, exist_ok=True)
                np.savez(saved, errors=errors, motions=motions, keyframe_bytes=keyframe_bytes, step=args.step)
        n = errors.shape[1]
        seconds = n / FPS
        row = {"clip": clip.name, "seconds": seconds, "keyframe_bytes": keyframe_bytes,
               "keyframe_predictors": keyframe_predictors(errors, motions, args.step),
               **{family: {} for family in FAMILIES}}
        for period in periods:
            frames = max(args.step, round(period * FPS / args.step) * args.step)
            for family, select_s in (("periodic", 0.0), ("periodic_select", args.select_s)):
                plan = periodic(errors, args.step, frames, select_s)
                row[family][f"{period:g}"] = {"keyframes": len(plan),
                                              "error": schedule_error(errors, args.step, plan)}
        for count in sorted({v["keyframes"] for v in row["periodic"].values()}):
            row["oracle"][str(count)] = {"keyframes": count,
                                         "error": schedule_error(errors, args.step, oracle(errors, args.step, count))}
        for gain in gains:
            plan = online(errors, args.step, RefreshPolicy(**(overrides | {"gain": gain})))
            row["online"][f"{gain:g}"] = {"keyframes": len(plan), "error": schedule_error(errors, args.step, plan)}
        rows.append(row)
        print(f"{clip.name[:50]:50s} {time.perf_counter() - started:5.1f} s  periodic 4 s "
              f"{row['periodic'].get('4', {}).get('error', float('nan')):.4f}", flush=True)
    # Mean over clips of keyframes per second (× the mean keyframe size = rate) and error.
    mean_bytes = float(np.mean([r["keyframe_bytes"] for r in rows]))

    def curve(family: str) -> list[dict]:
        keys = list(rows[0][family])
        out = []
        for key in keys:
            items = [r[family][key] for r in rows if key in r[family]]
            if len(items) != len(rows):
                continue
            kfps = float(np.mean([it["keyframes"] / r["seconds"] for it, r in zip(items, rows)]))
            out.append({"setting": key, "keyframes_per_s": kfps, "keyframe_kbps": kfps * mean_bytes * 8 / 1000,
                        "error": float(np.mean([it["error"] for it in items]))})
        return out

    curves = {family: curve(family) for family in FAMILIES}
    base = curves["periodic"]
    summary = {}
    for family in FAMILIES[1:]:
        pts = curves[family]
        summary[family] = bd_rate([c["keyframe_kbps"] for c in base], [c["error"] for c in base],
                                  [c["keyframe_kbps"] for c in pts], [c["error"] for c in pts],
                                  lower_is_better=True)
        print(f"{family}: BD-rate of keyframe bits against periodic, at equal error: {summary[family]}")
    for family, pts in curves.items():
        for c in pts:
            print(f"  {family:8s} {c['setting']:>5s}: {c['keyframes_per_s']:.3f} keyframes/s "
                  f"({c['keyframe_kbps']:5.1f} kbit/s) error {c['error']:.4f}")
    predictors = {name: float(np.nanmedian([r["keyframe_predictors"][name] for r in rows]))
                  for name in ("pose", "expression")}
    print("a keyframe's mean error against its distance from the clip's usual pose / expression, "
          f"Spearman, median over clips: {predictors['pose']:.2f} / {predictors['expression']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"step": args.step, "policy_overrides": overrides,
                                    "mean_keyframe_bytes": mean_bytes,
                                    "keyframe_predictors_median": predictors,
                                    "bd_rate_keyframe_bits_vs_periodic_pct": summary, "curves": curves,
                                    "clips": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
