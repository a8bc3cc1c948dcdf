"""The clips a run scores (manifest rows or a folder's videos) and their protocol crops, cached
as .npy under the output folder."""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codec.facecrop import FIT_FRAMES

from .protocol import FPS


def slug(text: str) -> str:
    """A file-name-safe version of a clip path or setting."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


@dataclass
class Clip:
    """One clip to benchmark: a manifest row, or a video under ``--folder``."""

    path: Path
    name: str  # the manifest's relative path (or the path under --folder): the clip's id


def manifest_clips(manifest: Path, split: str, folder: Path | None = None) -> list[Clip]:
    """The manifest's clips of ``split``, in manifest order; paths relative to ``folder``
    (default: the manifest's own folder)."""
    base = folder if folder is not None else manifest.parent
    clips = []
    with open(manifest, newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row.get("split") == split:
                clips.append(Clip(path=base / row["path"], name=row["path"]))
    return clips


def folder_clips(folder: Path) -> list[Clip]:
    """Every video under ``folder`` (recursively; ``training.dataset.VIDEO_SUFFIXES``),
    sorted by path, each named by its path relative to ``folder``."""
    from training.clip_jobs import jobs_from_folder

    return [Clip(path=Path(job.path), name=job.source) for job in jobs_from_folder(folder)]


def skip_summary(skipped: dict[str, str], clips: Sequence[Clip]) -> str:
    """The skip reasons of ``clips`` counted, e.g. "not found: 3, no frames: 1" (the clip's
    own path and any detail after the first colon are left out so equal reasons group)."""
    counts: dict[str, int] = {}
    for clip in clips:
        reason = skipped.get(clip.name)
        if reason is None:
            continue
        kind = reason.replace(str(clip.path), "").strip().split(":")[0].strip() or reason
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{kind}: {n}" for kind, n in sorted(counts.items(), key=lambda kv: -kv[1]))


class SkipClip(Exception):
    """The clip cannot be used under the protocol (logged with the reason, then skipped)."""


# ``--frame``: whole frames, scaled down so the long side is at most this; clips whose short
# side is under FRAME_MIN_SHORT pixels are skipped (a whole frame below a 512 crop's pixels).
FRAME_LONG_SIDE = 1280
FRAME_MIN_SHORT = 480


def load_frames(clip: Clip, frames: int, cache_dir: Path, long_side: int = FRAME_LONG_SIDE,
                min_short: int = FRAME_MIN_SHORT) -> np.ndarray:
    """The protocol's whole frames of a clip (``--frame``): N×H×W×3 uint8 RGB, the source's
    frames scaled so the long side is at most ``long_side`` (both sides even), cached as .npy.
    Every codec codes exactly these frames. SkipClip when the short side is under
    ``min_short``, or no face is found in the first frames (as for the crops)."""
    from codec.errors import CodecError
    from codec.facecrop import FaceCropper
    from codec.keyframe import fit_frame, frame_size_within
    from codec.media import read_frames

    cache = cache_dir / f"{slug(clip.name)}_frame{long_side}_{frames}f.npy"
    if cache.is_file():
        return np.load(cache, mmap_mode="r")
    if not clip.path.exists():
        raise SkipClip(f"{clip.path} not found")
    try:
        images = [item.image for item in read_frames(clip.path, fps=FPS, max_frames=frames)]
        if not images:
            raise SkipClip("no frames")
        height, width = images[0].shape[:2]
        if min(height, width) < min_short:
            raise SkipClip(f"short side {min(height, width)}px, under {min_short}px ({width}×{height})")
        FaceCropper().fit(images[:FIT_FRAMES])  # a face to code (FaceNotFoundError otherwise)
    except CodecError as exc:
        raise SkipClip(f"{type(exc).__name__}: {exc}") from exc
    size = frame_size_within(width, height, (long_side, long_side))
    stacked = np.stack([fit_frame(image, size) for image in images])
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(cache.name + ".partial.npy")
    np.save(partial, stacked)
    partial.replace(cache)
    return stacked


def load_crops(clip: Clip, size: int, frames: int, cache_dir: Path) -> np.ndarray:
    """The protocol's crops of a clip: N×size×size×3 uint8 RGB, cached as .npy.

    The crop box is fitted on the first FIT_FRAMES frames and held fixed. At sizes above
    256 the clip is skipped when the box has fewer source pixels than ``size`` (it would
    be an upscale, not a 512 px test)."""
    from codec.errors import CodecError
    from codec.facecrop import FaceCropper
    from codec.media import read_frames

    cache = cache_dir / f"{slug(clip.name)}_{size}px_{frames}f.npy"
    if cache.is_file():
        return np.load(cache, mmap_mode="r")
    if not clip.path.exists():
        raise SkipClip(f"{clip.path} not found")
    try:
        images = [item.image for item in read_frames(clip.path, fps=FPS, max_frames=frames)]
        if not images:
            raise SkipClip("no frames")
        cropper = FaceCropper(out_size=size)
        box = cropper.fit(images[:FIT_FRAMES])
    except CodecError as exc:
        raise SkipClip(f"{type(exc).__name__}: {exc}") from exc
    if size > 256 and box.side < size:
        raise SkipClip(f"crop box is {box.side}px in the source, fewer than {size}px")
    crops = np.stack([box.crop(image, size) for image in images])
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(cache.name + ".partial.npy")
    np.save(partial, crops)
    partial.replace(cache)  # a killed run never leaves a half cache under the real name
    return crops

