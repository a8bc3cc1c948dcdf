"""The square face crop the codec works on (VoxCeleb style: whole head, a little neck).

The sender fixes one square box per keyframe (stabilised over a few frames), crops every
frame with it and resizes to ``out_size`` (256 by default). The box is re-fitted, and a
new keyframe sent, when :meth:`FaceCropper.face_left_box` says the face has moved or
changed scale too much.

Faces come from dlib: the HOG frontal face detector and the 68-point shape predictor
shipped in the ``face-recognition-models`` package. dlib is imported lazily, so this
module imports with numpy and OpenCV alone (e.g. on a training machine).

Calibration (``FaceCropper`` defaults). The face height ``h`` is the extent of the 68
landmarks (brow to chin) measured across the eye line, i.e. after undoing head roll, so
it does not change with yaw (which shrinks the width) or roll (which inflates an
axis-aligned box). On eight already VoxCeleb-cropped 256×256 clips (CVPR2022-DaGAN
driving, first-order-model 00/04/08/10, LIA vox driving1/2/3; median over 10 frames of
the first 60) the frame side divided by ``h`` was 2.18, 1.68, 1.83, 1.84, 1.86, 1.84,
1.87, 2.02 (median 1.85), and the frame centre lay above the landmark-box centre by
0.26, 0.32, 0.24, 0.11, 0.14, 0.14, -0.06, 0.21 ``h`` (median 0.18). Hence
``scale=1.85`` and ``shift_up=0.18``: on first-order-model/10.mp4 the fitted box is
≈ the whole frame; on DaGAN driving (a looser crop) it is ≈ 0.85 of it.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from codec.errors import FaceNotFoundError

# Leading frames a crop is fitted on: the median box of several, so one bad detection
# cannot move it. Files, the dataset and the benchmarks all crop this way.
FIT_FRAMES = 5

__all__ = [
    "CropBox",
    "FaceCropper",
    "box_from_landmarks",
    "detect_landmarks",
    "face_height",
    "landmark_model_path",
]

# dlib's HOG detector scans an 80×80 window, so it misses faces smaller than ~80 px.
# Each pyramid-up step halves that (~40 px, ~20 px) at ~4× the cost per step; the
# automatic policy only pays it when the plain pass found nothing, and never lets the
# upsampled image grow beyond this long side (bounds the worst-case time).
_MAX_UPSAMPLED_SIDE = 1280
# Detections within this margin of the best detector score compete on size.
SCORE_MARGIN = 0.5


def landmark_model_path(name: str = "shape_predictor_68_face_landmarks.dat") -> str:
    """Path of a model file shipped in the ``face-recognition-models`` package.

    The package cannot be *imported* under new setuptools (it imports pkg_resources), so
    its files are located through the import system's spec instead.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise FaceNotFoundError(
            "face-recognition-models is not installed; it provides dlib's landmark model"
        )
    path = os.path.join(os.path.dirname(spec.origin), "models", name)
    if not os.path.isfile(path):
        raise FaceNotFoundError(f"dlib model file missing: {path}")
    return path


# dlib's detector and shape predictor keep scratch state inside the object: two threads using
# the shared pair at once crash the process (seen with two senders in one process). Every use
# holds this lock.
_DLIB_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _dlib_models() -> tuple[Any, Any]:
    """(detector, 68-point shape predictor), loaded once (the predictor is ~100 MB)."""
    import dlib  # lazy: heavy, and not needed to import this module

    return dlib.get_frontal_face_detector(), dlib.shape_predictor(landmark_model_path())


def _check_rgb(frame: np.ndarray) -> None:
    if not (isinstance(frame, np.ndarray) and frame.ndim == 3 and frame.shape[2] == 3):
        shape = getattr(frame, "shape", None)
        raise ValueError(f"expected an H×W×3 RGB array, got shape {shape}")
    if frame.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB, got {frame.dtype}")


