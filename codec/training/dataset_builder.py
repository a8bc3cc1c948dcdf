"""Build the training / dev set: fixed-crop 256×256 face segments + per-frame labels.

Usage::

    python -m codec.training.dataset_builder --manifest ../shared/data/talking/MANIFEST.tsv \
        --split train --out cache/train256
    python -m codec.training.dataset_builder --manifest ... --split dev --out cache/dev256
    python -m codec.training.dataset_builder --folder ~/voxceleb/train --out cache/vox256

What it writes under ``--out``::

    index.json            every segment (file, identity, source, licence, frames, fps, box)
    summary.json          totals, skips with reasons, x264 settings, build time
    segments/NAME.mp4     H.264 (yuv420p) size×size crops at 25 fps, readable by OpenCV alone
    segments/NAME.npz     pose N×3 float32 (yaw, pitch, roll; degrees),
                          landmarks N×68×2 float16 (x, y in crop pixels),
                          detected N bool (False: landmarks interpolated over a short gap)

Train clips (VoxCeleb-style): 68 landmarks on every frame (dlib, tracked in a region
around the last face, full-frame fallback), the crop box fitted like
:meth:`codec.facecrop.FaceCropper.fit` (median box over the first frames) and held fixed;
a new segment (re-fitted box) starts when :meth:`FaceCropper.face_left_box` fires.
Stretches without a face, tiny faces, crops mostly outside the frame and segments under
``--min-seconds`` are skipped and logged with the reason.

Dev clips follow the benchmark protocol: ONE segment per clip, its first 250 frames at
25 fps, the crop fixed from the start (median box of the first 5 frames, as
:func:`codec.api.compress` does), keyframe = frame 1.

Head pose pseudo-labels come from :func:`head_pose_from_landmarks` (cv2.solvePnP against
a generic 3D face written for this module). Convention, as in :mod:`codec.keypoints`:
R = Rz(roll)·Ry(yaw)·Rx(pitch), axes x = image right, y = image down, z = away from the
camera, R = I for a face looking straight into the camera. In image terms (checked on
real clips and on the scripted-roll synthetic clip, see tests/test_training_data.py):

- yaw > 0: the nose points to the image LEFT (the person turns to their own right);
- pitch > 0: the nose points DOWN (the person looks down);
- roll > 0: the head tilts CLOCKWISE on screen (the image-right eye goes down).

PyAV is used for reading sources and writing H.264 (lazily, through codec.media); the
trainer reads the result with OpenCV only (see :mod:`codec.training.dataset`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from codec.errors import FaceNotFoundError, MediaError
from codec.face3d import rotation_angles
from codec.facecrop import CropBox, FaceCropper, detect_landmarks
from codec.training.dataset import VIDEO_SUFFIXES

__all__ = [
    "BuildConfig",
    "ClipJob",
    "SegmentPlan",
    "build_dataset",
    "head_pose_from_landmarks",
    "head_poses",
    "jobs_from_folder",
    "jobs_from_manifest",
    "landmarks_to_crop",
    "main",
    "plan_dev_segment",
    "plan_segments",
]

INDEX_VERSION = 1
DEV_FRAMES = 250  # benchmark protocol: the first 10 s at 25 fps
FIT_FRAMES = 5  # as codec.api.compress: the crop is the median box of the first 5 frames

# Generic head, in the camera-like head frame: x to the image right, y down, z away
# from the camera, origin at the nose tip; units = millimetres for outer eye corners
# 90 mm apart. x and y are the median frontal layout of dlib's points measured on our
# own crops (frames with |yaw| < 6°, roll removed, scaled to that eye span), so that a
# typical "looking into the camera" face gets pitch ≈ 0; depths are rough head
# proportions (the outer eye corners, mouth corners and chin sit well behind the nose
# tip). Numbers made for this module. Only fairly rigid, well-localised points: the jaw
# contour slides around the face with yaw, the lips move with speech (the chin point
# does too, a little: one of ten points).
FACE_MODEL_3D: dict[int, tuple[float, float, float]] = {
    30: (0.0, 0.0, 0.0),  # nose tip
    33: (0.0, 13.0, 12.0),  # below the nose (subnasale)
    27: (0.0, -37.0, 20.0),  # nose bridge between the eyes
    36: (-45.0, -35.0, 40.0),  # outer eye corner, image left (the person's right eye)
    39: (-20.0, -34.0, 28.0),  # inner eye corner, image left
    42: (20.0, -34.0, 28.0),  # inner eye corner, image right
    45: (45.0, -35.0, 40.0),  # outer eye corner, image right
    48: (-26.0, 35.0, 28.0),  # mouth corner, image left
    54: (26.0, 35.0, 28.0),  # mouth corner, image right
    8: (0.0, 81.0, 30.0),  # chin
}
_POSE_IDX = np.array(list(FACE_MODEL_3D), dtype=np.int64)
_POSE_OBJ = np.array(list(FACE_MODEL_3D.values()), dtype=np.float64)


# ------------------------------------------------------------------------------ head pose


def head_pose_from_landmarks(
    landmarks: np.ndarray,
    image_size: float,
    guess: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """Head pose pseudo-label of one face from its 68 landmarks.

    Args:
        landmarks: 68×2 (x, y) in pixels of a square image of side ``image_size``
            (the face crop; the principal point is its centre).
        image_size: side of that image; the focal length is taken equal to it (a ~53°
            field of view, typical of webcams and of VoxCeleb-style crops).
        guess: (rvec, tvec) of a neighbouring frame, to start the solver there (smoother
            labels, and no jumps to the mirrored solution).

    Returns:
        ((yaw, pitch, roll) float32 degrees — NaN if the solver failed, (rvec, tvec) or
        None) — see the module docstring for the sign conventions.
    """
    pts = np.asarray(landmarks, dtype=np.float64)[_POSE_IDX].reshape(-1, 1, 2)
    if not np.all(np.isfinite(pts)):
        return np.full(3, np.nan, np.float32), None
    c = (float(image_size) - 1.0) / 2.0
    camera = np.array([[image_size, 0.0, c], [0.0, image_size, c], [0.0, 0.0, 1.0]])
    obj = _POSE_OBJ.reshape(-1, 1, 3)
    try:
        if guess is not None:
            ok, rvec, tvec = cv2.solvePnP(
                obj, pts, camera, None, guess[0].copy(), guess[1].copy(),
                useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE,
            )
        else:
            # EPnP gives a closed-form start; the iterative solver then refines it
            ok, rvec, tvec = cv2.solvePnP(obj, pts, camera, None, flags=cv2.SOLVEPNP_EPNP)
            if ok:
                ok, rvec, tvec = cv2.solvePnP(
                    obj, pts, camera, None, rvec, tvec,
                    useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE,
                )
    except cv2.error:
        ok = False
    if not ok or not (np.all(np.isfinite(rvec)) and float(tvec[2, 0]) > 0):
        return np.full(3, np.nan, np.float32), None
    rotation, _ = cv2.Rodrigues(rvec)
    return rotation_angles(rotation).astype(np.float32), (rvec, tvec)


def head_poses(landmarks: np.ndarray, image_size: float) -> np.ndarray:
    """Poses of a sequence: N×68×2 landmarks → N×3 float32 (yaw, pitch, roll) degrees.

    Each frame starts from the previous solution; frames whose solve failed (rare) take
    their nearest neighbour's pose so that the labels stay finite.
    """
    poses = np.full((len(landmarks), 3), np.nan, np.float32)
    guess = None
    for i, lm in enumerate(landmarks):
        poses[i], new_guess = head_pose_from_landmarks(lm, image_size, guess)
        if new_guess is None:  # retry from scratch before giving up on the frame
            poses[i], new_guess = head_pose_from_landmarks(lm, image_size, None)
        guess = new_guess
    return _fill_nearest(poses)


def _fill_nearest(values: np.ndarray) -> np.ndarray:
    """Replace NaN rows of an N×C array by the nearest finite row (all-NaN stays NaN)."""
    good = np.all(np.isfinite(values), axis=1)
    if good.all() or not good.any():
        return values
    idx = np.flatnonzero(good)
    pos = np.searchsorted(idx, np.arange(len(values))).clip(0, len(idx) - 1)
    left = idx[(pos - 1).clip(0)]
    right = idx[pos]
    here = np.arange(len(values))
    nearest = np.where(np.abs(here - left) <= np.abs(right - here), left, right)
    out = values.copy()
    out[~good] = values[nearest[~good]]
    return out


# ------------------------------------------------------------------------------ landmarks


class LandmarkTracker:
    """68 landmarks per frame, detecting in a window around the last face.

    dlib's HOG detector dominates the cost and grows with the image area; searching a
    window of ``roi_scale`` × the last crop box, shrunk to ``roi_side`` px, costs ~10–20
    ms instead of ~40 ms per frame here. The 68-point fit itself runs on the full-resolution
    window, so precision is kept. Falls back to a full-frame search when the window has
    no face.
    """

    def __init__(self, cropper: FaceCropper, roi_scale: float = 1.4, roi_side: int = 260) -> None:
        self.cropper = cropper
        self.roi_scale = roi_scale
        self.roi_side = roi_side
        self.last: np.ndarray | None = None
        self.full_searches = 0

    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
        """H×W×3 uint8 RGB → 68×2 float64 (x, y) source pixels, or None."""
        found: np.ndarray | None = None
        if self.last is not None:
            box = self.cropper.box_for(self.last)
            side = box.size * self.roi_scale
            h, w = frame.shape[:2]
            x0, y0 = max(0, int(box.cx - side / 2)), max(0, int(box.cy - side / 2))
            x1, y1 = min(w, int(box.cx + side / 2)), min(h, int(box.cy + side / 2))
            if x1 - x0 >= 32 and y1 - y0 >= 32:
                roi = frame[y0:y1, x0:x1]
                found = detect_landmarks(roi, max_side=self.roi_side)
                if found is not None:
                    found = found + np.array([x0, y0], np.float64)
        if found is None:
            self.full_searches += 1
            found = detect_landmarks(frame)
        self.last = found
        return found


def _interpolate_gaps(landmarks: np.ndarray, max_gap: int) -> np.ndarray:
    """Linearly fill runs of ≤ ``max_gap`` missing frames (NaN) between two found ones.

    Args:
        landmarks: N×68×2 float64 with NaN rows for frames without a face (modified copy).
    """
    out = landmarks.copy()
    found = np.all(np.isfinite(out.reshape(len(out), -1)), axis=1)
    idx = np.flatnonzero(found)
    for a, b in zip(idx[:-1], idx[1:], strict=False):
        gap = b - a - 1
        if 0 < gap <= max_gap:
            for k in range(1, gap + 1):
                w = k / (gap + 1)
                out[a + k] = (1 - w) * out[a] + w * out[b]
    return out


# ------------------------------------------------------------------------------ planning


@dataclass(frozen=True)
class SegmentPlan:
    """Frames [start, stop) of a clip (at the output rate) cropped with one fixed box."""

    start: int
    stop: int
    box: CropBox

    @property
    def frames(self) -> int:
        return self.stop - self.start


@dataclass
class Skip:
    """Something not used, and why. ``frames`` = [start, stop) at the output rate, if any."""

    source: str
    reason: str
    frames: tuple[int, int] | None = None


def _fit_box(cropper: FaceCropper, landmarks: np.ndarray) -> CropBox:
    """FaceCropper.fit's rule (median of per-frame boxes) on already-detected landmarks."""
    boxes = np.array([[b.cx, b.cy, b.size] for b in map(cropper.box_for, landmarks)])
    cx, cy, size = np.median(boxes, axis=0)
    return CropBox(float(cx), float(cy), float(size))


