"""Weight files: their sha256, the landmark family's face model and the vid2vid networks as
fp16 safetensors (never pickle). Which file a model name means is :mod:`codec.zoo`'s.

Every load checks the file's sha256 against the value it is given, so a corrupted or
swapped file fails loudly instead of rendering garbage. This module imports no torch: the
vid2vid functions import it (and the networks) when they run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from codec.config import ModelConfig
from codec.errors import WeightsError

if TYPE_CHECKING:
    import torch

    from codec.face3d import FaceModel
    from codec.families.vid2vid import Vid2VidModel
    from codec.models import FaceVid2Vid

__all__ = ["FACE_MODEL_FORMAT", "WEIGHTS_FORMAT", "export_weights", "file_sha256", "load_face_model",
           "load_weights_file", "state_sha256", "verified_sha256"]

FACE_MODEL_FORMAT = "facecodec-face-model-v1"
WEIGHTS_FORMAT = "facecodec-weights-v1"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified_sha256(path: Path, expected_sha256: str | None, what: str) -> str:
    """The file's sha256; WeightsError when it is missing or differs from ``expected_sha256``."""
    if not path.is_file():
        raise WeightsError(f"{what} not found: {path}")
    digest = file_sha256(path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise WeightsError(f"{what} {path} has sha256 {digest[:16]}…, expected {expected_sha256[:16]}…: "
                           "the file is corrupted or not the registered version")
    return digest


def load_face_model(path: Path | str, expected_sha256: str | None = None) -> FaceModel:
    """A :class:`codec.face3d.FaceModel` from its safetensors file (sha256 checked)."""
    import numpy as np
    from safetensors import SafetensorError, safe_open

    from codec.face3d import NUM_LANDMARKS, FaceModel

    path = Path(path)
    verified_sha256(path, expected_sha256, "face model file")
    try:
        with safe_open(str(path), framework="numpy") as f:
            info = json.loads((f.metadata() or {}).get("facecodec", "null"))
            arrays = {key: f.get_tensor(key).astype(np.float64) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"face model {path} is not readable safetensors: {exc}") from exc
    if not isinstance(info, dict) or info.get("format") != FACE_MODEL_FORMAT:
        raise WeightsError(f"face model {path} carries no {FACE_MODEL_FORMAT} metadata")
    try:
        model = FaceModel(arrays["mean_shape"], arrays["basis"], arrays["basis_mean"], arrays["scales"])
    except KeyError as exc:
        raise WeightsError(f"face model {path} lacks {exc}") from exc
    k = model.basis.shape[0]
    if (model.mean_shape.shape != (NUM_LANDMARKS, 3) or model.basis.shape != (k, 2 * NUM_LANDMARKS)
            or model.basis_mean.shape != (2 * NUM_LANDMARKS,) or model.scales.shape != (k,)):
        raise WeightsError(f"face model {path} has unexpected shapes")
    return model


def state_sha256(model: FaceVid2Vid) -> str:
    """sha256 of a model's inference weights as fp16 safetensors bytes (what export writes)."""
    from safetensors.torch import save

    return hashlib.sha256(save(_inference_state(model), metadata=_metadata(model.config))).hexdigest()


def _inference_state(model: FaceVid2Vid) -> dict[str, torch.Tensor]:
    # fp16 halves the file; floating buffers (e.g. norm statistics) go along, integer ones stay exact.
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        state[key] = (value.half() if value.is_floating_point() else value).contiguous()
    return state


def _metadata(config: ModelConfig) -> dict[str, str]:
    # One key only: safetensors writes several metadata keys in no fixed order, which would
    # make the file's sha256 (the weights' identity) change from one export to the next.
    return {"facecodec": json.dumps({"format": WEIGHTS_FORMAT, "config": config.to_dict()},
                                    sort_keys=True)}


def export_weights(model: FaceVid2Vid, path: Path) -> str:
    """Write the inference networks (F, L, H/Δ, M, G) as fp16 safetensors; return the file's sha256."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(_inference_state(model), str(path), metadata=_metadata(model.config))
    return file_sha256(path)


def load_weights_file(path: Path | str, expected_sha256: str | None = None,
                      device: str | torch.device = "cpu") -> Vid2VidModel:
    """Load a weights file written by ``export_weights``; check its sha256 if one is given."""
    from safetensors import SafetensorError, safe_open

    from codec.families.vid2vid import Vid2VidModel
    from codec.models import build_model

    path = Path(path)
    digest = verified_sha256(path, expected_sha256, "weights file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"weights file {path} is not readable safetensors: {exc}") from exc
    try:
        info = json.loads(metadata.get("facecodec", "null"))
        if not isinstance(info, dict) or info.get("format") != WEIGHTS_FORMAT:
            raise WeightsError(f"weights file {path} carries no {WEIGHTS_FORMAT} metadata")
        config = ModelConfig.from_dict(info["config"])
    except (ValueError, TypeError, KeyError) as exc:
        raise WeightsError(f"weights file {path} has an unusable config: {exc}") from exc
    model = build_model(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise WeightsError(
            f"weights file {path} does not match config {config.name!r}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise WeightsError(f"weights file {path}: {key} has shape {tuple(tensor.shape)}, "
                               f"expected {tuple(expected[key].shape)}")
        state[key] = tensor.to(expected[key].dtype)
    model.load_state_dict(state)
    model.to(device).eval()
    return Vid2VidModel(model, name=config.name, sha256=digest, untrained=False)