def detect_landmarks(
    frame_rgb: np.ndarray, upsample: int | None = None, max_side: int = 640
) -> np.ndarray | None:
    """68 dlib landmarks of the largest confidently detected face, or None if there is none.

    Args:
        frame_rgb: H×W×3 uint8 RGB image.
        upsample: dlib pyramid-up steps for the detector. None (default) is automatic:
            try 0, and only if no face is found retry with 1, then 2, as long as the
            upsampled image's long side stays ≤ 1280 px. Trade-off: each step lets the
            detector find faces half as large (~80 → ~40 → ~20 px) but scans four times
            the pixels, so frames with a big face pay nothing and frames with no face
            pay the most.
        max_side: frames whose long side exceeds this are shrunk for *detection* only
            (speed: a 1080p frame costs ~7× a 640-px one); the landmarks are then fitted
            on the full-resolution frame, so their precision is not lost.

    Returns:
        68×2 float64 array of (x, y) in source pixels, or None.
    """
    _check_rgb(frame_rgb)
    with _DLIB_LOCK:
        return _detect_landmarks_locked(frame_rgb, upsample, max_side)


def _detect_landmarks_locked(frame_rgb: np.ndarray, upsample: int | None, max_side: int) -> np.ndarray | None:
    import dlib  # lazy

    detector, predictor = _dlib_models()
    height, width = frame_rgb.shape[:2]
    shrink = min(1.0, max_side / max(height, width))
    work = frame_rgb
    if shrink < 1.0:
        work = cv2.resize(
            frame_rgb,
            (max(1, round(width * shrink)), max(1, round(height * shrink))),
            interpolation=cv2.INTER_AREA,
        )
    work = np.ascontiguousarray(work)
    long_side = max(work.shape[:2])

    if upsample is not None:
        steps = [upsample]
    else:
        steps = [s for s in (0, 1, 2) if s == 0 or long_side * 2**s <= _MAX_UPSAMPLED_SIDE]
    rects: Any = []
    scores: Any = []
    for step in steps:
        rects, scores, _ = detector.run(work, step, 0.0)
        if len(rects) > 0:
            break
    if len(rects) == 0:
        return None

    # The largest of the confident detections: a weak false positive (e.g. a badge on a
    # shirt, score ~0.1 against ~1.3 for the face) must not win by being a pixel larger.
    confident = [r for r, score in zip(rects, scores) if score >= max(scores) - SCORE_MARGIN]
    best = max(confident, key=lambda r: r.width() * r.height())
    inv = 1.0 / shrink
    full_rect = dlib.rectangle(
        round(best.left() * inv),
        round(best.top() * inv),
        round(best.right() * inv),
        round(best.bottom() * inv),
    )
    shape = predictor(np.ascontiguousarray(frame_rgb), full_rect)
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


