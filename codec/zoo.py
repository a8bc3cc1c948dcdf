"""Model registry: model name -> a ready :class:`codec.families.TalkingHeadModel`.

- ``landmark`` (the default): the landmark family. Its only data file is the face model
  (mean 3D face + expression basis) fitted on the train split by
  ``python -m training.fit_face_model``, committed under codec/weights/landmark/
  with a card beside it.
- ``vox256`` / ``tiny``: the vid2vid family. Our weights would be trained by this project
  (no pretrained weights of this model family can be had); until a trained entry exists,
  the only way to get one is ``build_untrained``, which every caller must ask for
  explicitly and which marks itself as untrained.

Every load checks the file's sha256 against the value recorded here, so a corrupted or
swapped file fails loudly instead of rendering garbage.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from codec.config import CONFIGS, ModelConfig, get_config
from codec.errors import WeightsError
from codec.families.base import TalkingHeadModel
from codec.families.vid2vid import Vid2VidModel
from codec.models import FaceVid2Vid, build_model

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_MODEL = "landmark"


@dataclass(frozen=True)
class LandmarkEntry:
    """One landmark-family model: its face model file and how it is used."""

    name: str
    filename: str  # under WEIGHTS_DIR
    sha256: str
    coefficients: int  # expression values per frame (N)
    image_size: int
    card: str
    # The learned refiner over the warp (receiver side), or None.
    refiner: str | None = None  # under WEIGHTS_DIR
    refiner_sha256: str | None = None


LANDMARK_MODELS: dict[str, LandmarkEntry] = {
    "landmark": LandmarkEntry(
        name="landmark", filename="landmark/face_model.safetensors",
        sha256="84ef3aefb4a3e9e64c267414812b1a3c21038e361fe5b72f4dde84ba4d61c2ff",
        coefficients=12, image_size=256,
        card="landmark/MODEL_CARD.md",
        refiner="landmark/refiner.safetensors",
        refiner_sha256="0077ee06f31cd5d73bd7bc1a86e1c3bcd3d2968df688c79f7b253ebb7e56a2d3"),
}
FACE_MODEL_FORMAT = "facecodec-face-model-v1"


def load_face_model(path: Path | str, expected_sha256: str | None = None):
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


def load_landmark_model(name: str = DEFAULT_MODEL, *, face_model: Path | str | None = None,
                        coefficients: int | None = None, refiner: bool = True,
                        device: str | torch.device = "cpu") -> TalkingHeadModel:
    """A landmark-family model: the registered face model, or ``face_model`` (a file you fitted),
    with the registered refiner on top unless ``refiner`` is False (the plain warp)."""
    from codec.families.landmark import LandmarkModel
    from codec.models.refiner import load_refiner

    entry = LANDMARK_MODELS.get(name)
    if entry is None:
        raise WeightsError(f"unknown landmark model {name!r} (known: {', '.join(LANDMARK_MODELS)})")
    if face_model is None:
        face = load_face_model(WEIGHTS_DIR / entry.filename, expected_sha256=entry.sha256)
        digest = entry.sha256
    else:
        face = load_face_model(face_model)
        digest = file_sha256(Path(face_model))
    k = coefficients or entry.coefficients
    # The stream's identity covers the face model and how many coefficients are sent.
    identity = hashlib.sha256(f"{digest}:{k}".encode()).hexdigest()
    network = None
    if refiner and entry.refiner is not None:
        network, _ = load_refiner(WEIGHTS_DIR / entry.refiner, device, expected_sha256=entry.refiner_sha256)
    return LandmarkModel(face, name=entry.name, sha256=identity, image_size=entry.image_size,
                         coefficients=k, refiner=network)


def model_names() -> list[str]:
    """Every name ``resolve_model`` takes: the landmark models, then the vid2vid configs."""
    return list(LANDMARK_MODELS) + sorted(CONFIGS)


@dataclass(frozen=True)
class WeightsEntry:
    """One registered set of trained weights."""

    name: str
    config_name: str
    filename: str
    sha256: str
    card: str  # model card file name, beside the weights


# Trained weights land here, one entry per shipped version (sha256 of the file).
REGISTRY: dict[str, WeightsEntry] = {}


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


WEIGHTS_FORMAT = "facecodec-weights-v1"


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


def load_pretrained(name: str = "vox256", device: str | torch.device = "cpu") -> Vid2VidModel:
    """The registered trained weights for ``name``; a clear WeightsError when there are none."""
    entry = REGISTRY.get(name)
    if entry is None:
        known = ", ".join(sorted(REGISTRY)) or "none yet"
        raise WeightsError(
            f"no trained weights are registered for model {name!r} (registered: {known}). "
            "This project trains its own weights; until they ship, pass --untrained "
            "(API: untrained=True) to run the untrained architecture, whose output is noise, "
            "or --weights PATH for a file you trained.")
    loaded = load_weights_file(WEIGHTS_DIR / entry.filename, expected_sha256=entry.sha256, device=device)
    if loaded.name != entry.config_name:
        raise WeightsError(f"registered weights {entry.filename} hold config {loaded.name!r}, "
                           f"expected {entry.config_name!r}")
    return loaded


def build_untrained(config_name: str = "vox256", seed: int = 0,
                    device: str | torch.device = "cpu") -> Vid2VidModel:
    """A seeded, randomly initialised model. Its output is not a working codec; it is for
    tests, speed measurements and format work, and every stream it makes is flagged UNTRAINED."""
    config = get_config(config_name)
    model = build_model(config, seed=seed)
    log.warning("using an UNTRAINED %s model (seed %d): output frames are not meaningful",
                config.name, seed)
    loaded = Vid2VidModel(model, name=config.name, sha256=state_sha256(model), untrained=True)
    model.to(device).eval()
    return loaded


def resolve_model(name: str = DEFAULT_MODEL, *, untrained: bool = False,
                  weights: Path | str | None = None, seed: int = 0,
                  device: str | torch.device = "cpu", refiner: bool = True) -> TalkingHeadModel:
    """The one place the CLI and API turn user choices into a model.

    A landmark model needs no training, so ``untrained`` does not apply to it; ``weights``
    is then a face model file. For the vid2vid family, ``weights`` is a file the trainer
    exported and ``untrained`` asks for the seeded, untrained network. ``refiner=False``
    renders a landmark model's plain warp, without its learned refiner."""
    if name in LANDMARK_MODELS:
        return load_landmark_model(name, face_model=weights, refiner=refiner, device=device)
    if name not in CONFIGS:
        raise WeightsError(f"unknown model {name!r} (known: {', '.join(model_names())})")
    if weights is not None:
        return load_weights_file(weights, device=device)
    if untrained:
        return build_untrained(name, seed=seed, device=device)
    return load_pretrained(name, device=device)
