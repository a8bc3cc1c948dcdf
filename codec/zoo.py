"""Model registry: model name -> a ready :class:`codec.families.TalkingHeadModel`.

- ``landmark`` (the default): the landmark family. Its only data file is the face model
  (mean 3D face + expression basis) fitted on the train split by
  ``python -m training.fit_face_model``, committed under codec/weights/landmark/
  with a card beside it.
- ``vox256`` / ``tiny``: the vid2vid family. Our weights would be trained by this project
  (no pretrained weights of this model family can be had); until a trained entry exists,
  the only way to get one is ``build_untrained``, which every caller must ask for
  explicitly and which marks itself as untrained.

Every load checks the file's sha256 against the value recorded here
(:mod:`codec.weights_io` reads the files), so a corrupted or swapped file fails loudly
instead of rendering garbage. Torch loads only with a network: the vid2vid family, or the
landmark family's refiner; the plain landmark warp runs on numpy and OpenCV alone.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from codec.config import CONFIGS, get_config
from codec.errors import WeightsError
from codec.families.base import TalkingHeadModel
from codec.families.landmark import LandmarkModel
from codec.weights_io import file_sha256, load_face_model, load_weights_file, state_sha256

if TYPE_CHECKING:
    import torch

    from codec.families.vid2vid import Vid2VidModel

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
def load_landmark_model(name: str = DEFAULT_MODEL, *, face_model: Path | str | None = None,
                        coefficients: int | None = None, refiner: bool = True,
                        device: str | torch.device = "cpu") -> TalkingHeadModel:
    """A landmark-family model: the registered face model, or ``face_model`` (a file you fitted),
    with the registered refiner on top unless ``refiner`` is False (the plain warp)."""
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
        from codec.models.refiner import load_refiner  # torch: only with the refiner

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
    from codec.families.vid2vid import Vid2VidModel
    from codec.models import build_model

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
