"""Timing one stage: warm-up, per-frame latency (CUDA events or ``time.perf_counter``), peak
memory, and the nearest-rank percentile the rows report."""

from __future__ import annotations

import contextlib
import math
import resource
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 200 frames is the 2nd slowest)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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

