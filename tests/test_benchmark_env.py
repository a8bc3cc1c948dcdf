"""benchmarks.env: a results file names its commit and says when the code it measured was not
that commit (tracked changes, or untracked files outside the results folders)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks.env import describe_commit, git_dirty, git_state

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                          cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A one-commit repository: code.py tracked, out/ ignored."""
    monkeypatch.delenv("FACECODEC_GIT_DIRTY", raising=False)
    monkeypatch.delenv("FACECODEC_GIT_SHA", raising=False)
    _git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / ".gitignore").write_text("/out/\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-q", "-m", "one")
    return tmp_path


def test_clean_tree_and_results_are_not_dirty(repo: Path) -> None:
    assert git_dirty(repo) is False
    assert git_state(repo) == {"git_sha": _git(repo, "rev-parse", "HEAD").strip(), "git_dirty": False}
    # what benchmarks write leaves the code as committed: ignored out/, untracked results
    (repo / "out").mkdir()
    (repo / "out" / "rd.json").write_text("{}")
    (repo / "benchmarks" / "results").mkdir(parents=True)
    (repo / "benchmarks" / "results" / "new.json").write_text("{}")
    assert git_dirty(repo) is False


@pytest.mark.parametrize("change", ["modified", "staged", "deleted", "renamed", "untracked code"])
def test_changed_code_is_dirty(repo: Path, change: str) -> None:
    if change == "modified":
        (repo / "code.py").write_text("x = 2\n")
    elif change == "staged":
        (repo / "code.py").write_text("x = 2\n")
        _git(repo, "add", "code.py")
    elif change == "deleted":
        (repo / "code.py").unlink()
    elif change == "renamed":
        _git(repo, "mv", "code.py", "renamed.py")
    else:
        (repo / "benchmarks").mkdir()
        (repo / "benchmarks" / "helper.py").write_text("y = 1\n")
    assert git_dirty(repo) is True
    assert git_state(repo)["git_dirty"] is True


def test_unknown_without_a_repository_or_as_told(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FACECODEC_GIT_DIRTY", raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no repository above it either
    assert git_dirty(tmp_path) is None
    # the GPU machine's copy has no .git: the caller says what it carried
    monkeypatch.setenv("FACECODEC_GIT_DIRTY", "1")
    assert git_dirty(tmp_path) is True
    monkeypatch.setenv("FACECODEC_GIT_DIRTY", "0")
    assert git_dirty(tmp_path) is False


def test_describe_commit_marks_uncommitted_changes() -> None:
    assert describe_commit({"git_sha": "abc123", "git_dirty": False}) == "`abc123`"
    assert describe_commit({"git_sha": "abc123", "git_dirty": True}) == "`abc123` plus uncommitted changes"
    assert describe_commit({"git_sha": "abc123"}) == "`abc123`"  # results from before the flag
    assert describe_commit({}) == "`unknown`"
