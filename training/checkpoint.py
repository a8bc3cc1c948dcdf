"""What a training chunk saves and resumes from: state.pt, the discriminator export, sample grids.

``state.pt`` holds everything an exact resume needs (weights, optimizer and scaler states, the
data position and every rank's RNG states); it is written atomically. The discriminator is
exported beside the generator as fp16 safetensors. Imports torch, numpy and OpenCV alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from codec.config import ModelConfig
from training import losses as L
from training.distributed import DistContext

STATE_FORMAT = "facecodec-train-state-v1"
DISCRIMINATOR_FORMAT = "facecodec-discriminator-v1"


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's python / numpy / torch (/ cuda) RNG states as tensors and plain types."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _as_tuple(value: Any) -> Any:
    # random.setstate needs tuples; a list may come back from some serialisations.
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write to a temp file beside ``path``, fsync, then rename: a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def gather_rng_states(ctx: DistContext, device: torch.device) -> list[dict[str, Any]]:
    """Every rank's RNG states (CPU tensors), in rank order; a collective under torchrun."""
    state = rng_state(device)
    if ctx.world > 1:
        gathered: list[Any] = [None] * ctx.world
        dist.all_gather_object(gathered, {k: v for k, v in state.items()})
        return [to_cpu(s) for s in gathered]
    return [to_cpu(state)]


def read_state(path: Path, config: ModelConfig) -> dict[str, Any]:
    """A ``state.pt`` of this format, trained with ``config`` (else ``ValueError``)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a {STATE_FORMAT} file")
    if state["config"] != config.to_dict():
        raise ValueError(f"{path} was trained with config {state['config']['name']!r}, "
                         f"not {config.name!r}")
    return state


def export_discriminator(discriminator: nn.Module, path: Path, config: ModelConfig, step: int) -> None:
    """The discriminator as fp16 safetensors with its config name and the training step."""
    from safetensors.torch import save_file

    state = {k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()).contiguous()
             for k, v in discriminator.state_dict().items()}
    meta = {"facecodec": json.dumps({"format": DISCRIMINATOR_FORMAT, "config": config.name,
                                     "step": step}, sort_keys=True)}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_discriminator_file(discriminator: nn.Module, path: Path) -> dict[str, Any]:
    """Load an :func:`export_discriminator` file into ``discriminator``; return its metadata."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = json.loads((f.metadata() or {}).get("facecodec", "{}"))
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    if meta.get("format") != DISCRIMINATOR_FORMAT:
        raise ValueError(f"{path} is not a {DISCRIMINATOR_FORMAT} file")
    expected = discriminator.state_dict()
    discriminator.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()
                                   if k in expected}, strict=True)
    return meta


def save_sample_grid(path: Path, source: torch.Tensor, driving: torch.Tensor,
                     prediction: torch.Tensor, rows: int = 4) -> None:
    """PNG with one row per sample: source | driving | output (B×3×H×W in [0, 1])."""
    count = min(rows, source.shape[0])
    parts = [torch.cat([source[i], driving[i], prediction[i]], dim=2) for i in range(count)]
    image = torch.cat(parts, dim=1).detach().float().clamp(0, 1)
    array = (image.permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(array, cv2.COLOR_RGB2BGR))


def to_cpu(value: Any) -> Any:
    """``value`` with every tensor in it (nested in dicts) moved to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    return value


def plain_config(cfg: Any) -> dict[str, Any]:
    """A TrainConfig as JSON-safe plain types (for the record inside state.pt)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, L.LossWeights):
            value = value.as_dict()
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out