def _inside_fraction(box: CropBox, width: int, height: int) -> float:
    """Fraction of the box's area that lies inside the frame (the rest is edge padding)."""
    x0, y0, side = box.x0, box.y0, box.side
    iw = max(0, min(width, x0 + side) - max(0, x0))
    ih = max(0, min(height, y0 + side) - max(0, y0))
    return iw * ih / float(side * side)


_NO_FRAME = np.zeros((1, 1, 3), np.uint8)  # face_left_box ignores the frame given landmarks


def plan_segments(
    landmarks: np.ndarray,
    frame_size: tuple[int, int],
    cropper: FaceCropper,
    source: str = "",
    min_frames: int = 25,
    max_gap: int = 3,
    min_box: float = 96.0,
    min_inside: float = 0.75,
) -> tuple[list[SegmentPlan], list[Skip], np.ndarray]:
    """Cut a clip into fixed-crop segments from its per-frame landmarks (no pixels needed).

    Args:
        landmarks: N×68×2 source-pixel landmarks, NaN rows where no face was found.
        frame_size: (width, height) of the source frames.
        cropper: supplies box_for / face_left_box (the codec's own crop rules).
        source: clip name for the skip log.
        min_frames: shorter segments are dropped (≈ 1 s at 25 fps).
        max_gap: missing stretches up to this many frames are interpolated over.
        min_box: boxes smaller than this (source px) are skipped: upscaling a ~50-px face
            to 256 teaches the generator blur.
        min_inside: boxes with less of their area inside the frame are skipped: the rest
            would be edge-replicated smear.

    Returns:
        (plans, skips, filled landmarks N×68×2 with short gaps interpolated).
    """
    filled = _interpolate_gaps(np.asarray(landmarks, np.float64), max_gap)
    n = len(filled)
    found = np.all(np.isfinite(filled.reshape(n, -1)), axis=1) if n else np.zeros(0, bool)
    plans: list[SegmentPlan] = []
    skips: list[Skip] = []
    width, height = frame_size
    i = 0
    while i < n:
        if not found[i]:
            j = i
            while j < n and not found[j]:
                j += 1
            skips.append(Skip(source, f"no face detected ({j - i} frames)", (i, j)))
            i = j
            continue
        run_end = i
        while run_end < n and found[run_end]:
            run_end += 1
        while i < run_end:
            box = _fit_box(cropper, filled[i : min(run_end, i + cropper.fit_frames)])
            j = i + 1
            while j < run_end and not cropper.face_left_box(_NO_FRAME, box, filled[j]):
                j += 1
            plan = SegmentPlan(i, j, box)
            inside = _inside_fraction(box, width, height)
            if plan.frames < min_frames:
                skips.append(Skip(source, f"segment too short ({plan.frames} < {min_frames} frames)",
                                  (i, j)))
            elif box.size < min_box:
                skips.append(Skip(source, f"face too small (crop box {box.size:.0f} px < "
                                          f"{min_box:.0f} px)", (i, j)))
            elif inside < min_inside:
                skips.append(Skip(source, f"crop box mostly outside the frame ({inside:.0%} inside "
                                          f"< {min_inside:.0%})", (i, j)))
            else:
                plans.append(plan)
            i = j
    return plans, skips, filled


