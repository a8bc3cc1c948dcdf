"""What a codec run hands to scoring (``CodecRun``) and one point of a codec's sweep
(``Setting``): the types every codec runner shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .protocol import scored_indices


@dataclass
class CodecRun:
    """What one codec setting did on one clip.

    ``frame_bytes[i]`` are the bytes attributed to frame i (for ours: its keyframe packet,
    if any, plus its motion packet; the stream header goes to frame 0). ``decoded`` holds
    every frame, or only the frames ``scored`` names when the codec was asked to rebuild
    just those (ours with ``metric_every`` > 1)."""

    decoded: list[np.ndarray]  # N (or len(scored)) × H×W×3 uint8 RGB at the crop size
    frame_bytes: np.ndarray  # N int
    wire_bytes: int  # payload + per-message/per-packet transport overhead
    encode_s: float
    decode_s: float
    extra: dict[str, Any] = field(default_factory=dict)
    scored: np.ndarray | None = None  # frame indices ``decoded`` holds when not all frames
    rendered: int | None = None  # frames actually rebuilt (decode_s covers these), if not N

    def scored_frames(self, metric_every: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """(indices, decoded frames) of frames 0, K, 2K, … (K = ``metric_every``)."""
        n = len(self.frame_bytes)
        wanted = scored_indices(n, metric_every)
        if self.scored is not None:
            if not np.array_equal(self.scored, wanted):
                raise ValueError(f"run holds frames {self.scored[:4]}…, not every {metric_every}th")
            return wanted, list(self.decoded)
        return wanted, [self.decoded[i] for i in wanted]


@dataclass(frozen=True)
class Setting:
    """One point of a codec's sweep."""

    codec: str
    name: str  # e.g. "crf36", "kbps20", "q3-kf0"
    params: dict[str, Any]

