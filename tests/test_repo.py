"""Guards on the repository itself: CI runs exactly the README's test command."""

from __future__ import annotations

import re

from conftest import REPO


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"```sh\n(.*?)\n```", readme, flags=re.S)
    test_command = next(c for c in commands if "pytest" in c and "venv" in c).strip()
    ci = (REPO / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()


def test_no_data_files_committed_under_the_packages():
    for suffix in ("*.mp4", "*.mov", "*.npz", "*.npy", "*.ckpt", "*.pt"):
        assert not list((REPO / "codec").rglob(suffix)), suffix
