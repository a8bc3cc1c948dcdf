"""The three ways a stage runs: eager, ``torch.compile`` (each network compiled once per
precision, a failure remembered so dependants are skipped) and a captured CUDA graph replayed
on fixed input buffers."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .inputs import BenchInputs
from .stages import NotApplicable, autocast


class ModeRunner:
    """Wraps network calls on ``inputs``' model in a mode (``compile_mode``: torch.compile's)."""

    def __init__(self, inputs: BenchInputs, compile_mode: str) -> None:
        self.inputs = inputs
        self.model = inputs.model
        self.device = inputs.device
        self.compile_mode = compile_mode
        self._compiled: dict[tuple[str, str], Any] = {}
        # (network, precision) -> why compiling it failed
        self.compile_failed: dict[tuple[str, str], str] = {}

    def compiled_fn(self, name: str, precision: str, fn: Callable) -> Callable:
        """torch.compile(fn) once per (network, precision); the error is kept if it failed."""
        key = (name, precision)
        if key in self.compile_failed:
            raise RuntimeError(f"skipped: compiling {name} already failed: "
                               f"{self.compile_failed[key]}")
        if key not in self._compiled:
            self._compiled[key] = torch.compile(fn, mode=self.compile_mode)
        return self._compiled[key]

    @contextlib.contextmanager
    def swapped(self, precision: str) -> Iterator[None]:
        """model.render with compiled M and G swapped in (the way a deployment would compile)."""
        model = self.model
        motion, generator = model.motion, model.generator
        model.motion = self.compiled_fn("receiver.M", precision, motion)
        model.generator = self.compiled_fn("receiver.G", precision, generator)
        try:
            yield
        finally:
            model.motion, model.generator = motion, generator

    def graph(self, precision: str, body: Callable[[], Any]) -> Callable[[], Any]:
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

    def network_step(self, name: str, precision: str, mode: str, fn: Callable,
                      inputs: tuple[torch.Tensor, ...],
                      post: Callable[[Any], Any] = lambda out: out) -> Callable[[], Any]:
        """One call of ``post(fn(*inputs))`` in ``mode``; graph mode copies fresh inputs in first.

        ``fn`` is the network module itself where there is one, so compile mode compiles
        the same object render() calls (shared with :meth:`swapped`)."""
        if mode == "eager":
            def step() -> Any:
                with autocast(precision, self.device):
                    return post(fn(*inputs))
            return step
        if mode == "compile":
            compiled = self.compiled_fn(name, precision, fn)

            def step() -> Any:
                with autocast(precision, self.device):
                    return post(compiled(*inputs))
            return step
        static = [x.clone() for x in inputs]
        replay = self.graph(precision, lambda: post(fn(*static)))

        def step() -> Any:
            for buffer, value in zip(static, inputs):  # a new frame's inputs, as in a call
                buffer.copy_(value)
            return replay()
        return step

    def render_fn(self, precision: str, mode: str) -> Callable[[tuple[torch.Tensor, ...]], Any]:
        """driving (R, t, δ) on the device -> frame, in ``mode`` (the receiver's per-frame path)."""
        source = self.inputs.source(precision)
        model = self.model
        if mode == "eager":
            def render(driving: tuple[torch.Tensor, ...]) -> Any:
                with autocast(precision, self.device):
                    return model.render(source, *driving)
            return render
        if mode == "compile":
            def render(driving: tuple[torch.Tensor, ...]) -> Any:
                with autocast(precision, self.device), self.swapped(precision):
                    return model.render(source, *driving)
            return render
        static = [x.clone() for x in self.inputs.driving[0]]
        replay = self.graph(precision, lambda: model.render(source, *static))

        def render(driving: tuple[torch.Tensor, ...]) -> Any:
            for buffer, value in zip(static, driving):
                buffer.copy_(value)
            return replay()
        return render