def fit_landmarks(frame_rgb: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """68 dlib landmarks fitted inside a given face box, without running the detector.

    A tracker passes the box the previous frame's landmarks give (see
    :func:`tracking_box`): the shape predictor alone is a small fraction of the detector's
    cost (the sender's face timings are in the call benchmark's JSON).

    Args:
        frame_rgb: H×W×3 uint8 RGB image.
        box: (left, top, right, bottom) in pixels, like dlib's detector boxes.

    Returns:
        68×2 float64 (x, y) in pixels.
    """
    import dlib  # lazy

    _check_rgb(frame_rgb)
    left, top, right, bottom = (int(round(v)) for v in box)
    with _DLIB_LOCK:
        _, predictor = _dlib_models()
        shape = predictor(np.ascontiguousarray(frame_rgb), dlib.rectangle(left, top, right, bottom))
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


def tracking_box(landmarks: np.ndarray) -> tuple[float, float, float, float]:
    """The detector-like box (left, top, right, bottom) for 68 landmarks: dlib's frontal
    detector frames the face from the jaw's sides and just above the brows to the chin,
    so the landmarks' bounding box, widened a little, puts the predictor where it was trained."""
    pts = np.asarray(landmarks, np.float64)
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    w, h = x1 - x0, y1 - y0
    return (x0 - 0.05 * w, y0 - 0.12 * h, x1 + 0.05 * w, y1 + 0.03 * h)


def face_height(landmarks: np.ndarray) -> float:
    """Brow-to-chin extent of 68 landmarks measured perpendicular to the eye line.

    Undoing the roll first keeps the measure constant when the head tilts; using the
    height rather than the width keeps it constant when the head turns (yaw).
    """
    eye_vec = landmarks[42:48].mean(axis=0) - landmarks[36:42].mean(axis=0)
    angle = float(np.arctan2(eye_vec[1], eye_vec[0]))
    # y' = -sin·x + cos·y: the coordinate along the face's own vertical axis
    along = -np.sin(angle) * landmarks[:, 0] + np.cos(angle) * landmarks[:, 1]
    return float(np.ptp(along))


@dataclass(frozen=True)
class CropBox:
    """A square crop in source pixels: centre (cx, cy) and side ``size``.

    The box may extend beyond the image; :meth:`crop` then replicates the edge pixels.
    """

    cx: float
    cy: float
    size: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.cx) and np.isfinite(self.cy) and np.isfinite(self.size)):
            raise ValueError(f"non-finite crop box {self}")
        if self.size < 1:
            raise ValueError(f"crop box side must be ≥ 1 px, got {self.size}")

    @property
    def x0(self) -> int:
        """Left column of the integer pixel window."""
        return int(round(self.cx - self.size / 2))

    @property
    def y0(self) -> int:
        """Top row of the integer pixel window."""
        return int(round(self.cy - self.size / 2))

    @property
    def side(self) -> int:
        """Side of the integer pixel window."""
        return max(1, int(round(self.size)))

    def crop(self, frame: np.ndarray, out_size: int) -> np.ndarray:
        """Cut the box out of ``frame`` and resize it.

        Args:
            frame: H×W×3 uint8 RGB.
            out_size: side of the result.

        Returns:
            out_size×out_size×3 uint8 RGB. Parts of the box outside the image are filled
            by edge replication (not black: a black border would be "content" the
            generator has to learn and the keyframe coder has to spend bits on).
        """
        _check_rgb(frame)
        if out_size < 1:
            raise ValueError(f"out_size must be ≥ 1, got {out_size}")
        height, width = frame.shape[:2]
        x0, y0, side = self.x0, self.y0, self.side
        if x0 >= 0 and y0 >= 0 and x0 + side <= width and y0 + side <= height:
            window = frame[y0 : y0 + side, x0 : x0 + side]
        else:
            # clipped index arrays = edge replication, also when the box is fully outside
            cols = np.clip(np.arange(x0, x0 + side), 0, width - 1)
            rows = np.clip(np.arange(y0, y0 + side), 0, height - 1)
            window = frame[rows[:, None], cols[None, :]]
        if side == out_size:
            return np.ascontiguousarray(window)
        # INTER_AREA averages when shrinking (no aliasing); LINEAR is smoother enlarging
        interp = cv2.INTER_AREA if side > out_size else cv2.INTER_LINEAR
        return cv2.resize(np.ascontiguousarray(window), (out_size, out_size), interpolation=interp)

    def contains(self, landmarks: np.ndarray, margin: float = 0.0) -> bool:
        """Whether all points lie inside the box shrunk by ``margin`` × size on each side.

        Args:
            landmarks: N×2 (x, y) in source pixels.
            margin: fraction of the box side kept free at each edge (0 = the box itself;
                negative values allow points slightly outside).
        """
        pts = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
        half = self.size / 2 - margin * self.size
        return bool(
            np.all(np.abs(pts[:, 0] - self.cx) <= half)
            and np.all(np.abs(pts[:, 1] - self.cy) <= half)
        )

    def scaled(self, factor: float) -> CropBox:
        """The same box in an image resized by ``factor``."""
        return CropBox(self.cx * factor, self.cy * factor, self.size * factor)


