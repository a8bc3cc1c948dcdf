"""The measurement: ``SpeedBenchmark`` times every requested (stage, precision, mode) into a
``Row``, never raising for a variant that cannot run, and ``run`` drives it into the report."""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from typing import Any

import torch

from codec.config import ModelConfig, get_config

from .costs import model_costs
from .inputs import BenchInputs
from .modes import ModeRunner
from .numerics import compare, within_tolerance
from .results import build_report, format_row
from .stages import (
    DEVICE_STAGES,
    FRAME_STAGES,
    HEAVY_STAGES,
    HOST_STAGES,
    KEYFRAME_STAGES,
    TOLERANCES,
    WEIGHTS_NOTE,
    NotApplicable,
    Row,
)
from .steps import StepBuilder
from .timing import time_stage

# Compiled networks each composite stage calls: a failed compile of one skips the stage.
COMPILE_DEPS = {"receiver.render": ("receiver.M", "receiver.G"),
                "receiver.frame": ("receiver.M", "receiver.G"), "sender.frame": ("sender.H",)}


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
        self.inputs = BenchInputs(config, device, frames, seed)
        self.modes = ModeRunner(self.inputs, compile_mode)
        self.steps = StepBuilder(self.inputs, self.modes)

    def frames_for(self, stage: str) -> tuple[int, int]:
        if self.device.type == "cpu" and stage in HEAVY_STAGES:
            return min(self.frames, self.cpu_heavy_frames), min(self.warmup, self.cpu_heavy_warmup)
        return self.frames, self.warmup

    def run_all(self, precisions: list[str], modes: list[str], stages: list[str] | None) -> list[Row]:
        """The host stages, then every per-frame stage in each precision × mode (``stages``: only
        these); each row is logged as it is done."""
        wanted = set(stages) if stages else None
        rows: list[Row] = []

        def keep(stage: str) -> bool:
            return wanted is None or stage in wanted

        for stage in HOST_STAGES:
            if keep(stage):
                rows.append(self.run_host_stage(stage))
                self.log(format_row(rows[-1]))
        for precision in precisions:
            for mode in modes:
                for stage in (*KEYFRAME_STAGES, *FRAME_STAGES):
                    if keep(stage):
                        rows.append(self.run_variant(stage, precision, mode))
                        self.log(format_row(rows[-1]))
        return rows

    def run_variant(self, stage: str, precision: str, mode: str) -> Row:
        """Time one (stage, precision, mode); never raises for a variant that cannot run."""
        frames, warmup = self.frames_for(stage)
        if mode == "compile":
            warmup = max(warmup, 2)  # the first call compiles
        row = Row(stage, precision, mode, "ok", frames=frames, warmup=warmup)
        deps = COMPILE_DEPS.get(stage, ())
        compile_failed = self.modes.compile_failed
        try:
            if mode == "compile":
                for dep in deps:
                    if (dep, precision) in compile_failed:
                        raise NotApplicable(f"skipped: compiling {dep} failed")
            with torch.inference_mode():
                step, row.notes = self.steps.build(stage, precision, mode)
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
                for name in (stage, *deps):
                    compile_failed.setdefault((name, precision), _short(error, 300))
            self.log(f"  {stage} {precision} {mode}: {row.status}: {_short(error, 300)}")
            if os.environ.get("FACECODEC_SPEED_TRACEBACK"):
                traceback.print_exc()
            return row
        row.record(timing)
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
        if stage not in self.inputs.reference:
            return None
        peak = {"receiver.G": 1.0, "receiver.render": 1.0, "receiver.frame": 255.0}.get(stage)
        reference = self.inputs.reference[stage]
        if stage == "receiver.frame" and self.inputs.has_constriction:
            reference = self.inputs.receiver_frame_reference()
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

    def run_host_stage(self, stage: str) -> Row:
        """Motion coding (numpy + constriction on the host): fp32 eager only."""
        row = Row(stage, "fp32", "eager", "ok", frames=self.frames, warmup=self.warmup)
        if not self.inputs.has_constriction:
            row.status, row.frames, row.warmup = "skipped", 0, 0
            row.notes = [("constriction (the range coder) is not installed here; motion coding "
                          "is host code, so its CPU timing from another machine carries over")]
            return row
        step, row.notes = self.steps.host(stage)
        timing = time_stage(step, self.frames, self.warmup, torch.device("cpu"), False)
        row.record(timing)  # timer: "perf_counter" (host code, no device sync)
        row.notes.append(f"host code; {self.inputs.motion_bits_per_frame:.1f} bits/frame on this "
                         "synthetic motion; precision and mode do not apply")
        return row

    def costs(self) -> dict[str, Any]:
        """FLOPs and minimum bytes per frame of M and G (plus H/Δ and the keyframe setup)."""
        return model_costs(self.inputs)


def _short(error: BaseException, limit: int = 600) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + " …"


def run(config_name: str, device: str, threads: int, precisions: list[str], modes: list[str],
        frames: int | None, warmup: int, cpu_heavy_frames: int = 20, cpu_heavy_warmup: int = 2,
        compile_mode: str | None = None, compile_timeout: float | None = 900.0,
        stages: list[str] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the benchmark and return the JSON report (see the package docstring)."""
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
    rows = bench.run_all(precisions, modes, stages)
    with torch.inference_mode():
        costs = bench.costs()
    return build_report(bench, rows, costs, precisions, modes)
