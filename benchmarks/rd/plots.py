"""Rate–distortion plots: one PNG per metric, kbit/s on a log axis, drawn with matplotlib when
it is installed and with OpenCV primitives otherwise."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from .curves import curves_by_codec
from .protocol import LOWER_IS_BETTER, SUMMARY_METRICS, metric_label

COLOURS = {"x264": (31, 119, 180), "vp8": (255, 127, 14), "vp9": (44, 160, 44),
           "av1": (148, 103, 189), "frozen": (0, 0, 0)}  # RGB
OURS_COLOURS = [(214, 39, 40), (227, 119, 194), (140, 86, 75), (188, 189, 34)]


def _colour(label: str, index: int) -> tuple[int, int, int]:
    if label.split()[0] in COLOURS:
        return COLOURS[label.split()[0]]
    return OURS_COLOURS[index % len(OURS_COLOURS)]


def plot_curves(averages: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Like ``curves_by_codec``, but a CRF sweep and a bitrate sweep of one codec are drawn
    as two lines ("x264 crf", "x264 kbps"): joined, they zigzag."""
    curves: dict[str, list[dict[str, Any]]] = {}
    for label, points in curves_by_codec(averages).items():
        if label.startswith("ours") or label == "frozen":
            curves[label] = points
            continue
        for p in points:
            mode = re.sub(r"[0-9.]+$", "", p["setting"])
            curves.setdefault(f"{label} {mode}", []).append(p)
    return curves


def plot_all(averages: list[dict[str, Any]], out_dir: Path, untrained: bool,
             rate_key: str = "payload_kbps") -> tuple[list[Path], str]:
    """One PNG per metric (kbit/s on a log axis vs the metric), the frozen keyframe on the
    same axes as a point and a dashed line. matplotlib if it is installed, else OpenCV."""
    curves = plot_curves(averages)
    paths = []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: F401
        backend = "matplotlib"
    except ImportError:
        backend = "opencv"
    for metric in SUMMARY_METRICS:
        if not any(p.get(metric) is not None for c in curves.values() for p in c):
            continue
        path = out_dir / f"rd_{metric}.png"
        title = f"{metric_label(metric)} vs {rate_key.replace('_', ' ').replace('kbps', 'kbit/s')}"
        if untrained:
            title = "UNTRAINED — " + title
        if backend == "matplotlib":
            _plot_matplotlib(curves, metric, rate_key, title, path)
        else:
            _plot_opencv(curves, metric, rate_key, title, path)
        paths.append(path)
    return paths, backend


