"""The protocol's fixed choices: frame rate, crop fit, the metrics and codecs compared, and which
frames the quality metrics cover."""

from __future__ import annotations

import numpy as np

FPS = 25.0
UNTRAINED_MARK = "UNTRAINED MODEL — our codec's quality figures are meaningless"
METRICS = ("psnr", "ssim", "ms_ssim", "lpips", "akd", "aed")
# AKD over the frames where every setting of the run shows a face (scoring.add_common_face_akd):
# per-setting AKD averages whichever frames dlib found a face in, so a setting that loses the
# face on its hardest frames looks better than one that keeps it there.
AKD_COMMON = "akd_common"
# Per-clip means averaged over clips, compared in BD-rates and plotted: the metrics and AKD_COMMON.
SUMMARY_METRICS = (*METRICS, AKD_COMMON)
# Per-clip figures beside the means (scoring.frame_stats): the worst frames' LPIPS (95th
# percentile of the scored frames) and the payload rate after the first second.
FRAME_STATS = ("lpips_p95", "steady_kbps")
# Lower is better for these; higher for the rest.
LOWER_IS_BETTER = {"lpips", "akd", "aed", AKD_COMMON}
ALL_CODECS = ("ours", "x264", "vp8", "vp9", "av1", "frozen")


def metric_label(metric: str) -> str:
    """A metric's name in headings and plot titles: "LPIPS", "AKD common" for AKD_COMMON."""
    return "AKD common" if metric == AKD_COMMON else metric.upper()


def scored_indices(n: int, metric_every: int) -> np.ndarray:
    """Frames 0, K, 2K, … below n: the frames whose quality is measured."""
    if metric_every < 1:
        raise ValueError("metric_every must be >= 1")
    return np.arange(0, n, metric_every, dtype=np.int64)


def metric_sampling_text(metric_every: int, frames: int) -> str:
    """The plain statement of which frames the quality metrics cover (JSON, summary, README)."""
    if metric_every == 1:
        return "quality metrics on every frame; rates count every frame"
    return (f"quality metrics sampled on every {metric_every}th frame (frames 0, {metric_every}, "
            f"{2 * metric_every}, …: {len(scored_indices(frames, metric_every))} of {frames}) "
            f"while rates count all frames (every frame is encoded and decoded)")

