"""The run as markdown: the averaged-results table and summary.md (banner, headline, BD-rates,
plots, notes); ``benchmarks.report`` reuses them for the README."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.env import describe_commit

from .protocol import AKD_COMMON, SUMMARY_METRICS, UNTRAINED_MARK, metric_label, metric_sampling_text


def format_cell(value: Any, digits: int = 3) -> str:
    """A value as a table cell: "n/a" when missing or not finite, a float to ``digits``
    significant digits (whole above 1000), anything else as ``str``."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


TABLE_COLUMNS = ("codec", "setting", "clips", "scored_frames", "payload_kbps", "wire_kbps",
                 "bits_per_frame", "psnr", "ssim", "ms_ssim", "lpips", "akd", AKD_COMMON, "aed",
                 "encode_ms_per_frame", "decode_ms_per_frame")
_HEADS = {"codec": "codec", "setting": "setting", "clips": "clips", "scored_frames": "scored frames/clip",
          "payload_kbps": "payload kbit/s", "wire_kbps": "on-wire kbit/s",
          "steady_kbps": "steady kbit/s (after 1 s)", "bits_per_frame": "bits/frame", "psnr": "PSNR",
          "ssim": "SSIM", "ms_ssim": "MS-SSIM", "lpips": "LPIPS", "lpips_p95": "LPIPS p95 (worst frames)",
          "akd": "AKD", AKD_COMMON: "AKD common", "aed": "AED", "encode_ms_per_frame": "enc ms/f",
          "decode_ms_per_frame": "dec ms/f"}


def table_columns(averages: list[dict[str, Any]]) -> tuple[str, ...]:
    """``TABLE_COLUMNS``, with the steady-state rate after the on-wire rate and LPIPS p95 after
    LPIPS when a row has them (runs scored before rd recorded them render as they did)."""
    columns: list[str] = []
    for key in TABLE_COLUMNS:
        columns.append(key)
        for extra, after in (("steady_kbps", "wire_kbps"), ("lpips_p95", "lpips")):
            if key == after and any(row.get(extra) is not None for row in averages):
                columns.append(extra)
    return tuple(columns)