def plan_dev_segment(
    landmarks: np.ndarray, cropper: FaceCropper, source: str = "", num_frames: int = DEV_FRAMES
) -> tuple[list[SegmentPlan], list[Skip]]:
    """The benchmark protocol: one segment of the first ``num_frames`` frames, the box fixed
    from the first FIT_FRAMES frames (median, as codec.api.compress), however the face moves.
    """
    n = min(len(landmarks), num_frames)
    head = np.asarray(landmarks[:FIT_FRAMES], np.float64)
    head = head[np.all(np.isfinite(head.reshape(len(head), -1)), axis=1)]
    if len(head) == 0:
        return [], [Skip(source, f"no face in the first {FIT_FRAMES} frames", (0, n))]
    return [SegmentPlan(0, n, _fit_box(cropper, head))], []


def landmarks_to_crop(landmarks: np.ndarray, box: CropBox, size: int) -> np.ndarray:
    """Source-pixel landmarks (…×2) → pixels of ``box.crop(frame, size)``.

    Uses the integer window crop() cuts and cv2.resize's pixel-centre mapping
    (u + 0.5 = (x − x0 + 0.5) · size / side), so a point stays on the same feature.
    """
    scale = size / box.side
    origin = np.array([box.x0, box.y0], np.float64)
    return (np.asarray(landmarks, np.float64) - origin + 0.5) * scale - 0.5


