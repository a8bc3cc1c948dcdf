"""What is measured: stage names and which run where, precisions and modes (with autocast for
the 16-bit ones), the numerics tolerances, the motion-coding settings, and the ``Row`` each
(stage, precision, mode) fills."""

from __future__ import annotations

import contextlib
import statistics
from dataclasses import dataclass, field
from typing import Any

import torch

from .timing import Timing, percentile

BENCHMARK_NAME = "speed"
WEIGHTS_NOTE = ("random, UNTRAINED weights (seeded): speed does not depend on weight values; "
                "numerics vs fp32 are indicative only")
PRECISIONS = ("fp32", "bf16", "fp16")
MODES = ("eager", "compile", "graph")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
BYTES_PER_ELEMENT = {"fp32": 4, "bf16": 2, "fp16": 2}

# Stages whose CPU cost is ~0.05–0.7 s a call: fewer frames on the CPU by default.
HEAVY_STAGES = frozenset({"keyframe.setup", "keyframe.F", "keyframe.L", "receiver.M",
                          "receiver.warp", "receiver.G", "receiver.render", "receiver.frame"})
KEYFRAME_STAGES = ("keyframe.setup", "keyframe.F", "keyframe.L")
# Stages that run on the device end to end; they get CUDA-event timing.
DEVICE_STAGES = frozenset({"keyframe.setup", "keyframe.F", "keyframe.L", "sender.H",
                           "receiver.kp_transform", "receiver.M", "receiver.warp",
                           "receiver.G", "receiver.render"})
# Per-frame model stages measured in every precision and mode (the rest: see notes).
FRAME_STAGES = ("sender.H", "receiver.kp_transform", "receiver.M", "receiver.warp",
                "receiver.G", "receiver.render", "sender.frame", "receiver.frame")
HOST_STAGES = ("sender.motion_encode", "receiver.motion_decode")

# Rendered frames must stay within these of the fp32 eager frame. fp32 variants (compile,
# CUDA graphs) may only reorder arithmetic; 16-bit autocast keeps ~3 significant digits,
# and 8-bit output needs ≥ ~40 dB to be visually identical.
TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"max_abs": 1e-3},
    "bf16": {"psnr_db_min": 35.0},
    "fp16": {"psnr_db_min": 40.0},
}
MOTION_QUALITY = 3  # codec.motion_coding.DEFAULT_QUALITY, repeated so the import stays lazy
INTRA_PERIOD = 25  # codec.api.DEFAULT_INTRA_PERIOD (codec.api needs OpenCV, not imported)


class NotApplicable(Exception):
    """This stage does not exist in this precision/mode (recorded as 'n/a')."""


def autocast(precision: str, device: torch.device, graph: bool = False
             ) -> contextlib.AbstractContextManager:
    """fp32: no autocast. bf16/fp16: torch.autocast (cast cache off inside CUDA graph capture)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision], cache_enabled=not graph)


@dataclass
class Row:
    """One (stage, precision, mode) of the report: its status, timing statistics and notes."""

    stage: str
    precision: str
    mode: str
    status: str  # ok | n/a | unsupported | failed | skipped
    median_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    min_ms: float | None = None
    frames: int = 0
    warmup: int = 0
    timer: str | None = None
    first_call_ms: float | None = None
    frames_per_s: float | None = None
    peak_memory: dict[str, Any] | None = None
    numerics: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def record(self, timing: Timing) -> None:
        """The statistics of a stage's timed frames: median, p99, mean, min, and how it was timed."""
        times = timing.times_ms
        self.median_ms, self.p99_ms = statistics.median(times), percentile(times, 0.99)
        self.mean_ms, self.min_ms = statistics.fmean(times), min(times)
        self.timer, self.first_call_ms, self.peak_memory = (timing.timer, timing.first_call_ms,
                                                            timing.peak_memory)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

