"""The landmark family (the default): geometry from dlib's 68 landmarks, an analytic warp.

Sender, per frame: 68 landmarks on the crop (the detector on every crop; the shape
predictor in the last landmarks' box when the detector misses) → a
weak-perspective pose against the mean 3D face (yaw, pitch, roll, t_x, t_y, ln s) → the
expression offsets in the head frame, as N coefficients of the expression basis.

Keyframe: its 68 landmarks travel in the keyframe packet (``keyframe_info``, 273 bytes),
so the receiver needs no face detector and holds exactly the sender's points. From them
it keeps the canonical 3D keypoints x_c = mean face + the keyframe's own offsets.

Receiver, per frame: x_d = R_d·(x_c + δ_d) + t_d with δ_d = B·(c_d − c_k), projected
(weak perspective). The mesh over x_c carries extra points the landmarks lack: a
forehead row and a ring around the head that move rigidly with it (hair follows the
head), and a frame of fixed points around the crop (the background stays put). The
keyframe is warped piecewise-affinely over that mesh, drawn back to front
(:class:`codec.warp.MeshWarp`), so a head turn folds the far cheek under the near one
instead of tearing it.
"""

from __future__ import annotations

import copy
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    import torch

from codec.errors import BitstreamError
from codec.face3d import (
    NUM_LANDMARKS,
    FaceModel,
    Pose,
    expression_offsets,
    fit_pose,
    frame_to_unit,
    project,
    rotation_matrix,
    unit_to_frame,
)
from codec.face_masks import landmark_masks
from codec.families.base import (
    NUM_POSE_VALUES,
    ModelFamily,
    MotionLayout,
    MotionTracker,
    PatchCandidate,
    TalkingHeadModel,
    ViewControl,
)
from codec.reference_patches import (
    REGION_BY_ID,
    REGIONS,
    Reference,
    ReferenceSet,
    blend_references,
    openness,
    patch_box,
)
from codec.warp import MeshWarp, delaunay_triangles

log = logging.getLogger(__name__)

DEFAULT_COEFFICIENTS = 12

# Keyframe info: one byte (68), then 68 × (x, y) int16 LE in 1/8 pixel of the crop.
_INFO_SCALE = 8.0
_INFO_STRUCT = struct.Struct("<B136h")
KEYFRAME_INFO_BYTES = _INFO_STRUCT.size


def pack_keyframe_info(landmarks: np.ndarray) -> bytes:
    """68×2 crop-pixel landmarks → 273 bytes (1/8 px; clamped to ±4095 px)."""
    values = np.clip(np.rint(np.asarray(landmarks, np.float64).reshape(-1) * _INFO_SCALE),
                     -32768, 32767).astype(np.int64)
    return _INFO_STRUCT.pack(NUM_LANDMARKS, *values.tolist())


def unpack_keyframe_info(data: bytes) -> np.ndarray:
    """Inverse of :func:`pack_keyframe_info`; BitstreamError when it is not 68 points."""
    if len(data) != _INFO_STRUCT.size:
        raise BitstreamError(f"landmark keyframe info needs {_INFO_STRUCT.size} bytes, got {len(data)}")
    count, *values = _INFO_STRUCT.unpack(data)
    if count != NUM_LANDMARKS:
        raise BitstreamError(f"landmark keyframe info holds {count} points, expected {NUM_LANDMARKS}")
    return np.array(values, np.float64).reshape(NUM_LANDMARKS, 2) / _INFO_SCALE


def _checked_pose(unit: np.ndarray, face: FaceModel) -> tuple[Pose, np.ndarray]:
    """(pose, head-frame offsets) of normalised landmarks; ValueError when they are not a
    plausible face (non-finite, collapsed, or turned so far the fit is singular)."""
    if not np.all(np.isfinite(unit)) or min(np.ptp(unit[:, 0]), np.ptp(unit[:, 1])) < 0.02:
        raise ValueError("landmarks are not finite or collapse to a point or a line")
    try:
        pose = fit_pose(unit, face.mean_shape)
        if not (np.isfinite(pose.scale) and pose.scale > 1e-3):
            raise ValueError(f"landmarks give a degenerate scale {pose.scale}")
        offsets = expression_offsets(unit, face.mean_shape, pose)
    except np.linalg.LinAlgError as error:
        raise ValueError(f"landmarks give a singular pose fit: {error}") from error
    if not np.all(np.isfinite(offsets)):
        raise ValueError("landmarks give non-finite expression offsets")
    return pose, offsets


def _motion_vector(pose: Pose, coefficients: np.ndarray) -> np.ndarray:
    """The family's motion vector: [yaw, pitch, roll, t_x, t_y, ln s, c_0 … c_{N-1}], float32."""
    return np.concatenate([pose.angles, pose.translation, [np.log(pose.scale)],
                           coefficients]).astype(np.float32)


