"""What every benchmark JSON records about where it ran: the git commit (and whether the working
tree differed from it) and the CPU."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# Untracked files here are what benchmarks write (results, caches), not code: they leave the
# code a run measured equal to its commit. Prefixes of repository-relative paths.
RESULT_DIRS = ("out/", "benchmarks/results/")


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one, else platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_sha(repo: Path = REPO) -> str | None:
    """HEAD's commit, read from .git directly (the GPU machine's copy may have no git binary
    or no .git at all: $FACECODEC_GIT_SHA then names it), else `git rev-parse HEAD`."""
    if os.environ.get("FACECODEC_GIT_SHA"):
        return os.environ["FACECODEC_GIT_SHA"]
    try:
        git = repo / ".git"
        if git.is_file():  # a worktree: ".git" names the real git dir
            git = (repo / git.read_text().split(":", 1)[1].strip()).resolve()
        common = git
        if (git / "commondir").is_file():  # worktrees keep branch refs in the main git dir
            common = (git / (git / "commondir").read_text().strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head  # detached HEAD
        ref = head.split(":", 1)[1].strip()
        for base in (git, common):
            if (base / ref).is_file():
                return (base / ref).read_text().strip()
            packed = base / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split()[0]
    except (OSError, IndexError):
        pass
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def git_dirty(repo: Path = REPO) -> bool | None:
    """Whether the code differs from HEAD: a tracked file changed (staged or not), or an
    untracked file outside ``RESULT_DIRS`` (ignored files never count). None when unknown:
    no git binary or no repository (the GPU machine's copy; $FACECODEC_GIT_DIRTY, 1 or 0,
    then says, as $FACECODEC_GIT_SHA names the commit)."""
    if os.environ.get("FACECODEC_GIT_DIRTY"):
        return os.environ["FACECODEC_GIT_DIRTY"].strip().lower() in {"1", "true", "yes"}
    try:
        out = subprocess.run(["git", "status", "--porcelain", "-z", "--untracked-files=all"],
                             cwd=repo, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    entries = iter(out.stdout.split("\0"))
    for entry in entries:
        if not entry:
            continue
        status, path = entry[:2], entry[3:]
        if status[0] in "RC":
            next(entries, None)  # -z puts a rename's or copy's source path in an entry of its own
        if status != "??" or not path.startswith(RESULT_DIRS):
            return True
    return False


def git_state(repo: Path = REPO) -> dict[str, Any]:
    """{"git_sha", "git_dirty"}: the commit, and whether the measured code differed from it."""
    return {"git_sha": git_sha(repo), "git_dirty": git_dirty(repo)}


def describe_commit(env: dict[str, Any]) -> str:
    """A results file's commit for a report: "`sha`", marked when the tree was not that commit."""
    text = f"`{env.get('git_sha') or 'unknown'}`"
    if env.get("git_dirty"):
        text += " plus uncommitted changes"
    return text


def write_json(path: Path, report: dict) -> None:
    """A benchmark's report as indented JSON at ``path`` (its folder made when missing)."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
