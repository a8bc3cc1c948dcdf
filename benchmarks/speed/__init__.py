"""Speed of the whole codec at batch 1: keyframe setup, per-frame sender and receiver paths.

    python -m benchmarks.speed [--config vox256] [--device cpu|cuda] [--threads 2]
                               [--precisions fp32,bf16,fp16] [--modes eager,compile,graph]
                               [--frames 200] [--warmup 20] [--json PATH]

The model has random, UNTRAINED weights (seeded). Speed does not depend on the weight
values, only on the architecture and the tensor shapes, so no trained model is needed;
the numerics comparisons below are indicative only (error propagation does depend on
the weights).

What is timed (one row per stage × precision × mode):

- ``keyframe.setup`` (F + L + H/Δ on the keyframe, ``prepare_source``), ``keyframe.F``,
  ``keyframe.L``: once per keyframe, so eager only.
- ``sender.H`` (H/Δ, ``estimate_motion``), ``sender.motion_encode`` (quantize + range code
  + packet), ``sender.frame`` (H/Δ + read-back + motion coding: the sender's frames/s).
- ``receiver.motion_decode`` (parse a real packet from codec.motion_coding + range decode
  + dequantize), ``receiver.kp_transform`` (motion to device tensors + x_d = R·x_c + t + δ),
  ``receiver.M``, ``receiver.warp``, ``receiver.G``, ``receiver.render``,
  ``receiver.frame`` (packet -> decoded motion -> render -> uint8 frame on the host: the
  receiver's frames/s).
  ``render`` runs M and G inside one call, so M and G are timed by calling the modules
  directly with exactly the tensors ``render`` passes them (checked: M then G reproduces
  ``render``'s frame, recorded as ``split_check``). ``receiver.G`` includes the warp
  (G's forward starts with it); G without the warp is G − warp.

Timing: on CUDA, each frame is bracketed by a ``torch.cuda.Event`` pair and synchronised
before the next one is launched (per-frame latency, launch gaps included), median and p99
over ``--frames`` frames after ``--warmup``; stages that run host code (motion coding,
read-back) use ``time.perf_counter`` with a device sync. On the CPU everything uses
``time.perf_counter`` with the stated thread count, and the heavy stages (F, L, M, warp,
G, render) default to fewer frames (``--cpu-heavy-frames``).

Precisions: ``torch.autocast`` with bf16 / fp16 (weights stay fp32; the keyframe setup also
runs under autocast, so the comparison is end to end). Modes: eager, ``torch.compile``
(failures are recorded with their reason), and CUDA graphs (capture of the fixed-shape
per-frame path; 'n/a' on the CPU). Every variant's output is compared with the fp32 eager
reference (max abs diff; PSNR for frames) against the tolerances in ``TOLERANCES``.

The JSON also holds FLOPs per frame of M and G (``torch.utils.flop_counter``) and the
minimum bytes they move, so a GPU session can derive the floor time.

Imports torch and numpy only: constriction (the range coder) is imported lazily and the
motion-coding stages are skipped with a note where it is absent.

Layout, one job a module: ``stages`` (what is measured, tolerances, the row), ``timing``
(timing one stage), ``numerics`` (comparison with fp32 eager), ``costs`` (FLOPs and bytes),
``environment`` (device and machine), ``motion`` (the synthetic motion stream), ``inputs``
(model, inputs, references), ``modes`` (eager / compile / CUDA graph), ``steps`` (one frame of
each stage), ``bench`` (``SpeedBenchmark`` and ``run``), ``results`` (the report, console
lines, JSON) and ``cli``.
"""

from __future__ import annotations

from .bench import SpeedBenchmark, run
from .cli import main, parse_args
from .costs import COST_NOTES, cost_model
from .environment import environment
from .numerics import compare, within_tolerance
from .stages import (
    DEVICE_STAGES,
    FRAME_STAGES,
    HEAVY_STAGES,
    HOST_STAGES,
    KEYFRAME_STAGES,
    MODES,
    PRECISIONS,
    TOLERANCES,
    WEIGHTS_NOTE,
    NotApplicable,
    Row,
)
from .timing import Timing, percentile, time_stage

__all__ = [
    "COST_NOTES", "DEVICE_STAGES", "FRAME_STAGES", "HEAVY_STAGES", "HOST_STAGES",
    "KEYFRAME_STAGES", "MODES", "PRECISIONS", "TOLERANCES", "WEIGHTS_NOTE", "NotApplicable",
    "Row", "SpeedBenchmark", "Timing", "compare", "cost_model", "environment", "main",
    "parse_args", "percentile", "run", "time_stage", "within_tolerance",
]
