"""Shared fixtures. Tests run on the CPU with tiny seeded models; data under ../shared is
optional and tests that need it skip with the reason when it is absent."""

from __future__ import annotations

import faulthandler
import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[1]

# No test takes more than ~1.5 minutes; one that runs this long is stuck. Every thread's
# stack is printed and the run stops, rather than running on to CI's time limit with
# nothing to show where it hung (one clean-clone run hung once in tests/test_call.py).
TEST_HANG_S = 600


@pytest.fixture(autouse=True)
def _stacks_of_a_hung_test():
    faulthandler.dump_traceback_later(TEST_HANG_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()

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


def in_ci() -> bool:
    """Whether this is a CI run: $CI is true (.ci/run exports CI=true; CI services set it too)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def skip_or_fail_in_ci(reason: str, *, ci_provides: bool = True) -> NoReturn:
    """Skip with ``reason``; under CI fail instead when ``ci_provides`` what is missing.

    .ci/run installs chromium, chromium-driver, iptables, xvfb and iproute2, and runs as root
    (network namespaces), but a failed install is not fatal there: without this, the tests
    that need them would skip and CI would stay green with them never run."""
    if ci_provides and in_ci():
        pytest.fail(f"{reason} (CI=true, and .ci/run is meant to provide it: a failure, not a skip)",
                    pytrace=False)
    pytest.skip(reason)


def require_tool(name: str, reason: str) -> str:
    """The path of the executable ``name``; skips with ``reason`` without it (fails under CI)."""
    path = shutil.which(name)
    if path is None:
        skip_or_fail_in_ci(reason)
    return path


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
