"""The protocol's fixed choices: frame rate, crop fit, the metrics and codecs compared, and which
frames the quality metrics cover."""

from __future__ import annotations

import numpy as np

FPS = 25.0
UNTRAINED_MARK = "UNTRAINED MODEL — our codec's quality figures are meaningless"
METRICS = ("psnr", "ssim", "ms_ssim", "lpips", "akd", "aed")
# Lower is better for these; higher for the rest.
LOWER_IS_BETTER = {"lpips", "akd", "aed"}
ALL_CODECS = ("ours", "x264", "vp8", "vp9", "av1", "frozen")


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

