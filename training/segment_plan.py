"""Cutting a clip into fixed-crop face segments from its per-frame landmarks.

:class:`LandmarkTracker` finds the 68 landmarks of each frame; :func:`plan_segments` (train) and
:func:`plan_dev_segment` (dev, the benchmark protocol) turn them into crop plans with the codec's
own crop rules (:class:`codec.facecrop.FaceCropper`), and log what they skip and why. No pixels
are needed once the landmarks are known.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from codec.facecrop import FIT_FRAMES, CropBox, FaceCropper, detect_landmarks

DEV_FRAMES = 250  # benchmark protocol: the first 10 s at 25 fps


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


def interpolate_gaps(landmarks: np.ndarray, max_gap: int) -> np.ndarray:
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
    filled = interpolate_gaps(np.asarray(landmarks, np.float64), max_gap)
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
    from the first FIT_FRAMES frames (median, as codec.files.compress), however the face moves.
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
