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
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import platform
import resource
import signal
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.env import cpu_name, git_sha

try:  # private but long-stable; only used for an optional diagnostic (all-op output bytes)
    from torch.utils._python_dispatch import TorchDispatchMode
except ImportError:  # pragma: no cover
    TorchDispatchMode = None  # type: ignore[assignment,misc]

from codec.config import CONFIGS, ModelConfig, get_config
from codec.keypoints import HeadMotion, transform_keypoints
from codec.models import FaceVid2Vid, build_model
from codec.models.generator import Generator
from codec.models.vid2vid import SourceState

BENCHMARK_NAME = "speed"
WEIGHTS_NOTE = ("random, UNTRAINED weights (seeded): speed does not depend on weight values; "
                "numerics vs fp32 are indicative only")
PRECISIONS = ("fp32", "bf16", "fp16")
MODES = ("eager", "compile", "graph")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_BYTES_PER_ELEMENT = {"fp32": 4, "bf16": 2, "fp16": 2}

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


# ----------------------------------------------------------------------------- environment


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "git_sha": git_sha(), "torch": torch.__version__, "python": platform.python_version(),
        "device": device.type, "threads": torch.get_num_threads(), "cpu": cpu_name(),
        "platform": platform.platform(),
        # the dev machine's 2 cores are shared: a high load average explains noisy CPU rows
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        env.update(device_name=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(),
                   # fp32 eager on CUDA uses TF32 convolutions by default: say so
                   cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                   matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    else:
        env["device_name"] = env["cpu"]
    return env


# ----------------------------------------------------------------------------- timing helpers
def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 200 frames is the 2nd slowest)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(precision: str, device: torch.device, graph: bool = False
             ) -> contextlib.AbstractContextManager:
    """fp32: no autocast. bf16/fp16: torch.autocast (cast cache off inside CUDA graph capture)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision], cache_enabled=not graph)


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise TimeoutError in the main thread after ``seconds`` (bounds a slow CPU compile)."""
    if not seconds or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"gave up after {seconds:.0f} s (--compile-timeout)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _max_rss_bytes() -> int:
    # Linux reports ru_maxrss in KiB, macOS in bytes
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


@dataclass
class Timing:
    times_ms: list[float]
    timer: str
    first_call_ms: float
    peak_memory: dict[str, Any]
    output: Any


def time_stage(step: Callable[[], Any], frames: int, warmup: int, device: torch.device,
               use_events: bool, first_call_timeout: float | None = None) -> Timing:
    """Warm ``step`` up, then time ``frames`` calls; each frame finishes before the next starts.

    The first warm-up call is timed on its own (it includes any compilation or capture)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)
    else:
        rss_before = _max_rss_bytes()
    start = time.perf_counter()
    with deadline(first_call_timeout):
        output = step()
        _sync(device)
    # keep frame 0's output for the numerics: graph replays overwrite their output buffer
    output = output.clone() if isinstance(output, torch.Tensor) else output
    first_call_ms = (time.perf_counter() - start) * 1e3
    for _ in range(max(0, warmup - 1)):
        step()
    _sync(device)
    times_ms: list[float] = []
    if use_events and device.type == "cuda":
        for _ in range(frames):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            step()
            end.record()
            end.synchronize()  # latency per frame: no overlap with the next frame
            times_ms.append(begin.elapsed_time(end))
        timer = "cuda_events"
    else:
        for _ in range(frames):
            start = time.perf_counter()
            step()
            _sync(device)
            times_ms.append((time.perf_counter() - start) * 1e3)
        timer = "perf_counter" + ("+cuda_sync" if device.type == "cuda" else "")
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        memory = {"kind": "torch.cuda.max_memory_allocated", "peak_bytes": peak,
                  "resident_before_bytes": resident, "stage_extra_bytes": peak - resident}
    else:
        rss_after = _max_rss_bytes()
        memory = {"kind": "ru_maxrss delta (growth of the process's resident high-water mark "
                          "during this stage; 0 = stayed under an earlier peak)",
                  "delta_bytes": rss_after - rss_before, "process_max_rss_bytes": rss_after}
    return Timing(times_ms, timer, first_call_ms, memory, output)


# ----------------------------------------------------------------------------- numerics
def _as_float(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.as_tensor(x).detach().float().cpu()


def compare(output: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray,
            peak: float | None) -> dict[str, float | None]:
    """Max/mean abs diff, and PSNR in dB when ``peak`` (the signal range) is given."""
    out, ref = _as_float(output), _as_float(reference)
    diff = (out - ref).abs()
    result: dict[str, float | None] = {"max_abs_diff": float(diff.max()),
                                       "mean_abs_diff": float(diff.mean())}
    if peak is not None:
        mse = float((diff ** 2).mean())
        # identical frames have infinite PSNR, which JSON cannot hold: record null + identical
        result["psnr_db"] = None if mse == 0 else 10.0 * math.log10(peak ** 2 / mse)
        result["identical"] = mse == 0
    return result


def within_tolerance(precision: str, numerics: dict[str, Any]) -> bool | None:
    """Check a frame comparison against TOLERANCES (None when the output is not a frame)."""
    tol = TOLERANCES[precision]
    if "psnr_db" not in numerics:
        return None
    if numerics.get("identical"):
        return True
    if "max_abs" in tol:
        return numerics["max_abs_diff"] <= tol["max_abs"] * numerics.get("scale", 1.0)
    return numerics["psnr_db"] >= tol["psnr_db_min"]


# ----------------------------------------------------------------------------- FLOPs and bytes
def _tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor inside nested tuples / lists / dataclasses."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if hasattr(value, "__dataclass_fields__"):
        return [t for name in value.__dataclass_fields__ for t in _tensors(getattr(value, name))]
    return []


def _elements(value: Any) -> int:
    return sum(t.numel() for t in _tensors(value) if t.is_floating_point())


class _OpOutputBytes(TorchDispatchMode or object):  # type: ignore[misc]
    """Sums the elements every aten op writes (an upper bound on activation traffic)."""

    def __init__(self) -> None:
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        if func not in (torch.ops.aten.view.default, torch.ops.aten._unsafe_view.default,
                        torch.ops.aten.expand.default, torch.ops.aten.permute.default,
                        torch.ops.aten.t.default, torch.ops.aten.unsqueeze.default,
                        torch.ops.aten.transpose.int, torch.ops.aten.slice.Tensor,
                        torch.ops.aten.select.int, torch.ops.aten.detach.default,
                        torch.ops.aten.alias.default):  # views move no bytes
            self.elements += _elements(out)
        return out


def cost_model(name: str, modules: list[torch.nn.Module], call: Callable[[], Any], inputs: Any
               ) -> dict[str, Any]:
    """FLOPs (FlopCounterMode) and minimum bytes of one batch-1 call of ``module``."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        output = call()
    flops = int(counter.get_total_flops())
    all_op_elements: int | None = None
    if TorchDispatchMode is not None:
        try:
            with torch.inference_mode(), _OpOutputBytes() as op_bytes:
                call()
            all_op_elements = op_bytes.elements
        except Exception:  # noqa: BLE001 - a diagnostic, not worth failing the run for
            all_op_elements = None
    params = sum(p.numel() for module in modules for p in module.parameters())
    in_elements, out_elements = _elements(inputs), _elements(output)
    minimum = {p: (params + in_elements + out_elements) * b for p, b in _BYTES_PER_ELEMENT.items()}
    return {
        "stage": name, "flops": flops, "gflops": flops / 1e9, "parameters": params,
        "input_elements": in_elements, "output_elements": out_elements,
        "min_bytes": minimum,
        "arithmetic_intensity_flops_per_byte": {p: flops / b for p, b in minimum.items()},
        "all_op_output_elements": all_op_elements,
        "all_op_output_bytes": ({p: all_op_elements * b for p, b in _BYTES_PER_ELEMENT.items()}
                                if all_op_elements is not None else None),
    }