def motion_from_landmarks(landmarks_px: np.ndarray, size: int | tuple[int, int], face: FaceModel) -> np.ndarray:
    """68×2 landmarks in the pixels of a size×size crop (or a (width, height) frame) → the
    motion vector (:func:`_motion_vector`), in resolution-free units
    (:func:`codec.face3d.frame_to_unit`); all NaN when the landmarks are not a plausible
    face (the coder then holds)."""
    width, height = (size, size) if np.isscalar(size) else size
    try:
        pose, offsets = _checked_pose(frame_to_unit(landmarks_px, width, height), face)
    except ValueError:
        return np.full(NUM_POSE_VALUES + face.num_coefficients, np.nan, np.float32)
    return _motion_vector(pose, face.coefficients(offsets))


# Whole frames: the landmarks are found on the face's box (codec.facecrop.box_from_landmarks,
# the crop's own framing) resampled to this side, as on a 256-px crop; the box is held while
# its centre stays within DETECT_BOX_SHIFT of its side from the face's and the face's size
# within a factor DETECT_BOX_SCALE.
DETECT_SIDE = 256
# How a whole frame's points are found. "box" (shipped): on the held box resampled to
# DETECT_SIDE px. "frame": as on a crop and as the AKD metric finds them: the detector on the
# whole picture (shrunk to 640 px), the shape predictor on its own pixels, no held box;
# "native": the detector on that, the predictor on the box's own pixels. Measured on the 11
# dev clips' whole frames (benchmarks.akd_sources, q3, one keyframe): the tracker's points
# were 1.46 ("box") / 1.19 ("native") / 0 ("frame") px from the metric's on the real frames,
# and the rebuilt frames' AKD 2.34 / 2.30 / 2.16 px at 1.34 / 1.31 / 1.32 kbit/s of motion
# (DETECT_SIDE 512 with "box": 2.39 px; the detector on the box's own pixels clipped from the
# frame, shrunk as the frame is for it: 1.26 px off, 2.43 px): dlib's points move with the
# detector's box they start from and the pixels they are fitted on, and the rebuilt frame is
# scored by dlib on the whole frame. Cost: 20-30 ms a frame against 10-18 ms on the box (one
# shared 2-core CPU, 100 frames of 1280×720, 512×512 and 850×680 clips), and in the demo's
# one-process call at 640×480 the sender took 43.6 ms a frame instead of 22 (frames queued,
# latency 0.55 s): "frame" does not fit a call on two cores, so the box stays the default.
DETECT_FIT = "box"
DETECT_BOX_SHIFT = 0.1
DETECT_BOX_SCALE = 1.15


class LandmarkTracker(MotionTracker):
    """Per-stream landmark tracking on the sender's crops.

    The detector runs on every crop (~7 ms at 256 px): the shape predictor fed with the box
    of the previous landmarks alone drifts (measured on the dev crops: 2–3 px on most
    clips, 24 px on one, against fresh detections). When the detector misses (a strong
    turn, a hand), the predictor runs in the last landmarks' box, so a face it briefly
    loses does not stop the motion.
    """

    def __init__(self, model: LandmarkModel) -> None:
        self.model = model
        self._last: np.ndarray | None = None  # landmarks of the last crop (crop pixels)
        # Large pictures (whole frames): the face box the landmarks are found in, held still
        # while the face stays in it (_box_holds), so a still face is seen on the same pixels.
        self._box = None

    def landmarks(self, image: np.ndarray) -> np.ndarray | None:
        """68×2 landmarks of one crop (or whole frame), or None when no face is there."""
        from codec.facecrop import detect_landmarks, fit_landmarks, tracking_box

        if self.model.whole_frame or min(image.shape[:2]) > 2 * self.model.refiner_size:
            found = self._detect_in_frame(image)
        else:
            found = detect_landmarks(image, upsample=0 if image.shape[0] >= 200 else 1)
        self.face_seen = found is not None
        if found is None and self._last is not None:
            found = fit_landmarks(image, tracking_box(self._last))
        self._last = found
        return found

    def _box_holds(self, landmarks: np.ndarray) -> bool:
        """Whether the held face box still frames these landmarks the way a crop would: its
        centre within DETECT_BOX_SHIFT of a box fitted to them, its size within
        DETECT_BOX_SCALE, every landmark inside it."""
        from codec.facecrop import box_from_landmarks

        box, current = self._box, box_from_landmarks(landmarks)
        ratio = current.size / box.size
        return (float(np.hypot(current.cx - box.cx, current.cy - box.cy)) <= DETECT_BOX_SHIFT * box.size
                and 1.0 / DETECT_BOX_SCALE <= ratio <= DETECT_BOX_SCALE and box.contains(landmarks, 0.02))

    def _detect_in_box(self, image: np.ndarray) -> np.ndarray | None:
        """Landmarks found in the held face box resampled to DETECT_SIDE px (what a 256-px
        crop's tracker sees), in the picture's pixels."""
        from codec.facecrop import detect_landmarks

        box = self._box
        if DETECT_FIT == "native" and box.side > DETECT_SIDE:
            # detect_landmarks shrinks the window to DETECT_SIDE for the detector (INTER_AREA,
            # as box.crop does) and fits the points on the window itself.
            found = detect_landmarks(box.crop(image, box.side), upsample=0, max_side=DETECT_SIDE)
            return None if found is None else np.array([box.x0, box.y0]) + found
        found = detect_landmarks(box.crop(image, DETECT_SIDE), upsample=0)
        if found is None:
            return None
        # cv2.resize maps pixel centres: source = (crop + 0.5) · side / DETECT_SIDE − 0.5.
        return np.array([box.x0, box.y0]) + (found + 0.5) * (box.side / DETECT_SIDE) - 0.5

    def _detect_in_frame(self, image: np.ndarray) -> np.ndarray | None:
        """Landmarks in a large picture (a whole camera frame), as DETECT_FIT says. With
        "box" / "native" they are found on the face's box resampled to DETECT_SIDE px, like a
        256-px crop's: the same pixels per face at every picture size; the box is held still
        while the face stays in it (re-detecting on a window that follows the last landmarks
        fed their jitter back into the next detection: +5 % motion bits on the dev clips),
        and the whole frame (shrunk to 640 px) is searched when there is no box yet or the
        face left it."""
        from codec.facecrop import box_from_landmarks, detect_landmarks

        if DETECT_FIT == "frame":
            # As a crop's tracker and the AKD metric find them (no upsampling: a frame where
            # the detector misses falls back to the predictor in the last landmarks' box).
            return detect_landmarks(image, upsample=0, max_side=640)
        if self._box is not None and self._last is not None and not self._box_holds(self._last):
            self._box = box_from_landmarks(self._last)
        if self._box is not None:
            found = self._detect_in_box(image)
            if found is not None:
                return found
        whole = detect_landmarks(image, max_side=640)
        if whole is None:
            return None
        self._box = box_from_landmarks(whole)
        found = self._detect_in_box(image)
        return whole if found is None else found

    def motion(self, image: np.ndarray) -> np.ndarray:
        self._check(image)
        landmarks = self.landmarks(image)
        if landmarks is None:
            return np.full(self.model.layout.vector_length, np.nan, np.float32)
        return motion_from_landmarks(landmarks, self.model.frame_size, self.model.face)

    def keyframe_info(self, image: np.ndarray) -> bytes:
        landmarks = self._last
        if landmarks is None:
            landmarks = self.landmarks(image)
        if landmarks is None:
            # No face in the keyframe: the mean face where a centred crop puts it, so the
            # receiver still holds a valid (if imprecise) mesh; the sender switches to
            # H.264 when the face stays away.
            landmarks = self.model.default_landmarks()
        return pack_keyframe_info(landmarks)

    def _check(self, image: np.ndarray) -> None:
        width, height = self.model.frame_size
        if not (isinstance(image, np.ndarray) and image.shape == (height, width, 3) and image.dtype == np.uint8):
            raise ValueError(f"expected a {width}×{height}×3 uint8 RGB picture, got "
                             f"{getattr(image, 'shape', None)} {getattr(image, 'dtype', None)}")