def box_from_landmarks(
    landmarks: np.ndarray, scale: float = 1.85, shift_up: float = 0.18
) -> CropBox:
    """VoxCeleb-style head box from 68 landmarks (see the module docstring).

    Centre = landmark bounding-box centre moved up by ``shift_up`` × face height (the
    landmarks start at the brows; the hair is above them); side = ``scale`` × face height.
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (68, 2):
        raise ValueError(f"expected 68×2 landmarks, got {pts.shape}")
    face_h = face_height(pts)
    x_min, y_min = pts.min(axis=0)
    x_max, y_max = pts.max(axis=0)
    return CropBox(
        cx=float((x_min + x_max) / 2),
        cy=float((y_min + y_max) / 2 - shift_up * face_h),
        size=float(max(1.0, scale * face_h)),
    )


class FaceCropper:
    """Fits and checks the per-keyframe square head crop.

    Args:
        out_size: side of the crops the codec works on (256 or 512).
        scale: box side / face height (calibrated, see module docstring).
        shift_up: box centre above the landmark-box centre, in face heights.
        fit_frames: how many leading frames :meth:`fit` detects on.
        max_shift: :meth:`face_left_box` fires when the face-box centre moved more than
            this fraction of the box side. Motion inside the crop is what the motion
            packets code, so this is loose: a shift of 0.2 side ≈ 0.37 face heights,
            about where the jaw or brow starts to leave a 1.85× box.
        max_scale_change: ... or when the face size changed by more than this factor
            (0.25: outside [1/1.25, 1.25]; the generator's keypoints cope with less).
        upsample: passed to :func:`detect_landmarks` (None = automatic).
    """

    def __init__(
        self,
        out_size: int = 256,
        scale: float = 1.85,
        shift_up: float = 0.18,
        fit_frames: int = FIT_FRAMES,
        max_shift: float = 0.2,
        max_scale_change: float = 0.25,
        upsample: int | None = None,
    ) -> None:
        if out_size < 16:
            raise ValueError(f"out_size too small: {out_size}")
        if scale <= 0 or fit_frames < 1 or max_shift <= 0 or max_scale_change <= 0:
            raise ValueError("scale, fit_frames, max_shift and max_scale_change must be > 0")
        self.out_size = out_size
        self.scale = scale
        self.shift_up = shift_up
        self.fit_frames = fit_frames
        self.max_shift = max_shift
        self.max_scale_change = max_scale_change
        self.upsample = upsample

    def box_for(self, landmarks: np.ndarray) -> CropBox:
        """The crop box one frame's 68 landmarks give (no stabilisation)."""
        return box_from_landmarks(landmarks, self.scale, self.shift_up)

    def fit(self, frames: Sequence[np.ndarray]) -> CropBox:
        """Stabilised crop box: the per-coordinate median over the first frames' boxes.

        Args:
            frames: H×W×3 uint8 RGB frames of one shot; the first ``fit_frames`` are used.

        Raises:
            FaceNotFoundError: no face in any of those frames.
        """
        used = list(frames[: self.fit_frames])
        if not used:
            raise FaceNotFoundError("no frames given to fit the face crop on")
        boxes = []
        for frame in used:
            landmarks = detect_landmarks(frame, upsample=self.upsample)
            if landmarks is not None:
                boxes.append(self.box_for(landmarks))
        if not boxes:
            h, w = used[0].shape[:2]
            raise FaceNotFoundError(
                f"no face found in the first {len(used)} frame(s) ({w}×{h}); "
                "the face may be too small (< ~20 px), too turned, or absent"
            )
        # median, not mean: one bad detection (e.g. a blink or a false positive) is ignored
        arr = np.array([[b.cx, b.cy, b.size] for b in boxes])
        cx, cy, size = np.median(arr, axis=0)
        return CropBox(float(cx), float(cy), float(size))

    def crop(self, frame: np.ndarray, box: CropBox) -> np.ndarray:
        """``box.crop(frame, self.out_size)``: out_size×out_size×3 uint8."""
        return box.crop(frame, self.out_size)

    def face_left_box(
        self, frame: np.ndarray, box: CropBox, landmarks: np.ndarray | None = None
    ) -> bool:
        """Whether the face has drifted out of ``box`` enough to need a new keyframe.

        True when no face is found, when the box the current landmarks give has its
        centre more than ``max_shift`` × box side away, when its size differs by more
        than the ``max_scale_change`` factor, or when any landmark falls outside the box.

        Args:
            frame: H×W×3 uint8 RGB source frame (ignored if ``landmarks`` is given).
            box: the crop box in use.
            landmarks: 68×2 landmarks already detected on ``frame`` (saves a detection).
        """
        if landmarks is None:
            landmarks = detect_landmarks(frame, upsample=self.upsample)
        if landmarks is None:
            return True
        current = self.box_for(landmarks)
        shift = float(np.hypot(current.cx - box.cx, current.cy - box.cy))
        ratio = current.size / box.size
        limit = 1.0 + self.max_scale_change
        return (
            shift > self.max_shift * box.size
            or not (1.0 / limit <= ratio <= limit)
            or not box.contains(landmarks)
        )