# ------------------------------------------------------------------------------ jobs


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


# ------------------------------------------------------------------------------ building


@dataclass
class BuildConfig:
    """Options of one build (see ``--help``)."""

    out: str
    split: str = "train"
    size: int = 256
    fps: float = 25.0
    crf: int = 22
    preset: str = "slow"
    max_mb: float = 35.0
    also_size: int | None = None  # e.g. 512: also written where the source has the pixels
    native_fraction: float = 0.9  # box side ≥ this × also_size to count as "has the pixels"
    min_seconds: float = 1.0
    max_gap: int = 3
    min_box: float = 96.0
    min_inside: float = 0.75
    detect_every: int = 1
    workers: int = 1
    limit: int | None = None

    def x264_options(self) -> dict[str, str]:
        # one thread per encoder: clips are processed in parallel instead. No B-frame
        # limits or zerolatency: these files are only decoded whole, so every tool that
        # saves bytes is welcome.
        return {"preset": self.preset, "threads": "1"}


@dataclass
class ClipResult:
    """What processing one clip produced (picklable, returned from worker processes)."""

    source: str
    segments: list[dict[str, Any]] = field(default_factory=list)
    skips: list[dict[str, Any]] = field(default_factory=list)
    frames_read: int = 0
    seconds: float = 0.0
    full_searches: int = 0


