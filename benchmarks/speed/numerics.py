"""Numerics: a variant's output against the fp32 eager reference (abs differences, PSNR for
frames) and the check against ``TOLERANCES``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .stages import TOLERANCES


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