COST_NOTES = [
    "flops: torch.utils.flop_counter.FlopCounterMode at batch 1, fp32 eager; a multiply-add "
    "is 2 FLOPs; it counts convolutions and matrix products only (grid_sample, GroupNorm, "
    "softmax, interpolation and elementwise ops are not counted; they are bandwidth-bound)",
    "min_bytes: weights (parameters) + the module's input tensors + its output tensors, each "
    "read or written once at the precision's element size (fp32 4, bf16/fp16 2 bytes): the "
    "compulsory traffic if every intermediate activation stayed on chip; under autocast the "
    "weights are fp32 in memory, so this assumes weights pre-cast to the precision",
    "all_op_output_bytes: every aten op's output written once (views excluded), measured in "
    "fp32 and scaled by element size: a realistic upper bound for unfused eager execution",
    "floor time = max(flops / peak_flops_per_s, min_bytes / peak_bytes_per_s)",
]


# ----------------------------------------------------------------------------- the benchmark
@dataclass
class Row:
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

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _synthetic_motion(frames: int, num_kp: int, seed: int) -> np.ndarray:
    """frames×(6+3K) plausible talking-head motion: smooth ±15° head turns, small drift,
    expression random walk (the untrained H/Δ barely moves, so it would code unrealistically
    cheaply)."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames, dtype=np.float64)[:, None] / 25.0
    angles = 15.0 * np.sin(2 * np.pi * t * np.array([0.3, 0.2, 0.1]) + rng.uniform(0, 6, 3))
    translation = 0.05 * np.sin(2 * np.pi * t * np.array([0.15, 0.1, 0.05]))
    expression = np.cumsum(rng.normal(0.0, 0.003, (frames, 3 * num_kp)), axis=0)
    expression = np.clip(expression, -0.1, 0.1)
    return np.concatenate([angles, translation, expression], axis=1).astype(np.float32)


class SpeedBenchmark:
    """Builds the model and inputs once and times every requested stage variant."""

    def __init__(self, config: ModelConfig, device: torch.device, *, frames: int, warmup: int,
                 cpu_heavy_frames: int, cpu_heavy_warmup: int, compile_mode: str,
                 compile_timeout: float | None, seed: int = 0, log: Callable[[str], None] = print
                 ) -> None:
        self.config = config
        self.device = device
        self.frames = frames
        self.warmup = warmup
        self.cpu_heavy_frames = cpu_heavy_frames
        self.cpu_heavy_warmup = cpu_heavy_warmup
        self.compile_mode = compile_mode
        self.compile_timeout = compile_timeout
        self.log = log
        self.model: FaceVid2Vid = build_model(config, seed=seed).to(device).requires_grad_(False)
        gen = torch.Generator().manual_seed(seed)
        size = config.image_size
        self.keyframe = torch.rand(1, 3, size, size, generator=gen).to(device)
        self.frame_image = torch.rand(1, 3, size, size, generator=gen).to(device)
        self.has_constriction = importlib.util.find_spec("constriction") is not None
        self.motion_vectors = _synthetic_motion(max(frames, 2 * INTRA_PERIOD), config.num_kp, seed)
        self.packets: list[bytes] = []
        self.motion_bits_per_frame: float | None = None
        if self.has_constriction:
            self.packets = self._encode_packets(self.motion_vectors)
            self.motion_bits_per_frame = 8.0 * sum(map(len, self.packets)) / len(self.packets)
        # driving motion as render() receives it, one per synthetic frame (device resident)
        motions = [HeadMotion.from_vector(v, config.num_kp) for v in self.motion_vectors]
        self.driving = [m.to_tensors(device) for m in motions]
        self._sources: dict[str, SourceState] = {}
        self._compiled: dict[tuple[str, str], Any] = {}
        self._compile_failed: dict[tuple[str, str], str] = {}
        self.reference: dict[str, Any] = {}
        with torch.inference_mode():
            self._build_reference()

    def _pose_vector(self, image: torch.Tensor) -> torch.Tensor:
        """H/Δ as the sender runs it (one plain function, so sender.H and sender.frame share
        one compiled version)."""
        return _pose_vector(self.model, image)

    # ---------------------------------------------------------------- inputs
    def _encode_packets(self, vectors: np.ndarray) -> list[bytes]:
        from codec.bitstream import MotionPacket
        from codec.motion_coding import MotionEncoder, quant_table

        encoder = MotionEncoder(quant_table(MOTION_QUALITY), 3 * self.config.num_kp, INTRA_PERIOD)
        packets = []
        for seq, vector in enumerate(vectors):
            intra, payload = encoder.encode_vector(vector, seq)
            packets.append(MotionPacket(seq=seq, timestamp=seq * 40, intra=intra,
                                        payload=payload).pack())
        return packets

    def source(self, precision: str) -> SourceState:
        """The keyframe's cached state, prepared in ``precision`` (eager), as the receiver holds it."""
        if precision not in self._sources:
            with autocast(precision, self.device):
                self._sources[precision] = self.model.prepare_source(self.keyframe)
        return self._sources[precision]

    def motion_inputs(self, precision: str, index: int = 0) -> tuple[torch.Tensor, ...]:
        """Exactly what FaceVid2Vid._render passes M: (F volume, x_s, x_d, R_s, R_d)."""
        source = self.source(precision).expand(1)
        dtype = source.canonical_keypoints.dtype
        rotation, translation, expression = (v.to(dtype) for v in self.driving[index])
        driving_kp = transform_keypoints(source.canonical_keypoints, rotation, translation,
                                         expression)
        return (source.feature_volume, source.source_keypoints, driving_kp, source.rotation,
                rotation)

    def generator_inputs(self, precision: str) -> tuple[torch.Tensor, ...]:
        """What _render passes G: (F volume, deformation, occlusion) from M in ``precision``."""
        inputs = self.motion_inputs(precision)
        with autocast(precision, self.device):
            motion = self.model.motion(*inputs)
        return inputs[0], motion.deformation, motion.occlusion

    def _build_reference(self) -> None:
        """fp32 eager outputs every variant is compared with, and the M→G split check."""
        model, ref = self.model, self.reference
        source = self.source("fp32")
        ref["keyframe.setup"] = source.feature_volume
        ref["keyframe.F"] = source.feature_volume
        ref["keyframe.L"] = source.canonical_keypoints
        ref["sender.H"] = _pose_vector(model, self.frame_image)
        m_in = self.motion_inputs("fp32")
        ref["receiver.kp_transform"] = m_in[2]
        motion = model.motion(*m_in)
        ref["receiver.M"] = motion.deformation
        ref["receiver.warp"] = Generator.warp(source.feature_volume, motion.deformation)
        ref["receiver.G"] = model.generator(source.feature_volume, motion.deformation,
                                            motion.occlusion)
        ref["receiver.render"] = model.render(source, *self.driving[0])
        ref["receiver.frame"] = self._to_uint8(ref["receiver.render"])
        self.split_check = compare(ref["receiver.G"], ref["receiver.render"], peak=1.0)

    @staticmethod
    def _to_uint8(image: torch.Tensor) -> np.ndarray:
        """B×3×H×W in [0, 1] -> H×W×3 uint8 on the host (what a receiver displays)."""
        return (image[0].float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()

    # ---------------------------------------------------------------- modes
    def _compiled_fn(self, name: str, precision: str, fn: Callable) -> Callable:
        """torch.compile(fn) once per (network, precision); the error is kept if it failed."""
        key = (name, precision)
        if key in self._compile_failed:
            raise RuntimeError(f"skipped: compiling {name} already failed: "
                               f"{self._compile_failed[key]}")
        if key not in self._compiled:
            self._compiled[key] = torch.compile(fn, mode=self.compile_mode)
        return self._compiled[key]

    @contextlib.contextmanager
    def _swapped(self, precision: str) -> Iterator[None]:
        """model.render with compiled M and G swapped in (the way a deployment would compile)."""
        model = self.model
        motion, generator = model.motion, model.generator
        model.motion = self._compiled_fn("receiver.M", precision, motion)
        model.generator = self._compiled_fn("receiver.G", precision, generator)
        try:
            yield
        finally:
            model.motion, model.generator = motion, generator

    def _graph(self, precision: str, body: Callable[[], Any]) -> Callable[[], Any]:
        """Capture ``body`` (reading fixed input buffers) into a CUDA graph; returns replay()."""
        if self.device.type != "cuda":
            raise NotApplicable("CUDA graphs need a CUDA device")

        def run() -> Any:
            with autocast(precision, self.device, graph=True):
                return body()

        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(3):  # allocator and cuDNN warm-up off the capture
                run()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = run()

        def replay() -> Any:
            graph.replay()
            return static_out

        return replay

    # ---------------------------------------------------------------- stage builders
    def build_step(self, stage: str, precision: str, mode: str) -> tuple[Callable[[], Any], list[str]]:
        """A zero-argument callable doing one frame of ``stage``, and notes about it."""
        model, device = self.model, self.device
        notes: list[str] = []
        if mode == "graph" and device.type != "cuda":
            raise NotApplicable("CUDA graphs need a CUDA device")
        if stage in KEYFRAME_STAGES and mode != "eager":
            raise NotApplicable("runs once per keyframe, not per frame: eager only")
        if stage == "receiver.kp_transform" and mode != "eager":
            raise NotApplicable("a few hundred FLOPs; included in receiver.render's "
                                "compiled / captured path")
        if precision != "fp32" and device.type == "cpu" and precision == "fp16":
            notes.append("CPU fp16 autocast: some kernels may fall back to slow paths")

        def amp() -> contextlib.AbstractContextManager:
            return autocast(precision, device)

        if stage == "keyframe.setup":
            def step() -> Any:
                with amp():
                    return model.prepare_source(self.keyframe).feature_volume
            notes.append("F + L + H/Δ on the keyframe (prepare_source)")
            return step, notes
        if stage == "keyframe.F":
            def step() -> Any:
                with amp():
                    return model.appearance(self.keyframe)
            return step, notes
        if stage == "keyframe.L":
            def step() -> Any:
                with amp():
                    return model.canonical_kp(self.keyframe)
            return step, notes
        if stage == "receiver.kp_transform":
            source = self.source(precision)
            vector = self.motion_vectors[0]

            def step() -> Any:
                motion = HeadMotion.from_vector(vector, self.config.num_kp)
                rotation, translation, expression = motion.to_tensors(device)
                dtype = source.canonical_keypoints.dtype
                return transform_keypoints(source.canonical_keypoints, rotation.to(dtype),
                                           translation.to(dtype), expression.to(dtype))
            notes.append("HeadMotion -> device tensors (angles -> R) + x_d = R·x_c + t + δ")
            return step, notes
        if stage == "sender.H":
            notes.append("estimate_motion -> the 6+3K motion vector on the device")
            return self._network_step("sender.H", precision, mode,
                                      self._pose_vector,
                                      (self.frame_image,)), notes
        if stage == "receiver.M":
            notes.append("model.motion called with the tensors render() passes it")
            return self._network_step("receiver.M", precision, mode, model.motion,
                                      self.motion_inputs(precision),
                                      post=lambda out: out.deformation), notes
        if stage == "receiver.warp":
            notes.append("Generator.warp (trilinear grid_sample of the F volume), the first "
                         "step of G")
            return self._network_step("receiver.warp", precision, mode, Generator.warp,
                                      self.generator_inputs(precision)[:2]), notes
        if stage == "receiver.G":
            notes.append("model.generator incl. its warp, with the tensors render() passes "
                         "it; G without warp = receiver.G − receiver.warp")
            return self._network_step("receiver.G", precision, mode, model.generator,
                                      self.generator_inputs(precision)), notes
        if stage == "receiver.render":
            notes.append("model.render: keypoint transform + M + G")
            return self._render_step(precision, mode), notes
        if stage == "sender.frame":
            return self._sender_frame(precision, mode, notes), notes
        if stage == "receiver.frame":
            return self._receiver_frame(precision, mode, notes), notes
        raise ValueError(f"unknown stage {stage!r}")

    def _network_step(self, name: str, precision: str, mode: str, fn: Callable,
                      inputs: tuple[torch.Tensor, ...],
                      post: Callable[[Any], Any] = lambda out: out) -> Callable[[], Any]:
        """One call of ``post(fn(*inputs))`` in ``mode``; graph mode copies fresh inputs in first.

        ``fn`` is the network module itself where there is one, so compile mode compiles
        the same object render() calls (shared with :meth:`_swapped`)."""
        if mode == "eager":
            def step() -> Any:
                with autocast(precision, self.device):
                    return post(fn(*inputs))
            return step
        if mode == "compile":
            compiled = self._compiled_fn(name, precision, fn)

            def step() -> Any:
                with autocast(precision, self.device):
                    return post(compiled(*inputs))
            return step
        static = [x.clone() for x in inputs]
        replay = self._graph(precision, lambda: post(fn(*static)))

        def step() -> Any:
            for buffer, value in zip(static, inputs):  # a new frame's inputs, as in a call
                buffer.copy_(value)
            return replay()
        return step

    def _render_fn(self, precision: str, mode: str) -> Callable[[tuple[torch.Tensor, ...]], Any]:
        """driving (R, t, δ) on the device -> frame, in ``mode`` (the receiver's per-frame path)."""
        source = self.source(precision)
        model = self.model
        if mode == "eager":
            def render(driving: tuple[torch.Tensor, ...]) -> Any:
                with autocast(precision, self.device):
                    return model.render(source, *driving)
            return render
        if mode == "compile":
            def render(driving: tuple[torch.Tensor, ...]) -> Any:
                with autocast(precision, self.device), self._swapped(precision):
                    return model.render(source, *driving)
            return render
        static = [x.clone() for x in self.driving[0]]
        replay = self._graph(precision, lambda: model.render(source, *static))

        def render(driving: tuple[torch.Tensor, ...]) -> Any:
            for buffer, value in zip(static, driving):
                buffer.copy_(value)
            return replay()
        return render

    def _render_step(self, precision: str, mode: str) -> Callable[[], Any]:
        render = self._render_fn(precision, mode)
        counter = iter(range(1 << 62))
        driving = self.driving

        def step() -> Any:
            # a different driving motion each frame (inputs live on the device already)
            return render(driving[next(counter) % len(driving)])
        return step

    def _sender_frame(self, precision: str, mode: str, notes: list[str]) -> Callable[[], Any]:
        h_step = self._network_step("sender.H", precision, mode,
                                    self._pose_vector,
                                    (self.frame_image,))
        notes.append("H/Δ on a device-resident frame + read-back of its outputs"
                     + (" + quantize, range code and pack" if self.has_constriction else ""))
        if not self.has_constriction:
            notes.append("motion coding excluded: constriction is not installed")
            return lambda: h_step().cpu()
        from codec.bitstream import MotionPacket
        from codec.motion_coding import MotionEncoder, quant_table

        notes.append("coded vector = H/Δ output + a synthetic talking-head trajectory (the "
                     "untrained H/Δ output barely moves and would code unrealistically cheaply)")
        encoder = MotionEncoder(quant_table(MOTION_QUALITY), 3 * self.config.num_kp, INTRA_PERIOD)
        vectors = self.motion_vectors
        counter = iter(range(1 << 62))

        def step() -> bytes:
            seq = next(counter)
            vector = h_step().float().cpu().numpy()[0] + vectors[seq % len(vectors)]
            intra, payload = encoder.encode_vector(vector, seq)
            return MotionPacket(seq=seq, timestamp=seq * 40, intra=intra, payload=payload).pack()
        return step

    def _receiver_frame(self, precision: str, mode: str, notes: list[str]) -> Callable[[], Any]:
        render = self._render_fn(precision, mode)
        num_kp, device = self.config.num_kp, self.device
        notes.append("packet -> motion decode -> device tensors -> render -> uint8 H×W×3 on "
                     "the host")
        if not self.has_constriction:
            notes.append("motion decoding excluded (constriction is not installed): starts "
                         "from decoded motion vectors")
            vectors = self.motion_vectors
            counter = iter(range(1 << 62))

            def step() -> np.ndarray:
                motion = HeadMotion.from_vector(vectors[next(counter) % len(vectors)], num_kp)
                return self._to_uint8(render(motion.to_tensors(device)))
            return step
        decode = self._packet_decoder()

        def step() -> np.ndarray:
            motion = HeadMotion.from_vector(decode(), num_kp)
            return self._to_uint8(render(motion.to_tensors(device)))
        return step

    def _packet_decoder(self) -> Callable[[], np.ndarray]:
        """Next packet -> parse -> range decode -> dequantized vector, cycling the stream."""
        from codec.bitstream import parse_packet
        from codec.motion_coding import MotionDecoder, quant_table

        decoder = MotionDecoder(quant_table(MOTION_QUALITY), 3 * self.config.num_kp)
        packets = self.packets
        # cycle only over whole intra periods, so every wrap starts on an intra packet
        usable = len(packets) - len(packets) % INTRA_PERIOD or len(packets)
        counter = iter(range(1 << 62))

        def decode() -> np.ndarray:
            index = next(counter) % usable
            if index == 0:
                decoder.reset()
            packet = parse_packet(packets[index])
            return decoder.decode_vector(packet.intra, packet.seq, packet.payload)
        return decode

    # ---------------------------------------------------------------- running
    def frames_for(self, stage: str) -> tuple[int, int]:
        if self.device.type == "cpu" and stage in HEAVY_STAGES:
            return min(self.frames, self.cpu_heavy_frames), min(self.warmup, self.cpu_heavy_warmup)
        return self.frames, self.warmup

    def run_variant(self, stage: str, precision: str, mode: str) -> Row:
        """Time one (stage, precision, mode); never raises for a variant that cannot run."""
        frames, warmup = self.frames_for(stage)
        if mode == "compile":
            warmup = max(warmup, 2)  # the first call compiles
        row = Row(stage, precision, mode, "ok", frames=frames, warmup=warmup)
        deps = {"receiver.render": ("receiver.M", "receiver.G"),
                "receiver.frame": ("receiver.M", "receiver.G"), "sender.frame": ("sender.H",)}
        try:
            if mode == "compile":
                for dep in deps.get(stage, ()):
                    if (dep, precision) in self._compile_failed:
                        raise NotApplicable(f"skipped: compiling {dep} failed")
            with torch.inference_mode():
                step, row.notes = self.build_step(stage, precision, mode)
                timing = time_stage(step, frames, warmup, self.device,
                                    use_events=stage in DEVICE_STAGES,
                                    first_call_timeout=(self.compile_timeout
                                                        if mode == "compile" else None))
        except NotApplicable as reason:
            row.status = "skipped" if str(reason).startswith("skipped") else "n/a"
            row.frames = row.warmup = 0
            row.notes = [str(reason)]
            return row
        except Exception as error:  # noqa: BLE001 - record every failure and carry on
            row.status, row.frames, row.warmup = self._classify(error, precision), 0, 0
            row.notes.append(f"{type(error).__name__}: {_short(error)}")
            if mode == "compile":
                for name in (stage, *deps.get(stage, ())):
                    self._compile_failed.setdefault((name, precision), _short(error, 300))
            self.log(f"  {stage} {precision} {mode}: {row.status}: {_short(error, 300)}")
            if os.environ.get("FACECODEC_SPEED_TRACEBACK"):
                traceback.print_exc()
            return row
        times = timing.times_ms
        row.median_ms, row.p99_ms = statistics.median(times), percentile(times, 0.99)
        row.mean_ms, row.min_ms = statistics.fmean(times), min(times)
        row.timer, row.first_call_ms, row.peak_memory = (timing.timer, timing.first_call_ms,
                                                         timing.peak_memory)
        if stage in ("sender.frame", "receiver.frame"):
            row.frames_per_s = 1e3 / row.median_ms
        if mode == "compile":
            row.notes.append(f"torch.compile mode={self.compile_mode!r}; first call (compile) "
                             f"{timing.first_call_ms / 1e3:.1f} s")
        if self.device.type == "cpu":
            row.notes.append(f"CPU, {torch.get_num_threads()} threads, time.perf_counter")
        if not (precision == "fp32" and mode == "eager"):
            row.numerics = self._numerics(stage, precision, timing.output)
        return row

    @staticmethod
    def _classify(error: Exception, precision: str) -> str:
        text = str(error).lower()
        if precision != "fp32" and ("not implemented for" in text or "unsupported" in text
                                    or "not supported" in text):
            return "unsupported"
        return "failed"

    def _numerics(self, stage: str, precision: str, output: Any) -> dict[str, Any] | None:
        """This variant's first output vs the fp32 eager reference (frame 0 / the same inputs)."""
        # frame 0 of every step uses the reference's inputs: driving[0] for render, packet 0
        # (decoded, so quantized) for receiver.frame, the same fixed tensors elsewhere
        if stage not in self.reference:
            return None
        peak = {"receiver.G": 1.0, "receiver.render": 1.0, "receiver.frame": 255.0}.get(stage)
        reference = self.reference[stage]
        if stage == "receiver.frame" and self.has_constriction:
            reference = self._receiver_frame_reference()
        try:
            result = compare(output, reference, peak)
        except Exception as error:  # noqa: BLE001
            return {"error": f"{type(error).__name__}: {_short(error)}"}
        result["reference"] = "fp32 eager, same inputs"
        if peak is not None:
            if stage == "receiver.frame":
                result["scale"] = 255.0  # tolerance is in [0, 1] units
            ok = within_tolerance(precision, result)
            result["tolerance"] = TOLERANCES[precision]
            result["within_tolerance"] = ok
            result.pop("scale", None)
        return result

    def _receiver_frame_reference(self) -> np.ndarray:
        """fp32 eager frame of the first decoded packet (quantized motion, as the receiver sees it)."""
        if "receiver.frame.decoded" not in self.reference:
            with torch.inference_mode():
                vector = self._packet_decoder()()
                motion = HeadMotion.from_vector(vector, self.config.num_kp)
                image = self.model.render(self.source("fp32"), *motion.to_tensors(self.device))
                self.reference["receiver.frame.decoded"] = self._to_uint8(image)
        return self.reference["receiver.frame.decoded"]

    def run_host_stage(self, stage: str) -> Row:
        """Motion coding (numpy + constriction on the host): fp32 eager only."""
        row = Row(stage, "fp32", "eager", "ok", frames=self.frames, warmup=self.warmup)
        if not self.has_constriction:
            row.status, row.frames, row.warmup = "skipped", 0, 0
            row.notes = ["constriction (the range coder) is not installed here; motion coding "
                         "is host code, so its CPU timing from another machine carries over"]
            return row
        from codec.bitstream import MotionPacket
        from codec.motion_coding import MotionEncoder, quant_table

        if stage == "sender.motion_encode":
            encoder = MotionEncoder(quant_table(MOTION_QUALITY), 3 * self.config.num_kp, INTRA_PERIOD)
            vectors, counter = self.motion_vectors, iter(range(1 << 62))

            def step() -> bytes:
                seq = next(counter)
                intra, payload = encoder.encode_vector(vectors[seq % len(vectors)], seq)
                return MotionPacket(seq=seq, timestamp=seq * 40, intra=intra,
                                    payload=payload).pack()
            row.notes = ["quantize + range code + pack one synthetic talking-head motion "
                         f"vector (quality {MOTION_QUALITY}, intra every {INTRA_PERIOD})"]
        else:
            step = self._packet_decoder()
            row.notes = ["parse packet + range decode + dequantize (quality "
                         f"{MOTION_QUALITY}, intra every {INTRA_PERIOD})"]
        timing = time_stage(step, self.frames, self.warmup, torch.device("cpu"), False)
        times = timing.times_ms
        row.median_ms, row.p99_ms = statistics.median(times), percentile(times, 0.99)
        row.mean_ms, row.min_ms = statistics.fmean(times), min(times)
        row.timer, row.first_call_ms, row.peak_memory = ("perf_counter", timing.first_call_ms,
                                                         timing.peak_memory)
        row.notes.append(f"host code; {self.motion_bits_per_frame:.1f} bits/frame on this "
                         "synthetic motion; precision and mode do not apply")
        return row

    def costs(self) -> dict[str, Any]:
        """FLOPs and minimum bytes per frame of M and G (plus H/Δ and the keyframe setup)."""
        model = self.model
        m_in = self.motion_inputs("fp32")
        g_in = self.generator_inputs("fp32")
        out = {
            "receiver.M": cost_model("receiver.M", [model.motion], lambda: model.motion(*m_in),
                                     m_in),
            "receiver.G": cost_model("receiver.G", [model.generator],
                                     lambda: model.generator(*g_in), g_in),
            "sender.H": cost_model("sender.H", [model.head_pose],
                                   lambda: model.head_pose(self.frame_image), self.frame_image),
            "keyframe.setup": cost_model(
                "keyframe.setup", [model.appearance, model.canonical_kp, model.head_pose],
                lambda: model.prepare_source(self.keyframe), self.keyframe),
        }
        # per frame M + G, what the GPU floor is derived from
        m, g = out["receiver.M"], out["receiver.G"]
        out["receiver.M+G"] = {
            "flops": m["flops"] + g["flops"], "gflops": (m["flops"] + g["flops"]) / 1e9,
            "min_bytes": {p: m["min_bytes"][p] + g["min_bytes"][p] for p in _BYTES_PER_ELEMENT},
        }
        out["notes"] = COST_NOTES + [
            f"image {self.config.image_size} px, K = {self.config.num_kp}, batch 1; "
            "keyframe.setup counts F + L + H/Δ"]
        return out


def _pose_vector(model: FaceVid2Vid, image: torch.Tensor) -> torch.Tensor:
    """H/Δ -> 1×(6+3K) [yaw, pitch, roll, t, δ] on the device (HeadMotion.to_vector's layout)."""
    pose = model.estimate_motion(image)
    return torch.cat([pose.angles().float(), pose.translation.float(),
                      pose.expression.float().flatten(1)], dim=1)


def _short(error: BaseException, limit: int = 600) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + " …"


# ----------------------------------------------------------------------------- driver
def run(config_name: str, device: str, threads: int, precisions: list[str], modes: list[str],
        frames: int | None, warmup: int, cpu_heavy_frames: int = 20, cpu_heavy_warmup: int = 2,
        compile_mode: str | None = None, compile_timeout: float | None = 900.0,
        stages: list[str] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the benchmark and return the JSON report (see the module docstring)."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but torch.cuda.is_available() is False")
    if frames is None:
        frames = 200
    if compile_mode is None:
        # max-autotune benchmarks GEMM/conv templates on the GPU; on the CPU it only adds time
        compile_mode = "max-autotune-no-cudagraphs" if dev.type == "cuda" else "default"
    config = get_config(config_name)
    log(f"speed [{config.name}] on {dev} ({torch.get_num_threads()} threads), batch 1 — "
        f"{WEIGHTS_NOTE}")
    bench = SpeedBenchmark(config, dev, frames=frames, warmup=warmup,
                           cpu_heavy_frames=cpu_heavy_frames, cpu_heavy_warmup=cpu_heavy_warmup,
                           compile_mode=compile_mode, compile_timeout=compile_timeout, log=log)
    wanted = set(stages) if stages else None
    rows: list[Row] = []

    def keep(stage: str) -> bool:
        return wanted is None or stage in wanted

    for stage in HOST_STAGES:
        if keep(stage):
            rows.append(bench.run_host_stage(stage))
            log(_format_row(rows[-1]))
    for precision in precisions:
        for mode in modes:
            for stage in (*KEYFRAME_STAGES, *FRAME_STAGES):
                if keep(stage):
                    rows.append(bench.run_variant(stage, precision, mode))
                    log(_format_row(rows[-1]))
    with torch.inference_mode():
        costs = bench.costs()
    summary = {
        f"{r.stage} {r.precision} {r.mode}": round(r.frames_per_s, 3)
        for r in rows if r.frames_per_s is not None}
    report = {
        "name": BENCHMARK_NAME,
        "env": environment(dev),
        "config": config.name,
        "weights": WEIGHTS_NOTE,
        "settings": {
            "batch": 1, "image_size": config.image_size, "num_kp": config.num_kp,
            "frames": frames, "warmup": warmup, "precisions": precisions, "modes": modes,
            "cpu_heavy_frames": cpu_heavy_frames if dev.type == "cpu" else None,
            "cpu_heavy_warmup": cpu_heavy_warmup if dev.type == "cpu" else None,
            "heavy_stages": sorted(HEAVY_STAGES), "compile_mode": compile_mode,
            "compile_timeout_s": compile_timeout, "motion_quality": MOTION_QUALITY,
            "intra_period": INTRA_PERIOD,
            "motion_bits_per_frame": bench.motion_bits_per_frame,
            "constriction": bench.has_constriction,
            "timing": ("CUDA: torch.cuda.Event pair per frame, synchronised per frame, for "
                       "device-only stages; perf_counter + sync for stages with host code. "
                       "CPU: time.perf_counter") ,
            "precision": "torch.autocast(dtype) for bf16/fp16; weights stay fp32",
        },
        "split_check": {"what": "model.generator(model.motion(...)) vs model.render(...), "
                                "fp32 eager", **bench.split_check},
        "tolerances": TOLERANCES,
        "costs": costs,
        "frames_per_s": summary,
        "results": [r.to_dict() for r in rows],
    }
    return report


def _format_row(row: Row) -> str:
    def ms(value: float | None) -> str:
        return f"{value:10.3f}" if value is not None else f"{'':>10}"

    fps = f"{row.frames_per_s:8.2f}" if row.frames_per_s is not None else f"{'':>8}"
    num = ""
    if row.numerics and "max_abs_diff" in row.numerics:
        num = f"  Δmax {row.numerics['max_abs_diff']:.2e}"
        if "psnr_db" in row.numerics:
            num += f" PSNR {row.numerics['psnr_db']:.1f} dB"
    note = "" if row.status == "ok" else "  " + (row.notes[-1][:120] if row.notes else "")
    return (f"{row.stage:24s} {row.precision:5s} {row.mode:8s} {row.status:11s}"
            f"{ms(row.median_ms)}{ms(row.p99_ms)} {row.frames:5d} {fps}{num}{note}")


def _parse_list(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"{what}: {bad or text!r} not in {allowed}")
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="vox256", choices=sorted(CONFIGS))
    parser.add_argument("--device", default="cpu", help="cpu or cuda (or cuda:N)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--precisions", default=None,
                        type=lambda s: _parse_list(s, PRECISIONS, "--precisions"),
                        help="default fp32,bf16,fp16 on CUDA, fp32,bf16 on the CPU")
    parser.add_argument("--modes", default=None,
                        type=lambda s: _parse_list(s, MODES, "--modes"),
                        help="default eager,compile,graph on CUDA, eager on the CPU")
    parser.add_argument("--frames", type=int, default=None,
                        help="timed frames per stage (default 200; on the CPU the heavy "
                             "stages use --cpu-heavy-frames)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--cpu-heavy-frames", type=int, default=20,
                        help="CPU only: timed frames of F, L, M, warp, G, render (≈0.6 s each)")
    parser.add_argument("--cpu-heavy-warmup", type=int, default=2)
    parser.add_argument("--compile-mode", default=None,
                        help="torch.compile mode (default: max-autotune-no-cudagraphs on CUDA, "
                             "default on the CPU)")
    parser.add_argument("--compile-timeout", type=float, default=900.0,
                        help="seconds allowed for each first compiled call (0 = no limit)")
    parser.add_argument("--stages", default=None,
                        help="comma-separated subset of stages (default: all)")
    parser.add_argument("--json", type=Path, default=None, help="write the report here as JSON")
    args = parser.parse_args(argv)
    if args.threads < 1 or (args.frames is not None and args.frames < 1) or args.warmup < 1:
        parser.error("--threads, --frames and --warmup must be ≥ 1")
    all_stages = (*HOST_STAGES, *KEYFRAME_STAGES, *FRAME_STAGES)
    stages = (_parse_list(args.stages, all_stages, "--stages") if args.stages else None)

    print(f"{'stage':24s} {'prec':5s} {'mode':8s} {'status':11s}{'median ms':>10}{'p99 ms':>10} "
          f"{'frames':>5} {'frames/s':>8}")
    cuda = args.device.startswith("cuda")
    precisions = args.precisions or (list(PRECISIONS) if cuda else ["fp32", "bf16"])
    # CPU compile takes minutes on 2 cores and CUDA graphs are CUDA-only: opt in on the CPU
    modes = args.modes or (list(MODES) if cuda else ["eager"])
    started = time.perf_counter()
    report = run(args.config, args.device, args.threads, precisions, modes,
                 args.frames, args.warmup, args.cpu_heavy_frames, args.cpu_heavy_warmup,
                 args.compile_mode, args.compile_timeout or None, stages)
    # what produced the numbers (benchmarks.report prints it beside the table)
    report["command"] = "python -m benchmarks.speed " + " ".join(
        sys.argv[1:] if argv is None else list(argv))
    report["wall_s"] = time.perf_counter() - started
    costs = report["costs"]
    for name in ("receiver.M", "receiver.G"):
        c = costs[name]
        print(f"{name}: {c['gflops']:.2f} GFLOP/frame (convs + matmuls), min bytes "
              f"{c['min_bytes']['fp32'] / 2**20:.1f} MiB fp32 / "
              f"{c['min_bytes']['bf16'] / 2**20:.1f} MiB 16-bit")
    print(f"weights: {WEIGHTS_NOTE}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        # allow_nan=False: the file must be strict JSON (non-finite values are nulled first)
        args.json.write_text(json.dumps(_finite(report), indent=2, default=_json_default,
                                        allow_nan=False) + "\n")
        print(f"wrote {args.json}")
    return 0


def _finite(value: Any) -> Any:
    """A copy with NaN / ±inf floats replaced by None (strict JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