def _slug(source: str) -> str:
    stem = os.path.splitext(source)[0] if os.path.splitext(source)[1].lower() in VIDEO_SUFFIXES \
        else source
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem.replace("/", "__")).strip("_") or "clip"


def _detect_all(path: str, cfg: BuildConfig, cropper: FaceCropper) -> tuple[np.ndarray, tuple[int, int], int]:
    """Pass 1: landmarks of every output frame. Returns (N×68×2 NaN-padded, (w, h), full searches)."""
    from codec.media import read_frames  # lazy: PyAV

    max_frames = DEV_FRAMES if cfg.split == "dev" else None
    tracker = LandmarkTracker(cropper)
    rows: list[np.ndarray] = []
    size = (0, 0)
    for item in read_frames(path, fps=cfg.fps, max_frames=max_frames):
        size = (item.image.shape[1], item.image.shape[0])
        if cfg.detect_every > 1 and item.index % cfg.detect_every:
            rows.append(np.full((68, 2), np.nan))  # filled by interpolation below
            continue
        lm = tracker(item.image)
        rows.append(lm if lm is not None else np.full((68, 2), np.nan))
    landmarks = np.array(rows, np.float64).reshape(-1, 68, 2)
    if cfg.detect_every > 1:
        # only the skipped in-between frames are filled here; real misses stay NaN unless short
        landmarks = _interpolate_gaps(landmarks, cfg.detect_every - 1)
    return landmarks, size, tracker.full_searches


def _write_segment_files(
    job: ClipJob, cfg: BuildConfig, plans: Sequence[SegmentPlan], filled: np.ndarray,
    detected: np.ndarray,
) -> list[dict[str, Any]]:
    """Pass 2: decode again, crop each planned range, write .mp4 + .npz per segment."""
    from codec.media import VideoWriter, read_frames  # lazy: PyAV

    seg_dir = Path(cfg.out) / "segments"
    seg_dir.mkdir(parents=True, exist_ok=True)
    slug = _slug(job.source)
    records: list[dict[str, Any]] = []
    pending = list(plans)
    writers: list[Any] = []
    current: SegmentPlan | None = None
    extra_ok = False
    last_stop = max((p.stop for p in plans), default=0)

    def open_plan(k: int, plan: SegmentPlan) -> None:
        nonlocal extra_ok
        name = f"{slug}__{k:02d}"
        main = VideoWriter(seg_dir / f"{name}.mp4", cfg.fps, (cfg.size, cfg.size), crf=cfg.crf,
                           options=cfg.x264_options())
        writers[:] = [main]
        extra_ok = cfg.also_size is not None and plan.box.size >= cfg.native_fraction * cfg.also_size
        if extra_ok:
            writers.append(VideoWriter(seg_dir / f"{name}_{cfg.also_size}.mp4", cfg.fps,
                                       (cfg.also_size, cfg.also_size), crf=cfg.crf,
                                       options=cfg.x264_options()))
        lm = landmarks_to_crop(filled[plan.start : plan.stop], plan.box, cfg.size)
        pose = head_poses(lm, cfg.size)
        np.savez_compressed(
            seg_dir / f"{name}.npz",
            pose=pose.astype(np.float32),
            landmarks=lm.astype(np.float16),
            detected=detected[plan.start : plan.stop].astype(bool),
        )
        files_extra = {str(cfg.also_size): f"segments/{name}_{cfg.also_size}.mp4"} if extra_ok else {}
        records.append({
            "name": name,
            "file": f"segments/{name}.mp4",
            "labels": f"segments/{name}.npz",
            "files_extra": files_extra,
            "identity": job.identity,
            "source": job.source,
            "repo": job.repo,
            "license": job.license,
            "split": cfg.split,
            "start_frame": plan.start,
            "frames": plan.frames,
            "fps": cfg.fps,
            "size": cfg.size,
            "box": [round(plan.box.cx, 2), round(plan.box.cy, 2), round(plan.box.size, 2)],
        })

    k = 0
    try:
        for item in read_frames(job.path, fps=cfg.fps, max_frames=last_stop or 1):
            if current is not None and item.index >= current.stop:
                for w in writers:
                    w.close()
                writers.clear()
                current = None
            if current is None and pending and item.index == pending[0].start:
                current = pending.pop(0)
                open_plan(k, current)
                k += 1
            if current is not None:
                writers[0].write(current.box.crop(item.image, cfg.size))
                if len(writers) > 1:
                    writers[1].write(current.box.crop(item.image, cfg.also_size or cfg.size))
    finally:
        for w in writers:
            w.close()
    for rec in records:  # the decoder may end early (a clip shorter on 2nd read): trust the file
        rec["bytes"] = (seg_dir / Path(rec["file"]).name).stat().st_size
        rec["bytes_extra"] = {k: (seg_dir / Path(v).name).stat().st_size
                              for k, v in rec["files_extra"].items()}
    return records


