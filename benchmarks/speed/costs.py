"""FLOPs and bytes per frame of the networks (``torch.utils.flop_counter``, minimum and
all-op traffic), from which a GPU session derives the floor time."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from .stages import BYTES_PER_ELEMENT

if TYPE_CHECKING:
    from .inputs import BenchInputs

try:  # private but long-stable; only used for an optional diagnostic (all-op output bytes)
    from torch.utils._python_dispatch import TorchDispatchMode
except ImportError:  # pragma: no cover
    TorchDispatchMode = None  # type: ignore[assignment,misc]


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

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
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
    minimum = {p: (params + in_elements + out_elements) * b for p, b in BYTES_PER_ELEMENT.items()}
    return {
        "stage": name, "flops": flops, "gflops": flops / 1e9, "parameters": params,
        "input_elements": in_elements, "output_elements": out_elements,
        "min_bytes": minimum,
        "arithmetic_intensity_flops_per_byte": {p: flops / b for p, b in minimum.items()},
        "all_op_output_elements": all_op_elements,
        "all_op_output_bytes": ({p: all_op_elements * b for p, b in BYTES_PER_ELEMENT.items()}
                                if all_op_elements is not None else None),
    }


COST_NOTES = [
    ("flops: torch.utils.flop_counter.FlopCounterMode at batch 1, fp32 eager; a multiply-add "
     "is 2 FLOPs; it counts convolutions and matrix products only (grid_sample, GroupNorm, "
     "softmax, interpolation and elementwise ops are not counted; they are bandwidth-bound)"),
    ("min_bytes: weights (parameters) + the module's input tensors + its output tensors, each "
     "read or written once at the precision's element size (fp32 4, bf16/fp16 2 bytes): the "
     "compulsory traffic if every intermediate activation stayed on chip; under autocast the "
     "weights are fp32 in memory, so this assumes weights pre-cast to the precision"),
    ("all_op_output_bytes: every aten op's output written once (views excluded), measured in "
     "fp32 and scaled by element size: a realistic upper bound for unfused eager execution"),
    "floor time = max(flops / peak_flops_per_s, min_bytes / peak_bytes_per_s)",
]


def model_costs(inputs: BenchInputs) -> dict[str, Any]:
    """FLOPs and minimum bytes per frame of M and G (plus H/Δ and the keyframe setup)."""
    model = inputs.model
    m_in = inputs.motion_inputs("fp32")
    g_in = inputs.generator_inputs("fp32")
    out = {
        "receiver.M": cost_model("receiver.M", [model.motion], lambda: model.motion(*m_in),
                                 m_in),
        "receiver.G": cost_model("receiver.G", [model.generator],
                                 lambda: model.generator(*g_in), g_in),
        "sender.H": cost_model("sender.H", [model.head_pose],
                               lambda: model.head_pose(inputs.frame_image), inputs.frame_image),
        "keyframe.setup": cost_model(
            "keyframe.setup", [model.appearance, model.canonical_kp, model.head_pose],
            lambda: model.prepare_source(inputs.keyframe), inputs.keyframe),
    }
    # per frame M + G, what the GPU floor is derived from
    m, g = out["receiver.M"], out["receiver.G"]
    out["receiver.M+G"] = {
        "flops": m["flops"] + g["flops"], "gflops": (m["flops"] + g["flops"]) / 1e9,
        "min_bytes": {p: m["min_bytes"][p] + g["min_bytes"][p] for p in BYTES_PER_ELEMENT},
    }
    out["notes"] = COST_NOTES + [
        (f"image {inputs.config.image_size} px, K = {inputs.config.num_kp}, batch 1; "
         "keyframe.setup counts F + L + H/Δ")]
    return out

