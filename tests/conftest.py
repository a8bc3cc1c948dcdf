"""Shared fixtures. Tests run on the CPU with tiny seeded models; data under ../shared is
optional and tests that need it skip with the reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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
