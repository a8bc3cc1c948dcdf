"""Curve maths on the averaged results: BD-rate, the rate at which a curve reaches a quality,
the headline ratio against x264, and the per-codec curves they run on."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .protocol import AKD_COMMON, LOWER_IS_BETTER, SUMMARY_METRICS


def _envelope(rates: Sequence[float], values: Sequence[float],
              sign: float) -> tuple[np.ndarray, np.ndarray]:
    """(log-rates, sign·quality) of a curve's monotone envelope: points sorted by rate, each
    kept only if it improves on every cheaper point (``sign`` = −1 for lower-is-better)."""
    pts = sorted((float(r), float(v)) for r, v in zip(rates, values)
                 if v is not None and np.isfinite(r) and np.isfinite(v) and r > 0)
    kept: list[tuple[float, float]] = []
    for r, v in pts:
        if not kept or sign * v > kept[-1][1]:
            kept.append((r, sign * v))
    return np.log([k[0] for k in kept]), np.array([k[1] for k in kept])


def bd_rate(rate_a: Sequence[float], metric_a: Sequence[float], rate_b: Sequence[float],
            metric_b: Sequence[float], lower_is_better: bool | None = None) -> float | None:
    """Bjøntegaard delta rate of curve B against curve A, in percent.

    Each curve is reduced to its monotone envelope (a point that is no better than a cheaper
    one is dropped), log(rate) is interpolated piecewise-linearly in the metric between the
    envelope's points, both are averaged over the metric interval where the curves overlap,
    and the mean log-rate difference becomes a percentage: −50 means B needs half A's rate
    for the same quality. Piecewise-linear rather than the classic cubic fit, because a cubic
    through a curve with a knee (x264 near its floor) swings far outside the measured rates
    and gives absurd answers such as −100 %. ``lower_is_better`` (inferred from curve A's
    ends when None) picks the metric's direction. None when the curves do not overlap or
    have fewer than 2 envelope points."""
    if lower_is_better is None:
        pts = sorted((float(r), float(v)) for r, v in zip(rate_a, metric_a)
                     if v is not None and np.isfinite(r) and np.isfinite(v) and r > 0)
        if len(pts) < 2:
            return None
        lower_is_better = pts[-1][1] < pts[0][1]
    sign = -1.0 if lower_is_better else 1.0
    curves = [_envelope(rate_a, metric_a, sign), _envelope(rate_b, metric_b, sign)]
    if any(len(q) < 2 for _, q in curves):
        return None
    low = max(q[0] for _, q in curves)
    high = min(q[-1] for _, q in curves)
    if not high > low:
        return None
    # Piecewise-linear integrands: the trapezoid rule over every breakpoint is exact.
    grid = np.unique(np.concatenate([[low, high]] + [q[(q > low) & (q < high)] for _, q in curves]))
    means = [float(np.trapezoid(np.interp(grid, q, log_rate), grid)) / (high - low)
             for log_rate, q in curves]
    return float((math.exp(means[1] - means[0]) - 1.0) * 100.0)


def rate_for_quality(rates: Sequence[float], values: Sequence[float], target: float,
                     lower_is_better: bool) -> float | None:
    """The rate at which a codec's curve reaches ``target`` quality, interpolating
    log-rate linearly between the two neighbouring points of its convex-hull-free
    monotone envelope (points sorted by rate, each kept only if it improves on all cheaper
    ones). None when the target lies outside what the curve reaches."""
    pts = sorted((float(r), float(v)) for r, v in zip(rates, values)
                 if r > 0 and np.isfinite(r) and np.isfinite(v))
    sign = -1.0 if lower_is_better else 1.0  # make "higher is better" internally
    envelope: list[tuple[float, float]] = []
    for r, v in pts:
        if not envelope or sign * v > envelope[-1][1]:
            envelope.append((r, sign * v))
    goal = sign * target
    if not envelope or goal < envelope[0][1] or goal > envelope[-1][1]:
        return None
    if len(envelope) == 1:
        return envelope[0][0]
    for (r0, q0), (r1, q1) in itertools.pairwise(envelope):
        if q0 <= goal <= q1:
            t = 0.0 if q1 == q0 else (goal - q0) / (q1 - q0)
            return float(math.exp(math.log(r0) + t * (math.log(r1) - math.log(r0))))
    return None


def value_at_rate(rates: Sequence[float], values: Sequence[float], rate: float) -> float | None:
    """A metric interpolated at ``rate`` along a curve (linear in log-rate); None outside it."""
    pts = sorted((float(r), float(v)) for r, v in zip(rates, values)
                 if r > 0 and np.isfinite(r) and v is not None and np.isfinite(v))
    if not pts or rate < pts[0][0] or rate > pts[-1][0]:
        return None
    xs = np.log([p[0] for p in pts])
    return float(np.interp(math.log(rate), xs, [p[1] for p in pts]))


def headline(ours: dict[str, float], x264_curve: list[dict[str, float]],
             rate_key: str = "payload_kbps", against: str = "x264") -> dict[str, Any]:
    """x264 rate needed to match our LPIPS (interpolated on x264's curve) ÷ our rate.

    Counted only where our AKD is no worse than x264's AKD at that matched rate (else the
    match rewards sharp frames that do not move, as the frozen keyframe shows). ``against``:
    the curve's codec, for the reasons' wording (the same sum runs against any baseline)."""
    rates = [p[rate_key] for p in x264_curve]
    lpips = [p.get("lpips") for p in x264_curve]
    out: dict[str, Any] = {"rate_key": rate_key, "ours_kbps": ours.get(rate_key),
                           "ours_lpips": ours.get("lpips"), "ours_akd": ours.get("akd")}
    if ours.get("lpips") is None or any(v is None for v in lpips) or not rates:
        return out | {"ratio": None, "counted": False, "reason": "LPIPS unavailable"}
    matched = rate_for_quality(rates, lpips, ours["lpips"], lower_is_better=True)
    if matched is None:
        best = min(lpips)
        why = (f"our LPIPS is better than {against}'s best point" if ours["lpips"] < best
               else f"our LPIPS is worse than {against}'s floor")
        return out | {"ratio": None, "counted": False, "reason": why}
    out[f"{against}_kbps"] = matched
    out["ratio"] = matched / ours[rate_key] if ours[rate_key] else None
    x264_akd = value_at_rate(rates, [p.get("akd") for p in x264_curve], matched)
    out[f"{against}_akd_at_match"] = x264_akd
    if ours.get("akd") is None or x264_akd is None:
        return out | {"counted": False, "reason": "AKD unavailable"}
    counted = ours["akd"] <= x264_akd
    return out | {"counted": counted,
                  "reason": "ok" if counted else f"our AKD is worse than {against}'s at the matched rate"}


def curves_by_codec(averages: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Averaged points grouped into one curve per codec (ours: one per keyframe refresh)."""
    curves: dict[str, list[dict[str, Any]]] = {}
    for row in averages:
        label = row["codec"]
        if label == "ours":
            _, refresh, *variant = row["setting"].split("-")  # q<Q>-(kf0|kf<s>|ad<gain>)[-nopatch][-kq<Q>]
            # One curve across qualities with one keyframe, one across periodic refresh
            # periods, one across the closed loop's gains; each variant its own.
            turn = refresh.partition("t")[2] if refresh.startswith("ad") else ""  # ad<gain>t<deg>
            label = ("ours kf0" if refresh == "kf0" else "ours adaptive" if refresh.startswith("ad")
                     else "ours periodic face-wait" if refresh.endswith("f") else "ours periodic") \
                + (f" turn {turn}" if turn else "") + "".join(f" {v}" for v in variant)
        curves.setdefault(label, []).append(row)
    for points in curves.values():
        points.sort(key=lambda r: r["payload_kbps"])
    return curves