def process_clip(job: ClipJob, cfg: BuildConfig) -> ClipResult:
    """Landmarks → plan → crops + labels for one clip. Never raises for a bad clip: the
    failure becomes a logged skip."""
    started = time.perf_counter()
    result = ClipResult(job.source)
    cropper = FaceCropper(out_size=cfg.size, fit_frames=FIT_FRAMES)
    try:
        landmarks, frame_size, result.full_searches = _detect_all(job.path, cfg, cropper)
        result.frames_read = len(landmarks)
        detected = np.all(np.isfinite(landmarks.reshape(len(landmarks), -1)), axis=1)
        if len(landmarks) == 0:
            raise MediaError(f"{job.source}: no frames")
        if cfg.split == "dev":
            plans, skips = plan_dev_segment(landmarks, cropper, job.source)
            # protocol: every frame stays, so carry landmarks over misses (nearest) rather
            # than dropping frames; `detected` says which ones were real detections
            filled = _fill_nearest(landmarks.reshape(len(landmarks), -1)).reshape(-1, 68, 2)
        else:
            plans, skips, filled = plan_segments(
                landmarks, frame_size, cropper, job.source,
                min_frames=max(1, round(cfg.min_seconds * cfg.fps)), max_gap=cfg.max_gap,
                min_box=cfg.min_box, min_inside=cfg.min_inside,
            )
        if cfg.also_size is not None:
            for p in plans:
                if p.box.size < cfg.native_fraction * cfg.also_size:
                    skips.append(Skip(job.source, f"no {cfg.also_size}px file: crop box "
                                      f"{p.box.size:.0f} px < {cfg.native_fraction:.0%} of "
                                      f"{cfg.also_size}", (p.start, p.stop)))
        result.skips = [asdict(s) for s in skips]
        if plans:
            result.segments = _write_segment_files(job, cfg, plans, filled, detected)
    except (MediaError, FaceNotFoundError, OSError, ValueError) as exc:
        result.skips.append(asdict(Skip(job.source, f"{type(exc).__name__}: {exc}")))
    result.seconds = time.perf_counter() - started
    return result


def _process_star(args: tuple[ClipJob, BuildConfig]) -> ClipResult:
    return process_clip(*args)


def _reencode(path: Path, crf: int, preset: str) -> None:
    """Re-code one segment at another CRF (only used when the set exceeds --max-mb)."""
    from codec.media import frames_to_video, read_frames

    tmp = path.with_name(path.stem + ".tmp.mp4")
    frames_to_video(tmp, (f.image for f in read_frames(path, fps=None)), fps=25.0, crf=crf,
                    options={"preset": preset, "threads": "1"})
    os.replace(tmp, path)