def _plot_matplotlib(curves: dict[str, list[dict]], metric: str, rate_key: str, title: str,
                     path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ours_index = 0
    for label, points in curves.items():
        pts = [(p[rate_key], p[metric]) for p in points if p.get(metric) is not None]
        if not pts:
            continue
        colour = [c / 255 for c in _colour(label, ours_index)]
        ours_index += label.startswith("ours")
        xs, ys = zip(*pts)
        if label == "frozen":
            ax.axhline(ys[0], color=colour, linestyle="--", linewidth=1)
            ax.plot(xs, ys, "s", color=colour, label="frozen keyframe")
        else:
            style = "o--" if label.endswith("kbps") else "o-"  # bitrate sweeps dashed
            ax.plot(xs, ys, style, color=colour, label=label, markersize=4)
    ax.set_xscale("log")
    ax.set_xlabel(rate_key.replace("_", " ").replace("kbps", "kbit/s"))
    ax.set_ylabel(metric_label(metric) + (" (lower is better)" if metric in LOWER_IS_BETTER else ""))
    ax.set_title(title, color="red" if title.startswith("UNTRAINED") else "black")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_opencv(curves: dict[str, list[dict]], metric: str, rate_key: str, title: str,
                 path: Path) -> None:
    """The same plot drawn with OpenCV primitives (no matplotlib on this machine)."""
    import cv2

    title = title.replace("—", "-")  # Hershey fonts are ASCII only

    width, height = 900, 580
    left, right, top, bottom = 80, 190, 50, 60
    img = np.full((height, width, 3), 255, np.uint8)
    series = []
    for label, points in curves.items():
        pts = [(p[rate_key], p[metric]) for p in points
               if p.get(metric) is not None and p[rate_key] > 0]
        if pts:
            series.append((label, pts))
    xs = [x for _, pts in series for x, _ in pts]
    ys = [y for _, pts in series for _, y in pts]
    x_lo, x_hi = math.log10(min(xs)), math.log10(max(xs))
    x_lo, x_hi = math.floor(x_lo * 2) / 2, math.ceil(x_hi * 2) / 2 + (0.5 if x_hi == x_lo else 0)
    y_lo, y_hi = min(ys), max(ys)
    pad = 0.05 * (y_hi - y_lo) if y_hi > y_lo else max(abs(y_hi) * 0.05, 0.01)
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def to_px(x: float, y: float) -> tuple[int, int]:
        px = left + (math.log10(x) - x_lo) / (x_hi - x_lo) * (width - left - right)
        py = height - bottom - (y - y_lo) / (y_hi - y_lo) * (height - top - bottom)
        return round(px), round(py)

    grey, black = (225, 225, 225), (0, 0, 0)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for decade in range(math.floor(x_lo), math.ceil(x_hi) + 1):
        for mult in (1, 2, 5):
            x = mult * 10.0 ** decade
            if x_lo <= math.log10(x) <= x_hi:
                px, _ = to_px(x, y_lo)
                cv2.line(img, (px, top), (px, height - bottom), grey, 1)
                cv2.putText(img, f"{x:g}", (px - 12, height - bottom + 20), font, 0.45, black, 1,
                            cv2.LINE_AA)
    for k in range(6):
        y = y_lo + (y_hi - y_lo) * k / 5
        _, py = to_px(10 ** x_lo, y)
        cv2.line(img, (left, py), (width - right, py), grey, 1)
        cv2.putText(img, f"{y:.3g}", (8, py + 5), font, 0.45, black, 1, cv2.LINE_AA)
    cv2.rectangle(img, (left, top), (width - right, height - bottom), black, 1)
    xlabel = rate_key.replace("_", " ").replace("kbps", "kbit/s") + " (log)"
    cv2.putText(img, xlabel, (left + 200, height - 15), font, 0.55, black, 1, cv2.LINE_AA)
    ylabel = metric_label(metric) + (" (lower is better)" if metric in LOWER_IS_BETTER else "")
    cv2.putText(img, ylabel, (left, top - 8), font, 0.5, black, 1, cv2.LINE_AA)
    title_colour = (220, 0, 0) if title.startswith("UNTRAINED") else black
    cv2.putText(img, title, (left, 25), font, 0.65, title_colour, 2, cv2.LINE_AA)
    ours_index = 0
    legend_y = top + 10
    for label, pts in series:
        colour = _colour(label, ours_index)
        ours_index += label.startswith("ours")
        pixels = [to_px(x, y) for x, y in pts]
        if label == "frozen":
            y_px = pixels[0][1]
            for x0 in range(left, width - right, 12):  # dashed horizontal line
                cv2.line(img, (x0, y_px), (min(x0 + 6, width - right), y_px), colour, 1)
            for px, py in pixels:
                cv2.rectangle(img, (px - 4, py - 4), (px + 4, py + 4), colour, -1)
        else:
            if len(pixels) > 1:
                thick = 1 if label.endswith("kbps") else 2  # bitrate sweeps thin, CRF sweeps bold
                cv2.polylines(img, [np.array(pixels, np.int32)], False, colour, thick, cv2.LINE_AA)
            for p in pixels:
                cv2.circle(img, p, 4, colour, -1, cv2.LINE_AA)
        cv2.line(img, (width - right + 12, legend_y), (width - right + 36, legend_y), colour, 2)
        cv2.putText(img, "frozen keyframe" if label == "frozen" else label,
                    (width - right + 42, legend_y + 5), font, 0.45, black, 1, cv2.LINE_AA)
        legend_y += 22
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))