# The other matched-LPIPS ratios (``analysis``'s "headline_vs"): (baseline, rate): the payload
# against SVT-AV1, and the steady state (payload after the first second, where a call spends
# its minutes; the keyframe falls out) against x264's own steady state.
OTHER_HEADLINES = (("av1", "payload_kbps"), ("x264", "steady_kbps"))


def headlines_against(averages: list[dict[str, Any]], against: str,
                      rate_key: str) -> list[dict[str, Any]]:
    """``headline`` for each of our averaged settings against ``against``'s curve on
    ``rate_key`` (both sides' rates in that key); empty where that codec or rate is missing."""
    curve = [{"lpips": p.get("lpips"), "akd": p.get("akd"), rate_key: p.get(rate_key)}
             for p in curves_by_codec(averages).get(against, [])]
    if not curve or any(p[rate_key] is None for p in curve):
        return []
    return [{"setting": row["setting"], "against": against}
            | headline({"lpips": row.get("lpips"), "akd": row.get("akd"), rate_key: row[rate_key]},
                       curve, rate_key=rate_key, against=against)
            for row in averages if row["codec"] == "ours" and row.get(rate_key) is not None]


def analysis(averages: list[dict[str, Any]]) -> dict[str, Any]:
    """Headline ratios (each of our settings against x264; ``headline_vs``: against SVT-AV1 and
    in the steady state) and BD-rates against x264."""
    curves = curves_by_codec(averages)
    x264 = curves.get("x264", [])
    out: dict[str, Any] = {"headline": [], "bd_rate_vs_x264": {}}
    for row in averages:
        if row["codec"] == "ours" and x264:
            for rate_key, x264_key in (("payload_kbps", "payload_kbps"), ("wire_kbps", "wire_kbps")):
                item = headline({"lpips": row.get("lpips"), "akd": row.get("akd"),
                                 rate_key: row[rate_key]},
                                [{"lpips": p.get("lpips"), "akd": p.get("akd"),
                                  rate_key: p[x264_key]} for p in x264], rate_key=rate_key)
                out["headline"].append({"setting": row["setting"]} | item)
    others = [h for against, rate_key in OTHER_HEADLINES for h in headlines_against(averages, against, rate_key)]
    if others:
        out["headline_vs"] = others
    for label, points in curves.items():
        if label == "x264" or not x264 or label == "frozen":
            continue
        for metric in SUMMARY_METRICS:
            a = [(p["payload_kbps"], p.get(metric)) for p in x264 if p.get(metric) is not None]
            b = [(p["payload_kbps"], p.get(metric)) for p in points if p.get(metric) is not None]
            if len(a) >= 2 and len(b) >= 2:
                value = bd_rate(*zip(*a), *zip(*b), lower_is_better=metric in LOWER_IS_BETTER)
                out["bd_rate_vs_x264"].setdefault(label, {})[metric] = value
    # The closed loop against fixed refresh at its quality (every period, none = kf0 included),
    # each keyframe variant against the fixed refresh of keyframe quality 90.
    ours = [(r, r["setting"].split("-")) for r in averages if r["codec"] == "ours"]
    for label, adaptive in curves.items():
        if not label.startswith("ours adaptive"):
            continue
        qualities = {r["setting"].split("-")[0] for r in adaptive}
        no_patch = "nopatch" in label
        same = [(r, refresh) for r, (q, refresh, *variant) in ours if q in qualities
                and refresh.startswith("kf") and variant == (["nopatch"] if no_patch else [])]
        # Blind periods, and periods whose refresh waits for a detected face (kf<s>f), as the
        # loop's does; one keyframe (kf0) belongs to both curves.
        baselines = {"bd_rate_adaptive_vs_fixed_refresh": [r for r, name in same if not name.endswith("f")],
                     "bd_rate_adaptive_vs_face_wait_refresh": [r for r, name in same
                                                               if name.endswith("f") or name == "kf0"]}
        for key, fixed in baselines.items():
            for metric in ("lpips", "akd", AKD_COMMON, "psnr"):
                a = [(p["payload_kbps"], p.get(metric)) for p in fixed if p.get(metric) is not None]
                b = [(p["payload_kbps"], p.get(metric)) for p in adaptive if p.get(metric) is not None]
                if len(a) >= 2 and len(b) >= 2:
                    out.setdefault(key, {}).setdefault(label, {})[metric] = bd_rate(
                        *zip(*a), *zip(*b), lower_is_better=metric in LOWER_IS_BETTER)
    return out

