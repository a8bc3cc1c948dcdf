"""Shared fixtures. Tests run on the CPU with tiny seeded models; data under ../shared is
optional and tests that need it skip with the reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Prepended to a subprocess's script: makes av, aiortc and constriction unimportable, as on
# the accelerator machine, so a test proves the training path does without them.
BLOCK_TRANSPORT_IMPORTS = """
import importlib.abc, sys
BLOCKED = {"av", "aiortc", "constriction"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked import of {name}")
        return None
sys.meta_path.insert(0, Block())
for name in list(sys.modules):
    if name.split(".")[0] in BLOCKED:
        del sys.modules[name]
"""


def shared_data_dir() -> Path | None:
    """../shared/data beside the repo (as in CI), or $FACECODEC_DATA; None when absent."""
    candidate = Path(os.environ.get("FACECODEC_DATA", REPO.parent / "shared" / "data"))
    return candidate if (candidate / "talking" / "MANIFEST.tsv").is_file() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("shared data (../shared/data or $FACECODEC_DATA) is not present on this machine")
    return path


@pytest.fixture(scope="session")
def tiny_model():
    """The tiny config with seeded random weights: exercises every code path in milliseconds."""
    from codec.zoo import build_untrained

    return build_untrained("tiny", seed=0)


@pytest.fixture(scope="session")
def portrait():
    """The astronaut's 256 px face crop and its 68 dlib landmarks (the built-in default's face,
    public domain): a real face for the landmark family without ../shared."""
    from skimage import data

    from codec.facecrop import FaceCropper, detect_landmarks

    image = data.astronaut()
    crop = FaceCropper(out_size=256).fit([image]).crop(image, 256)
    landmarks = detect_landmarks(crop)
    assert landmarks is not None
    return crop, landmarks