def markdown_table(averages: list[dict[str, Any]]) -> str:
    """The averaged results as a markdown table (untrained rows flagged). "AKD common" is AKD
    over the frames where every setting of the run shows a face (``akd_common``); "LPIPS p95"
    the per-clip 95th percentile of frame LPIPS, averaged over clips; "steady kbit/s" the
    payload after the first second."""
    columns = table_columns(averages)
    head = [_HEADS[key] for key in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in averages:
        cells = []
        for key in columns:
            value = row.get(key)
            if key == "codec" and row.get("untrained"):
                value = f"{value} (UNTRAINED)"
            if key == "scored_frames" and value is not None and row.get("frames") is not None:
                value = f"{value:.4g} of {row['frames']:.4g}"
            cells.append(format_cell(value, 4 if key in ("ssim", "ms_ssim", "lpips", "lpips_p95") else 3))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def worst_frame_clips(results: list[dict[str, Any]]) -> list[str]:
    """Per clip, each setting's LPIPS p95 (the worst frames) and mean beside the frozen
    keyframe's; ✗ where the p95 is worse than the frozen keyframe's. Empty when no row has a
    p95 or there is no frozen keyframe to compare with."""
    if not any(r.get("lpips_p95") is not None for r in results) \
            or not any(r["codec"] == "frozen" for r in results):
        return []
    columns = list(dict.fromkeys(f"{r['codec']} {r['setting']}" for r in results if r["codec"] != "frozen"))
    columns.append("frozen")
    cells: dict[str, dict[str, dict[str, Any]]] = {}
    for row in results:
        name = "frozen" if row["codec"] == "frozen" else f"{row['codec']} {row['setting']}"
        cells.setdefault(row["clip"], {})[name] = row
    worse = {name: 0 for name in columns}
    lines = ["## Worst frames per clip (LPIPS p95 / mean; ✗: p95 worse than the frozen keyframe's)", "",
             "| clip | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 1)]
    for clip, row in cells.items():
        out = []
        for name in columns:
            r = row.get(name)
            if r is None or r.get("lpips_p95") is None:
                out.append("n/a")
                continue
            text = f"{r['lpips_p95']:.3f} / {r['lpips']:.3f}"
            if r.get("lpips_p95_worse_than_frozen"):
                text += " ✗"
                worse[name] += 1
            out.append(text)
        lines.append(f"| {clip} | " + " | ".join(out) + " |")
    lines.append("| clips ✗ | " + " | ".join("" if name == "frozen" else str(worse[name]) for name in columns) + " |")
    return [*lines, ""]


def closed_loop_clips(results: list[dict[str, Any]]) -> list[str]:
    """Per clip, LPIPS (AKD on common frames in a run without LPIPS) and kbit/s of each
    closed-loop setting beside one keyframe, each fixed period and the frozen keyframe (the
    run's own keyframes only, no -k<codec>/-kq<Q> variants); a clip where the loop is worse than the frozen keyframe is marked.
    Empty without closed-loop rows or either metric."""
    def refresh(row: dict[str, Any]) -> str | None:
        if row["codec"] == "frozen":
            return "frozen"
        parts = row["setting"].split("-")
        return parts[1] if row["codec"] == "ours" and len(parts) == 2 else None

    adaptive = sorted({r for r in map(refresh, results) if r and r.startswith("ad")},
                      key=lambda name: (-float(name[2:].partition("t")[0]), name))  # ad<gain>[t<deg>]
    metric = next((m for m in ("lpips", AKD_COMMON) if any(r.get(m) is not None for r in results)), None)
    if not adaptive or metric is None:
        return []
    fixed = sorted({r for r in map(refresh, results) if r and r.startswith("kf")},
                   key=lambda name: (-float(name[2:].removesuffix("f")) if name != "kf0" else -1e9,
                                     name.endswith("f")))
    columns = [*fixed, *adaptive, "frozen"]
    cells: dict[str, dict[str, dict[str, Any]]] = {}
    for row in results:
        name = refresh(row)
        if name in columns:
            cells.setdefault(row["clip"], {})[name] = row
    lines = [(f"## The closed loop per clip ({metric_label(metric)} at kbit/s; ✗: worse than the frozen "
              "keyframe; keyframes: how many the loop sent)"), "",
             "| clip | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 1)]
    for clip, row in cells.items():
        frozen = row.get("frozen", {}).get(metric)
        out = []
        for name in columns:
            r = row.get(name)
            if r is None or r.get(metric) is None:
                out.append("n/a")
                continue
            text = f"{r[metric]:.3f} at {r['payload_kbps']:.1f}"
            if name.startswith("ad"):
                text += f" ({r.get('extra', {}).get('keyframes', '?')} kf)"
                if frozen is not None and r[metric] > frozen:
                    text += " ✗"
            out.append(text)
        lines.append(f"| {clip} | " + " | ".join(out) + " |")
    return [*lines, ""]


def markdown_summary(data: dict[str, Any], plot_paths: Sequence[str]) -> str:
    """The run as markdown: banner, table, headline, BD-rates, plots, notes."""
    lines = [f"# Rate–distortion benchmark: {data['name']}", ""]
    if data.get("untrained"):
        lines += [(f"> **{UNTRAINED_MARK}.** Rows marked UNTRAINED come from randomly initialised "
                   "weights: they test the pipeline only."), ""]
    env = data.get("env", {})
    lines += [f"- command: `{data.get('command', '')}`",
              (f"- git sha: {describe_commit(env)}; torch {env.get('torch')}, PyAV {env.get('av')}, "
               f"{env.get('device')} with {env.get('cpu_threads')} threads"),
              f"- protocol: {data.get('protocol', '')}",
              *[f"- re-summarised from the stored rows and per-frame arrays at git sha {describe_commit(r)}"
                for r in data.get("resummarised", [])[-1:]],
              "- **metric sampling: " + metric_sampling_text(
                  data.get("metric_every", 1), data.get("frames_requested") or 250) + ".**",
              f"- clips: {', '.join(data.get('clips', [])) or 'none'}"]
    if data.get("skipped"):
        lines.append("- skipped: " + "; ".join(f"{k} ({v})" for k, v in data["skipped"].items()))
    if data.get("metrics_unavailable"):
        lines.append("- n/a metrics: " + "; ".join(f"{k}: {v}"
                                                   for k, v in data["metrics_unavailable"].items()))
    lines += ["", markdown_table(data.get("averages", [])), ""]
    ana = data.get("analysis", {})
    if ana.get("headline"):
        lines += ["## Headline: x264 rate to match our LPIPS ÷ our rate", "",
                  ("| our setting | rate | ours kbit/s | x264 kbit/s at our LPIPS | ratio | "
                   "our AKD | x264 AKD there | counted |"), "|" + " --- |" * 8]
        for h in ana["headline"]:
            lines.append(
                f"| {h['setting']} | {h['rate_key']} | {format_cell(h.get('ours_kbps'))} | "
                f"{format_cell(h.get('x264_kbps'))} | {format_cell(h.get('ratio'))} | "
                f"{format_cell(h.get('ours_akd'))} | {format_cell(h.get('x264_akd_at_match'))} | "
                f"{'yes' if h.get('counted') else 'no: ' + h.get('reason', '')} |")
        lines.append("")
    if ana.get("headline_vs"):
        lines += [("## Against SVT-AV1, and in the steady state (after the first second): the "
                   "baseline's rate to match our LPIPS ÷ ours"), "",
                  ("| our setting | against | rate | ours kbit/s | theirs at our LPIPS | ratio | "
                   "our AKD | their AKD there | counted |"), "|" + " --- |" * 9]
        for h in ana["headline_vs"]:
            against = h.get("against", "x264")
            lines.append(
                f"| {h['setting']} | {against} | {h['rate_key']} | {format_cell(h.get('ours_kbps'))} | "
                f"{format_cell(h.get(f'{against}_kbps'))} | {format_cell(h.get('ratio'))} | "
                f"{format_cell(h.get('ours_akd'))} | {format_cell(h.get(f'{against}_akd_at_match'))} | "
                f"{'yes' if h.get('counted') else 'no: ' + h.get('reason', '')} |")
        lines.append("")
    if ana.get("bd_rate_vs_x264"):
        lines += [("## BD-rate against x264 (payload kbit/s; negative = fewer bits for the same "
                   "quality; log-rate interpolated piecewise-linearly on each curve's monotone "
                   "envelope; n/a = no overlap)"), "",
                  "| curve | " + " | ".join(metric_label(m) for m in SUMMARY_METRICS) + " |",
                  "|" + " --- |" * (len(SUMMARY_METRICS) + 1)]
        for label, values in ana["bd_rate_vs_x264"].items():
            cells = [(format_cell(values.get(m)) + " %") if values.get(m) is not None else "n/a"
                     for m in SUMMARY_METRICS]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    metrics = ("lpips", "akd", AKD_COMMON, "psnr")
    for key, baseline in (("bd_rate_adaptive_vs_fixed_refresh", "every fixed period"),
                          ("bd_rate_adaptive_vs_face_wait_refresh",
                           "every fixed period whose refresh waits for a detected face (kf<s>f)")):
        if not ana.get(key):
            continue
        lines += [(f"## The closed loop against {baseline} (BD-rate of each 'ours adaptive' curve "
                   "at its motion quality, one keyframe included, with the run's keyframes; "
                   "negative = fewer bits for the same quality)"), "",
                  "| curve | " + " | ".join(metric_label(m) for m in metrics) + " |",
                  "|" + " --- |" * (len(metrics) + 1)]
        for label, values in ana[key].items():
            lines.append(f"| {label} | " + " | ".join(
                "n/a" if values.get(m) is None else f"{format_cell(values[m])} %" for m in metrics) + " |")
        lines.append("")
    lines += closed_loop_clips(data.get("results", []))
    clips = set(data.get("clips") or [])
    lines += worst_frame_clips([r for r in data.get("results", []) if not clips or r["clip"] in clips])
    if plot_paths:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plot_paths] + [""]
    lines += ["## Notes", ""] + [f"- {note}" for note in data.get("notes", [])]
    return "\n".join(lines) + "\n"