def build_dataset(jobs: Sequence[ClipJob], cfg: BuildConfig, log: Any = sys.stdout) -> dict[str, Any]:
    """Process ``jobs`` into ``cfg.out``; writes index.json and summary.json, returns the index.

    Raises:
        ValueError: a job's split differs from ``cfg.split`` (train/dev never mix).
    """
    for job in jobs:
        if job.split != cfg.split:
            raise ValueError(f"{job.source}: split {job.split!r} in a {cfg.split!r} build")
    started = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    # longest first, so parallel workers end together
    ordered = sorted(jobs, key=lambda j: -j.duration_s)[: cfg.limit]
    results: list[ClipResult] = []
    from codec.progress import ProgressBar

    # The per-clip lines go to ``log`` (kept in files and CI); the bar only to a terminal.
    with ProgressBar(len(ordered), f"{cfg.split} clips", unit="clip") as bar:
        if cfg.workers > 1:
            with ProcessPoolExecutor(cfg.workers) as pool:
                for res in pool.map(_process_star, [(j, cfg) for j in ordered]):
                    results.append(res)
                    _log_clip(res, log)
                    bar.update()
        else:
            for job in ordered:
                res = process_clip(job, cfg)
                results.append(res)
                _log_clip(res, log)
                bar.update()
    results.sort(key=lambda r: r.source)
    segments = [s for r in results for s in r.segments]
    skips = [s for r in results for s in r.skips]

    # size budget: re-code at a higher CRF until the set fits (generation loss is small
    # next to the crf step); only the primary size counts
    crf = cfg.crf
    total = sum(s["bytes"] for s in segments)
    while cfg.max_mb and total > cfg.max_mb * 1e6 and crf < 40:
        crf += 2
        print(f"  {total / 1e6:.1f} MB > {cfg.max_mb} MB: re-encoding at crf {crf}", file=log)
        for s in segments:
            _reencode(out / s["file"], crf, cfg.preset)
            s["bytes"] = (out / s["file"]).stat().st_size
        total = sum(s["bytes"] for s in segments)

    identities = sorted({s["identity"] for s in segments})
    frames = sum(s["frames"] for s in segments)
    summary = {
        "split": cfg.split,
        "size": cfg.size,
        "fps": cfg.fps,
        "clips": len(jobs) if cfg.limit is None else len(ordered),
        "clips_used": len({s["source"] for s in segments}),
        "segments": len(segments),
        "identities": len(identities),
        "frames": frames,
        "seconds": round(frames / cfg.fps, 2),
        "bytes": total,
        "bytes_per_frame": round(total / max(1, frames), 1),
        "bytes_extra": {str(cfg.also_size): sum(sum(s.get("bytes_extra", {}).values())
                                                for s in segments)} if cfg.also_size else {},
        "kbit_per_s": round(total * 8 / max(1e-9, frames / cfg.fps) / 1000, 1),
        "frames_read": sum(r.frames_read for r in results),
        "skips": len(skips),
        "skip_reasons": _count_reasons(skips),
        "x264": {"codec": "libx264", "pix_fmt": "yuv420p", "crf": crf, **cfg.x264_options()},
        "build_seconds": round(time.perf_counter() - started, 1),
        "clip_seconds_sum": round(sum(r.seconds for r in results), 1),
        "workers": cfg.workers,
        "detect_every": cfg.detect_every,
        "full_frame_searches": sum(r.full_searches for r in results),
    }
    index = {
        "format": "facecodec-face-segments",
        "version": INDEX_VERSION,
        "split": cfg.split,
        "size": cfg.size,
        "fps": cfg.fps,
        "pose_convention": ("degrees; R = Rz(roll)·Ry(yaw)·Rx(pitch), x right, y down, z away "
                            "from camera; yaw>0 nose to image left, pitch>0 nose down, roll>0 "
                            "head tilted clockwise on screen"),
        "landmarks": f"68 dlib points, x/y in pixels of the {cfg.size}px crop, float16",
        "identities": identities,
        "segments": segments,
        "skips": skips,
        "summary": summary,
    }
    (out / "index.json").write_text(json.dumps(index, indent=1, ensure_ascii=False), encoding="utf-8")
    (out / "summary.json").write_text(
        json.dumps({**summary, "skip_list": skips}, indent=1, ensure_ascii=False), encoding="utf-8")
    _print_summary(summary, skips, log)
    return index