@dataclass
class LandmarkSource:
    """What the receiver keeps per keyframe."""

    image: np.ndarray  # H×W×3 uint8
    canonical: np.ndarray  # P×3 head-frame points: 68 landmarks, forehead, ring
    pose: Pose  # the keyframe's pose
    coefficients: np.ndarray  # N, the keyframe's own expression coefficients
    source_px: np.ndarray  # (P + border)×2, where every mesh vertex sits in the keyframe
    references: ReferenceSet  # the mouth and eye patches received since this keyframe
    warp: MeshWarp | None = None  # its own mesh (whole frames); None: the model's fixed one


# Mesh extras, in the head frame (units of the mean face: x/y RMS radius 1).
_FOREHEAD_UP = (0.3, 0.6)  # rows above the brows, in brow-to-chin heights
_RING_POINTS = 20
_RING_SCALE = 1.15  # ring radii / the face's half extents
_BORDER = 1.0  # fixed frame points, normalised crop units (the crop's own edge)


def _head_extras(canonical68: np.ndarray) -> np.ndarray:
    """Forehead rows and a ring around the head, from a face's 68 canonical points."""
    brows = canonical68[17:27]
    chin = canonical68[8]
    height = chin[1] - brows[:, 1].min()
    rows = []
    for up in _FOREHEAD_UP:
        widen = 1.0 + 0.25 * up
        centre_x = brows[:, 0].mean()
        row = brows[::3].copy()
        row[:, 0] = centre_x + (row[:, 0] - centre_x) * widen
        row[:, 1] = brows[:, 1].min() - up * height
        row[:, 2] = brows[:, 2].mean() + 0.3 * up * height
        rows.append(row)
    jaw = canonical68[0:17]
    top = brows[:, 1].min() - _FOREHEAD_UP[-1] * height
    centre = np.array([jaw[:, 0].mean(), 0.5 * (top + chin[1])])
    radii = np.array([0.5 * np.ptp(jaw[:, 0]), 0.5 * (chin[1] - top)]) * _RING_SCALE
    angles = np.linspace(0.0, 2 * np.pi, _RING_POINTS, endpoint=False)
    ring = np.stack([centre[0] + radii[0] * np.cos(angles), centre[1] + radii[1] * np.sin(angles),
                     np.full(_RING_POINTS, 0.5 * (jaw[0, 2] + jaw[16, 2]))], axis=1)
    return np.concatenate(rows + [ring])


