"""The source clips of a dataset build: the rows of a MANIFEST.tsv split, or a folder of videos."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from training.dataset import VIDEO_SUFFIXES


@dataclass
class ClipJob:
    """One source clip to process."""

    path: str  # absolute path of the file (or image-sequence folder)
    source: str  # name recorded in the index (manifest path, or path under --folder)
    identity: str
    license: str = "unknown"
    repo: str = ""
    split: str = "train"
    duration_s: float = 0.0


def jobs_from_manifest(manifest: str | os.PathLike[str], split: str) -> list[ClipJob]:
    """The rows of MANIFEST.tsv whose ``split`` column equals ``split`` (nothing else).

    Paths are relative to the manifest's folder.
    """
    manifest = Path(manifest)
    root = manifest.parent
    jobs = []
    with open(manifest, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row.get("split", "").strip() != split:
                continue  # never mix splits: dev/exclude rows are not even looked at
            try:
                duration = float(row.get("duration_s") or 0.0)
            except ValueError:
                duration = 0.0
            jobs.append(ClipJob(
                path=str(root / row["path"]),
                source=row["path"],
                identity=(row.get("identity") or Path(row["path"]).stem).strip(),
                license=(row.get("license") or "unknown").strip(),
                repo=(row.get("repo") or "").strip(),
                split=split,
                duration_s=duration,
            ))
    return jobs


def jobs_from_folder(folder: str | os.PathLike[str], split: str = "train") -> list[ClipJob]:
    """Every video under ``folder`` (recursively), sorted by path.

    Identity = the top-level sub-folder the file is under (VoxCeleb: ``id10001/…``;
    one folder per person), or the file stem for files directly in ``folder``
    (flat layouts such as TalkingHead-1KH clips).
    """
    folder = Path(folder)
    jobs = []
    for path in sorted(folder.rglob("*")):
        if not (path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES):
            continue
        rel = path.relative_to(folder)
        identity = rel.parts[0] if len(rel.parts) > 1 else path.stem
        size = path.stat().st_size
        jobs.append(ClipJob(str(path), rel.as_posix(), identity, split=split,
                            duration_s=size / 1e5))  # size only orders the work queue
    return jobs