def _count_reasons(skips: Sequence[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in skips:
        key = re.sub(r"\(.*?\)", "(…)", s["reason"])  # group "(12 frames)" variants
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _log_clip(res: ClipResult, log: Any) -> None:
    n = sum(s["frames"] for s in res.segments)
    print(f"  {res.source}: {res.frames_read} frames read, {len(res.segments)} segment(s), "
          f"{n} frames kept, {len(res.skips)} skip(s), {res.seconds:.1f} s", file=log, flush=True)
    for s in res.skips:
        print(f"    skip {s['frames'] or ''} {s['reason']}", file=log)


def _print_summary(summary: dict[str, Any], skips: Sequence[dict[str, Any]], log: Any) -> None:
    rows = [
        ("split", summary["split"]), ("size", f"{summary['size']} px"),
        ("clips used / given", f"{summary['clips_used']} / {summary['clips']}"),
        ("identities", summary["identities"]), ("segments", summary["segments"]),
        ("frames", summary["frames"]), ("seconds", summary["seconds"]),
        ("bytes", f"{summary['bytes']} ({summary['bytes'] / 1e6:.2f} MB, "
                  f"{summary['bytes_per_frame']} B/frame, {summary['kbit_per_s']} kbit/s)"),
        ("x264", " ".join(f"{k}={v}" for k, v in summary["x264"].items())),
        ("skips", summary["skips"]), ("build time", f"{summary['build_seconds']} s"),
    ]
    width = max(len(k) for k, _ in rows)
    print("-" * 60, file=log)
    for k, v in rows:
        print(f"{k:<{width}}  {v}", file=log)
    for reason, count in summary["skip_reasons"].items():
        print(f"{'':<{width}}  {count:4d} × {reason}", file=log)
    print("-" * 60, file=log, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m codec.training.dataset_builder",
                                description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", help="MANIFEST.tsv (paths relative to its folder)")
    src.add_argument("--folder", help="a plain folder of videos, searched recursively")
    p.add_argument("--split", default="train", choices=["train", "dev"])
    p.add_argument("--out", required=True, help="output folder (e.g. cache/train256)")
    p.add_argument("--size", type=int, default=256, help="crop side in pixels")
    p.add_argument("--also-size", type=int, default=None,
                   help="also write this size (e.g. 512) where the crop box has ≥ 0.9× its pixels")
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--crf", type=int, default=22, help="x264 CRF of the segment files")
    p.add_argument("--preset", default="slow", help="x264 preset")
    p.add_argument("--max-mb", type=float, default=35.0,
                   help="re-encode at a higher CRF until the set fits (0 = no limit)")
    p.add_argument("--min-seconds", type=float, default=1.0, help="drop shorter segments")
    p.add_argument("--min-inside", type=float, default=0.75,
                   help="skip crops with less of their area inside the frame (rest = edge smear)")
    p.add_argument("--detect-every", type=int, default=1,
                   help="run the face detector on every N-th frame, interpolate between")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--limit", type=int, default=None, help="only the first N (longest) clips")
    args = p.parse_args(argv)
    if args.folder:
        jobs = jobs_from_folder(args.folder, args.split)
    else:
        jobs = jobs_from_manifest(args.manifest, args.split)
    if not jobs:
        print(f"no clips for split {args.split!r}", file=sys.stderr)
        return 1
    cfg = BuildConfig(out=args.out, split=args.split, size=args.size, fps=args.fps, crf=args.crf,
                      preset=args.preset, max_mb=args.max_mb, also_size=args.also_size,
                      min_seconds=args.min_seconds, min_inside=args.min_inside,
                      detect_every=max(1, args.detect_every),
                      workers=max(1, args.workers), limit=args.limit)
    print(f"building {len(jobs)} {args.split} clip(s) into {args.out} "
          f"({cfg.workers} worker(s), crf {cfg.crf}, preset {cfg.preset})", flush=True)
    build_dataset(jobs, cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