def _border_points(width: int = 1, height: int = 1) -> np.ndarray:
    """The mesh's fixed points on the picture's edge, in units (:func:`frame_to_unit`): a
    square crop's edge is at ±1; a wider frame's long edge reaches ± long / short."""
    short = min(width, height)
    bx, by = _BORDER * width / short, _BORDER * height / short
    xs, ys = np.linspace(-bx, bx, 5), np.linspace(-by, by, 5)
    top = np.stack([xs, np.full(5, -by)], axis=1)
    bottom = np.stack([xs, np.full(5, by)], axis=1)
    left = np.stack([np.full(3, -bx), ys[1:4]], axis=1)
    right = np.stack([np.full(3, bx), ys[1:4]], axis=1)
    return np.concatenate([top, bottom, left, right])


def _frontal(points3d: np.ndarray) -> np.ndarray:
    """Head-frame points → normalised crop points of a frontal face where a typical crop
    holds it: ~0.3 scale, centre slightly below the middle."""
    return 0.3 * points3d[:, :2] + np.array([0.0, 0.1])


# Whole frames: the warp's maps are computed on a grid whose short side is about this many
# pixels, then upsampled (codec.warp.MeshWarp's ``step``): a 1280×720 frame's maps cost
# about a quarter as much, and the picture differs from the full-resolution maps only in a
# band of a pixel or two along the mesh's edges (measured in tests/test_frame.py).
MAP_GRID_SHORT_SIDE = 360


def _map_step(width: int, height: int) -> int:
    return max(1, int(round(min(width, height) / MAP_GRID_SHORT_SIDE)))


def _outline(triangles: np.ndarray) -> np.ndarray | None:
    """The boundary of a triangulated region as one loop of vertex indices (its edges that
    belong to one triangle only), or None when it is not one simple loop."""
    count: dict[tuple[int, int], int] = {}
    for t in triangles:
        for a, b in ((t[0], t[1]), (t[1], t[2]), (t[0], t[2])):
            edge = (int(min(a, b)), int(max(a, b)))
            count[edge] = count.get(edge, 0) + 1
    neighbours: dict[int, list[int]] = {}
    for (a, b), n in count.items():
        if n == 1:
            neighbours.setdefault(a, []).append(b)
            neighbours.setdefault(b, []).append(a)
    if not neighbours or any(len(v) != 2 for v in neighbours.values()):
        return None
    start = next(iter(neighbours))
    loop, previous = [start], None
    while True:
        a, b = neighbours[loop[-1]]
        following = b if a == previous else a
        if following == start:
            break
        previous = loop[-1]
        loop.append(following)
        if len(loop) > len(neighbours):
            return None
    return np.array(loop, np.int64) if len(loop) == len(neighbours) else None


def _feather(side: int) -> np.ndarray:
    """side×side float32 weights: 1 inside, falling smoothly to 0 over the outer eighth of the
    square (the refiner's correction fades out before the box's edge: no seam)."""
    ramp = np.clip(np.minimum(np.arange(side), np.arange(side)[::-1]) / max(1.0, side / 8.0), 0.0, 1.0)
    ramp = (ramp * ramp * (3.0 - 2.0 * ramp)).astype(np.float32)
    return np.outer(ramp, ramp)


# Share of the driving landmarks that must lie inside the crop for the refiner to run.
REFINE_MIN_INSIDE = 0.9


def limit_turn(reference: np.ndarray, angles: np.ndarray, limit_deg: float | None) -> np.ndarray:
    """(yaw, pitch, roll) with yaw and pitch kept within ``limit_deg`` of the keyframe's
    ``reference`` pose: the warp can only move the keyframe's pixels, and a turn far past its
    view stretches the near cheek out of a sliver and tears the mesh. Up to half the limit the
    angles pass as they are; beyond, the excess is compressed smoothly (tanh) toward the limit,
    so the head keeps moving the real head's way and never stops dead. Roll (a turn in the
    picture's plane) passes: the warp shows it exactly. None: no limit. Deterministic from
    what the receiver holds (the keyframe's pose, the decoded motion), so the sender's closed
    loop renders exactly what the receiver shows."""
    angles = np.asarray(angles, np.float64)
    if limit_deg is None:
        return angles
    knee = 0.5 * limit_deg
    delta = angles[:2] - np.asarray(reference, np.float64)[:2]
    size = np.abs(delta)
    soft = np.where(size <= knee, size, knee + (limit_deg - knee) * np.tanh((size - knee) / (limit_deg - knee)))
    return np.concatenate([np.asarray(reference, np.float64)[:2] + np.sign(delta) * soft, angles[2:]])


class LandmarkModel(TalkingHeadModel):
    """The landmark family. ``face`` is the fitted face model (mean shape + basis)."""

    family = ModelFamily.LANDMARK
    free_view = True

    def __init__(self, face: FaceModel, *, name: str, sha256: str, image_size: int = 256,
                 coefficients: int = DEFAULT_COEFFICIENTS, refiner=None) -> None:
        if not 1 <= coefficients <= face.num_coefficients:
            raise ValueError(f"coefficients must be in [1, {face.num_coefficients}], got {coefficients}")
        self.face = face.truncated(coefficients)
        self.name = name
        self.sha256 = sha256
        self.untrained = False  # nothing here is learned: the geometry works as it is
        self.image_size = int(image_size)
        # The size the refiner was trained at (a square crop of this side); pictures of any
        # other size are refined on the face's box, scaled to it (``_refine_boxes``).
        self.refiner_size = self.image_size
        # The pictures it takes and renders: a square crop (width = height = image_size), or,
        # with ``whole_frame``, the camera's whole frame (``at_size``).
        self._frame_size = (self.image_size, self.image_size)
        self.whole_frame = False
        self.layout = MotionLayout(ModelFamily.LANDMARK, coefficients)
        self._border = _border_points()
        # One triangulation for every crop's keyframe: over the mean face's frontal layout.
        mean_points = np.concatenate([face.mean_shape, _head_extras(face.mean_shape)])
        self._triangles = delaunay_triangles(np.concatenate([_frontal(mean_points), self._border]))
        self.map_step = 1  # the warp's maps on a grid this much coarser (whole frames: _map_step)
        self._warp = MeshWarp(self._triangles, self.image_size)
        # The learned refiner (codec.models.refiner) on top of the warp, or None: the plain
        # warp. Receiver-side only: the stream, and so ``sha256``, are the same either way,
        # so a receiver may switch it off (speed) without the sender knowing.
        self.refiner = refiner
        # How the refiner runs on the CPU (codec.models.refiner.frozen_refiner): "fast" (traced
        # and frozen; its U-Net in bfloat16 where the CPU computes that natively), "float32"
        # (traced and frozen) or "eager" (the module as loaded: the reference).
        self.refiner_mode = "fast"
        # [(refiner, its version and mode, frozen_refiner of it)] or [None]: one list shared by
        # this model's copies (``at_size``, ``plain``), so a picture size does not trace again.
        self._frozen: list[tuple | None] = [None]
        # Yaw and pitch drawn at most this far from the keyframe's pose (limit_turn); None: as sent.
        self.turn_limit_deg: float | None = None

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) of the pictures it takes and renders."""
        return self._frame_size

    def at_size(self, width: int, height: int, whole_frame: bool = False) -> LandmarkModel:
        """This model for pictures of width×height (sharing the face model and refiner).

        ``whole_frame`` False: a square face crop of any side (256, 512, …), the mesh's
        fixed points on its edge. True: the camera's whole frame of any aspect: the fixed
        points on the frame's edge, the face anywhere in it, each keyframe meshed where its
        face is (``prepare_source``). Motion is in resolution-free units either way
        (:func:`codec.face3d.frame_to_unit`), so the same packets drive any size."""
        width, height, whole_frame = int(width), int(height), bool(whole_frame)
        if (width, height) == self.frame_size and whole_frame == self.whole_frame:
            return self
        if not (16 <= width <= 4095 and 16 <= height <= 4095):
            raise ValueError(f"picture size {width}×{height} out of range (16 … 4095 px a side)")
        if not whole_frame and width != height:
            raise ValueError(f"a face crop is square, got {width}×{height}")
        model = copy.copy(self)
        model._frame_size = (width, height)
        model.whole_frame = whole_frame
        model.image_size = min(width, height)
        model._border = _border_points(width, height)
        model.map_step = _map_step(width, height) if whole_frame else 1
        model._warp = MeshWarp(self._triangles, (width, height), model.map_step)
        return model

    def _to_unit(self, points: np.ndarray) -> np.ndarray:
        return frame_to_unit(points, *self.frame_size)

    def _to_pixels(self, points: np.ndarray) -> np.ndarray:
        return unit_to_frame(points, *self.frame_size)

    def plain(self) -> LandmarkModel:
        """The plain warp (patches included), sharing everything else with this model."""
        if self.refiner is None:
            return self
        model = copy.copy(self)
        model.refiner = None
        return model

    def default_landmarks(self) -> np.ndarray:
        """The mean face's 68 points where a typical crop holds a frontal face (crop pixels)."""
        return self._to_pixels(_frontal(self.face.mean_shape))

    def default_keyframe_info(self) -> bytes:
        return pack_keyframe_info(self.default_landmarks())

    def motion_tracker(self) -> LandmarkTracker:
        return LandmarkTracker(self)

    def prepare_source(self, image: np.ndarray, info: bytes = b"") -> LandmarkSource:
        width, height = self.frame_size
        if image.shape != (height, width, 3):
            raise ValueError(f"keyframe must be {width}×{height}×3, got {image.shape}")
        landmarks = unpack_keyframe_info(bytes(info))
        try:
            pose, offsets = _checked_pose(self._to_unit(landmarks), self.face)
        except ValueError as error:
            raise BitstreamError(f"keyframe landmarks are unusable: {error}") from error
        canonical68 = self.face.mean_shape + self.face.with_depth(offsets)
        canonical = np.concatenate([canonical68, _head_extras(canonical68)])
        source_unit = project(canonical, pose)
        source_px = self._to_pixels(np.concatenate([source_unit, self._border]))
        warp = (MeshWarp(self._frame_triangles(source_px), (width, height), self.map_step)
                if self.whole_frame else None)
        source = LandmarkSource(image=np.ascontiguousarray(image), canonical=canonical, pose=pose,
                                coefficients=self.face.coefficients(offsets), source_px=source_px,
                                references=ReferenceSet({}, {}), warp=warp)
        # The keyframe's own mouth and eyes, as the receiver draws them, are every region's
        # first reference.
        source.references = ReferenceSet.for_keyframe(self._landmarks_px(source, self.neutral_motion(source)))
        return source

    def _frame_triangles(self, source_px: np.ndarray) -> np.ndarray:
        """A whole frame's mesh for one keyframe, where its face is: a Delaunay triangulation
        of the head's points (landmarks, forehead, ring) as they sit in this keyframe, which
        covers their convex hull (the ring's outline), and between that outline and the
        frame's edge one of the outline and the fixed points, so the face may be anywhere in
        the frame and no triangle joins the face to the frame's edge across the ring (the hair
        moves with the head, the room stays). Fixed points inside the outline (a face at the
        frame's edge) are left out, and so is a fixed point that would cut an outline edge."""
        head = len(source_px) - len(self._border)
        inner = delaunay_triangles(source_px[:head])
        hull = _outline(inner)
        if hull is None:
            log.warning("whole-frame mesh: the head's triangles have no simple outline; meshing every point")
            return delaunay_triangles(source_px)
        outline = source_px[hull].astype(np.float32)
        border = [head + k for k in range(len(self._border))
                  if cv2.pointPolygonTest(outline, tuple(map(float, source_px[head + k])), False) < 0]
        wanted = [tuple(sorted((int(hull[k]), int(hull[(k + 1) % len(hull)])))) for k in range(len(hull))]
        while len(border) >= 3:
            points = np.concatenate([hull, np.array(border, np.int64)])
            outer = points[delaunay_triangles(source_px[points])]
            inside = [cv2.pointPolygonTest(outline, tuple(map(float, source_px[t].mean(axis=0))), False) > 0
                      for t in outer]
            outer = outer[~(np.isin(outer, hull).all(axis=1) & np.array(inside, bool))]
            edges = {tuple(sorted((int(a), int(b)))) for t in outer for a, b in ((t[0], t[1]), (t[1], t[2]),
                                                                                  (t[0], t[2]))}
            missing = [edge for edge in wanted if edge not in edges]
            if not missing:
                return np.concatenate([inner, outer])
            middle = source_px[list(missing[0])].mean(axis=0)
            border.remove(min(border, key=lambda k: float(np.sum((source_px[k] - middle) ** 2))))
        log.warning("whole-frame mesh: no outline kept; meshing every point")
        return delaunay_triangles(source_px)

    def _landmarks_px(self, source: LandmarkSource, motion: np.ndarray,
                      view: ViewControl | None = None) -> np.ndarray:
        """The 68 landmarks (crop pixels) the receiver draws ``motion`` with."""
        return self.driving_points(source, motion, view)[0][:NUM_LANDMARKS]

    # ------------------------------------------------------------------ reference patches

    supports_patches = True

    def _patch_motion(self, motion: np.ndarray) -> tuple[bytes, np.ndarray]:
        """(placement info: the motion vector as float16, the vector both sides place with)."""
        info = np.asarray(motion, "<f2").tobytes()
        return info, np.frombuffer(info, "<f2").astype(np.float64)

    def patch_candidates(self, source: LandmarkSource, crop: np.ndarray,
                         motion: np.ndarray) -> list[PatchCandidate]:
        info, placed = self._patch_motion(motion)
        points = self._landmarks_px(source, placed)
        candidates = []
        for region in REGIONS:
            value = openness(region, points)
            _, distance = source.references.nearest(region, value)
            box = patch_box(region, points, self.frame_size)
            if distance <= region.tolerance or box is None:
                continue
            x0, y0, x1, y1 = box
            patch = np.ascontiguousarray(crop[y0:y1, x0:x1])
            scale = self._patch_scale(points)
            if scale < 1.0:  # the face's scale in a 256-px crop: patch bytes do not grow with the picture
                size = (max(2, int(round((x1 - x0) * scale))), max(2, int(round((y1 - y0) * scale))))
                patch = cv2.resize(patch, size, interpolation=cv2.INTER_AREA)
            candidates.append(PatchCandidate(region.id, source.references.free_slot(region, value), x0, y0,
                                             patch, info))
        return candidates

    def _patch_scale(self, points: np.ndarray) -> float:
        """How much a patch is shrunk before it is coded: 1 in a crop at the size the refiner
        was trained on (256: patches as they always were); elsewhere down to the face's scale
        in such a crop (its ``box_from_landmarks`` side to ``refiner_size``), never up. The
        receiver reads the scale off the patch's size against its box (``add_patch``)."""
        if self.frame_size == (self.refiner_size, self.refiner_size) and not self.whole_frame:
            return 1.0
        from codec.facecrop import box_from_landmarks

        return min(1.0, self.refiner_size / max(box_from_landmarks(points[:NUM_LANDMARKS]).size, 1.0))

    def add_patch(self, source: LandmarkSource, candidate: PatchCandidate) -> None:
        region = REGION_BY_ID.get(candidate.region)
        if region is None:
            raise BitstreamError(f"unknown patch region {candidate.region}")
        if len(candidate.info) != 2 * self.layout.vector_length:
            raise BitstreamError(f"patch info of {len(candidate.info)} bytes; this model places patches "
                                 f"with {2 * self.layout.vector_length} (its motion vector as float16)")
        placed = np.frombuffer(candidate.info, "<f2").astype(np.float64)
        if not np.all(np.isfinite(placed)):
            raise BitstreamError("patch placement is not finite")
        image = candidate.image
        h, w = image.shape[:2]
        width, height = self.frame_size
        if candidate.x0 + w > width or candidate.y0 + h > height:
            raise BitstreamError(f"a {w}×{h} patch at ({candidate.x0}, {candidate.y0}) leaves the "
                                 f"{width}×{height} {'frame' if self.whole_frame else 'crop'}")
        points = self._landmarks_px(source, placed)
        # A patch smaller than its box was shrunk by the sender (``_patch_scale``); both sides
        # compute the box from the same decoded points.
        box = patch_box(region, points, self.frame_size)
        scale = (1.0, 1.0) if box is None else (w / max(box[2] - box[0], 1), h / max(box[3] - box[1], 1))
        if not (0.0 < scale[0] <= 1.0 and 0.0 < scale[1] <= 1.0):
            scale = (1.0, 1.0)  # not what this sender makes: placed as cut (a 1:1 patch)
        source.references.put(candidate.slot, Reference(region, image, (candidate.x0, candidate.y0),
                                                        points, openness(region, points), scale))

    def driving_points(self, source: LandmarkSource, motion: np.ndarray,
                       view: ViewControl | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(mesh vertices in output pixels, their depths) for one motion vector."""
        motion = np.asarray(motion, np.float64)
        angles, translation, log_scale = motion[0:3], motion[3:5], motion[5]
        angles = limit_turn(source.pose.angles, angles, self.turn_limit_deg)
        coefficients = motion[6:]
        offsets = (coefficients - source.coefficients) @ self.face.basis  # δ_d = B·(c_d − c_k)
        points = source.canonical.copy()
        points[:NUM_LANDMARKS, :2] += offsets.reshape(NUM_LANDMARKS, 2)
        rotation = rotation_matrix(*angles)
        if view is not None and not view.is_identity:
            if view.frontalize:
                rotation = np.eye(3)
            rotation = rotation_matrix(view.yaw, view.pitch, view.roll) @ rotation
            translation = translation + np.asarray(view.translation[:2], np.float64)
        rotated = points @ rotation.T
        scale = float(np.exp(np.clip(log_scale, -3.0, 3.0)))
        unit = scale * rotated[:, :2] + translation
        depth = np.concatenate([rotated[:, 2], np.full(len(self._border), 1e6)])
        pixels = self._to_pixels(np.concatenate([unit, self._border]))
        return pixels, depth

    def warp_maps(self, source: LandmarkSource, motion: np.ndarray,
                  view: ViewControl | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(map_x, map_y) float32 H×W: where each output pixel samples the keyframe."""
        driving, depth = self.driving_points(source, motion, view)
        return (source.warp or self._warp).maps(source.source_px, driving, depth)

    def render(self, source: LandmarkSource, motions: np.ndarray,
               view: ViewControl | None = None) -> list[np.ndarray]:
        frames, picked, maps, masks = [], [], [], []  # picked: frames the refiner gets
        native = self.frame_size == (self.refiner_size, self.refiner_size) and not self.whole_frame
        boxes = []  # pictures of another size: the face's box each picked frame is refined on
        warp = source.warp or self._warp
        for motion in np.atleast_2d(np.asarray(motions, np.float32)):
            driving, depth = self.driving_points(source, motion, view)
            map_x, map_y = warp.maps(source.source_px, driving, depth)
            box = None if native or self.refiner is None else self._refine_box(driving[:NUM_LANDMARKS])
            if self.refiner is not None and self._face_in_view(driving) and (native or box is not None):
                picked.append(len(frames))
                maps.append(np.stack([map_x, map_y]))
                boxes.append(box)
                if native:
                    masks.append(landmark_masks(driving[:NUM_LANDMARKS], self.image_size))
                else:
                    x0, y0, side = box
                    scale = self.refiner_size / side
                    masks.append(landmark_masks((driving[:NUM_LANDMARKS] - (x0, y0) + 0.5) * scale - 0.5,
                                                self.refiner_size))
            warped = cv2.remap(source.image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
            # Real pixels where the keyframe has none (an open mouth, closed eyes), before the
            # refiner, which hides the seams.
            frames.append(blend_references(warped, source.references, driving[:NUM_LANDMARKS]))
        if picked:
            if native:
                refined = self._refine(source, [frames[k] for k in picked], maps, masks)
            else:
                refined = self._refine_boxes(source, [frames[k] for k in picked], maps, masks, boxes)
            for k, image in zip(picked, refined):
                frames[k] = image
        return frames

    def _refine_box(self, points: np.ndarray) -> tuple[int, int, int] | None:
        """(x0, y0, side) of the square the refiner sees in a picture of another size than it
        was trained on: the face's box as the crop frames it (``box_from_landmarks``; no larger
        than the picture), moved inside the picture; None when the face is too small for it
        (the plain warp is shown)."""
        from codec.facecrop import box_from_landmarks

        width, height = self.frame_size
        box = box_from_landmarks(points)
        side = min(int(round(box.size)), width, height)
        if side < 32:
            return None
        x0 = int(round(min(max(box.cx - side / 2, 0), width - side)))
        y0 = int(round(min(max(box.cy - side / 2, 0), height - side)))
        return x0, y0, side

    def _refine_boxes(self, source: LandmarkSource, warped: list[np.ndarray], maps: list[np.ndarray],
                      masks: list[np.ndarray], boxes: list[tuple[int, int, int]]) -> list[np.ndarray]:
        """The refiner on each frame's face box: the box of the warp, of the keyframe and of
        the maps (in the box's own pixels) scaled to ``refiner_size``, refined, and its
        correction (refined − warped) scaled back and added under a feathered mask, so the
        picture keeps its own resolution and has no seam at the box's edge."""
        r = self.refiner_size
        out = []
        for frame, (map_x, map_y), mask, (x0, y0, side) in zip(warped, maps, masks, boxes):
            scale = r / side
            crop = cv2.resize(frame[y0:y0 + side, x0:x0 + side], (r, r), interpolation=cv2.INTER_AREA)
            key = cv2.resize(source.image[y0:y0 + side, x0:x0 + side], (r, r), interpolation=cv2.INTER_AREA)
            box_maps = np.stack([cv2.resize((m[y0:y0 + side, x0:x0 + side] - o + 0.5) * scale - 0.5, (r, r),
                                            interpolation=cv2.INTER_LINEAR) for m, o in ((map_x, x0), (map_y, y0))])
            refined = self._refine(source, [crop], [box_maps.astype(np.float32)], [mask], keyframe_image=key)[0]
            delta = cv2.resize(refined.astype(np.float32) - crop.astype(np.float32), (side, side),
                               interpolation=cv2.INTER_LINEAR)
            result = frame.copy()
            region = result[y0:y0 + side, x0:x0 + side].astype(np.float32)
            result[y0:y0 + side, x0:x0 + side] = np.clip(region + delta * _feather(side)[..., None] + 0.5,
                                                         0, 255).astype(np.uint8)
            out.append(result)
        return out

    def _face_in_view(self, driving: np.ndarray) -> bool:
        """Whether the refiner may touch this frame: at least ``REFINE_MIN_INSIDE`` of the 68
        driving landmarks inside the crop. With the face mostly outside, the refiner has no
        face to repair and paints a faint copy of the keyframe's face into the background
        (seen on dev: headtrackr/capture4 and capture5 leave the crop); such frames show the
        plain warp."""
        points = driving[:NUM_LANDMARKS]
        width, height = self.frame_size
        inside = (points[:, 0] >= 0) & (points[:, 0] < width) & (points[:, 1] >= 0) & (points[:, 1] < height)
        return float(inside.mean()) >= REFINE_MIN_INSIDE

    def _refine(self, source: LandmarkSource, warped: list[np.ndarray], maps: list[np.ndarray],
                masks: list[np.ndarray], keyframe_image: np.ndarray | None = None) -> list[np.ndarray]:
        """The refiner over a batch of warped frames, with the inputs it was trained on
        (``training.refiner_data.warp_inputs``): uint8 RGB in, uint8 RGB out."""
        import torch

        device = next(self.refiner.parameters()).device
        network = self._inference_refiner()
        with torch.inference_mode():
            batch = torch.from_numpy(np.stack(warped)).to(device).permute(0, 3, 1, 2).float() / 255.0
            keyframe = torch.from_numpy(np.ascontiguousarray(
                source.image if keyframe_image is None else keyframe_image)).to(device).permute(2, 0, 1).float() / 255.0
            out = network(batch, keyframe.expand(len(warped), -1, -1, -1),
                          torch.from_numpy(np.stack(maps)).to(device),
                          torch.from_numpy(np.stack(masks).transpose(0, 3, 1, 2)).to(device))
            images = (out.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return list(np.ascontiguousarray(images))

    def _inference_refiner(self) -> Callable[..., torch.Tensor]:
        """The refiner as each frame runs it (:func:`codec.models.refiner.frozen_refiner`),
        made again whenever ``self.refiner`` is replaced or its weights change in place."""
        from codec.models.refiner import frozen_refiner

        refiner, mode = self.refiner, self.refiner_mode
        if mode not in ("fast", "float32", "eager"):
            raise ValueError(f"refiner_mode must be 'fast', 'float32' or 'eager', not {mode!r}")
        if mode == "eager":
            return refiner
        # In-place weight updates bump the parameters' versions; train() / eval() flips the mode.
        version = (sum(p._version for p in refiner.parameters()), refiner.training, mode)
        frozen = self._frozen[0]
        if frozen is None or frozen[0] is not refiner or frozen[1] != version:
            frozen = (refiner, version, frozen_refiner(refiner, self.refiner_size,
                                                       bfloat16=None if mode == "fast" else False))
            self._frozen[0] = frozen
        return frozen[2]

    def neutral_motion(self, source: LandmarkSource) -> np.ndarray:
        return _motion_vector(source.pose, source.coefficients)
