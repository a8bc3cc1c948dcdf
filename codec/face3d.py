"""Face geometry of the landmark family: a mean 3D face, weak-perspective pose and an
expression basis, all on dlib's 68 points. Pure numpy (no torch, no I/O).

Coordinates:
- Image points are normalised crop coordinates in [-1, 1] (x right, y down), the same
  convention as :mod:`codec.keypoints` and ``grid_sample``: ``u = (2·px + 1) / size − 1``.
- The canonical face lives in a head frame with x right, y down and z away from the
  camera, centred on its mean point and scaled to unit RMS radius in x/y.
- A frame's landmarks are modelled as a scaled orthographic (weak-perspective) view of
  the canonical points plus an expression offset in the head frame:

      l = s · P·R·(x_c + δ) + t,      P = [[1, 0, 0], [0, 1, 0]]

  with R = R_z(roll)·R_y(yaw)·R_x(pitch) in degrees (:func:`codec.keypoints.angles_to_rotation`
  convention), s the scale and t the 2D translation. This is the paper's
  x_d = R_d·(x_c + δ_d) + t_d, projected.
- Expression offsets have no depth (z = 0): 2D landmarks cannot observe it, and a
  talking face's mouth, lids and brows move mostly across the face, not along the view.

The mean shape and the expression basis are fitted on the train split by
:mod:`training.fit_face_model` and shipped as a small safetensors file in
``codec/weights/landmark/`` (see :mod:`codec.zoo`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NUM_LANDMARKS = 68

# Points that move little with speech and expression: the upper jaw line, the nose and
# the eye corners. The pose is fitted on these so an opening mouth does not tilt the head.
RIGID_POINTS = np.array(
    [0, 1, 2, 3, 4, 12, 13, 14, 15, 16, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45],
    dtype=np.int64)


def pixels_to_unit(points: np.ndarray, size: int) -> np.ndarray:
    """Crop pixels (…×2) → normalised [-1, 1] coordinates (pixel centres)."""
    return (2.0 * np.asarray(points, np.float64) + 1.0) / float(size) - 1.0


def unit_to_pixels(points: np.ndarray, size: int) -> np.ndarray:
    """Inverse of :func:`pixels_to_unit`."""
    return ((np.asarray(points, np.float64) + 1.0) * float(size) - 1.0) / 2.0


def frame_to_unit(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixels of a width×height picture (…×2) → resolution-free units: the picture's centre
    at 0, its short side spanning [-1, 1] (a square crop: exactly :func:`pixels_to_unit`), so
    the same head motion has the same values at any size of the same picture."""
    if width == height:
        return pixels_to_unit(points, width)
    short = float(min(width, height))
    return (2.0 * np.asarray(points, np.float64) + 1.0) / short - np.array([width / short, height / short])


def unit_to_frame(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Inverse of :func:`frame_to_unit`."""
    if width == height:
        return unit_to_pixels(points, width)
    short = float(min(width, height))
    return ((np.asarray(points, np.float64) + np.array([width / short, height / short])) * short - 1.0) / 2.0


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """3×3 R = R_z(roll)·R_y(yaw)·R_x(pitch), angles in degrees (numpy twin of
    :func:`codec.keypoints.angles_to_rotation`)."""
    y, p, r = np.radians([yaw, pitch, roll])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ ry @ rx


def rotation_angles(rotation: np.ndarray) -> np.ndarray:
    """3×3 rotation → (yaw, pitch, roll) degrees; exact inverse of :func:`rotation_matrix`
    for |yaw| < 90°."""
    r = rotation
    yaw = np.arctan2(-r[2, 0], np.hypot(r[0, 0], r[1, 0]))
    pitch = np.arctan2(r[2, 1], r[2, 2])
    roll = np.arctan2(r[1, 0], r[0, 0])
    return np.degrees(np.array([yaw, pitch, roll]))


@dataclass(frozen=True)
class Pose:
    """Weak-perspective head pose: angles (yaw, pitch, roll) in degrees, scale s and
    the 2D translation t in normalised crop units."""

    angles: np.ndarray  # 3
    scale: float
    translation: np.ndarray  # 2

    @property
    def rotation(self) -> np.ndarray:
        return rotation_matrix(*self.angles)


def project(points3d: np.ndarray, pose: Pose) -> np.ndarray:
    """N×3 head-frame points → N×2 image points (normalised units)."""
    rotated = points3d @ pose.rotation.T
    return pose.scale * rotated[:, :2] + pose.translation


def fit_pose(landmarks: np.ndarray, mean_shape: np.ndarray,
             points: np.ndarray = RIGID_POINTS) -> Pose:
    """Weak-perspective pose of 68×2 normalised landmarks against the 68×3 mean shape.

    Least-squares affine camera on the rigid points, then the nearest scaled rotation
    (SVD of its 2×3 part): closed form, no iterations, ~50 µs."""
    model = mean_shape[points]
    image = np.asarray(landmarks, np.float64)[points]
    model_centre = model.mean(axis=0)
    image_centre = image.mean(axis=0)
    a = model - model_centre
    b = image - image_centre
    # b ≈ a @ M.T, M 2×3
    m, *_ = np.linalg.lstsq(a, b, rcond=None)
    u, sigma, vt = np.linalg.svd(m.T, full_matrices=False)  # m.T = 2×3
    top = u @ vt  # 2×3 with orthonormal rows
    scale = float(sigma.mean())
    third = np.cross(top[0], top[1])
    rotation = np.stack([top[0], top[1], third])
    translation = image_centre - scale * (rotation @ model_centre)[:2]
    return Pose(rotation_angles(rotation), scale, translation)


def expression_offsets(landmarks: np.ndarray, shape: np.ndarray, pose: Pose) -> np.ndarray:
    """68×2 head-frame x/y offsets δ (z = 0) that make ``project(shape + δ, pose)``
    equal the landmarks exactly.

    Per point, the image residual is mapped back through the top-left 2×2 block of s·R
    (invertible for |yaw|, |pitch| < 90°)."""
    residual = np.asarray(landmarks, np.float64) - project(shape, pose)
    block = pose.scale * pose.rotation[:2, :2]
    return residual @ np.linalg.inv(block).T


@dataclass(frozen=True)
class FaceModel:
    """Mean 3D face and the expression basis (fitted on the train split).

    mean_shape: 68×3, the canonical head frame (see the module docstring).
    basis: K×136, orthonormal rows over the flattened 68×2 x/y offsets.
    basis_mean: 136, the mean offset the basis is centred on.
    scales: K, the standard deviation of each coefficient on the train split.
    """

    mean_shape: np.ndarray
    basis: np.ndarray
    basis_mean: np.ndarray
    scales: np.ndarray

    @property
    def num_coefficients(self) -> int:
        return int(self.basis.shape[0])

    def truncated(self, k: int) -> FaceModel:
        """The same model with the first ``k`` basis vectors only."""
        return FaceModel(self.mean_shape, self.basis[:k], self.basis_mean, self.scales[:k])

    def coefficients(self, offsets: np.ndarray) -> np.ndarray:
        """68×2 offsets → K coefficients (projection on the basis)."""
        return self.basis @ (np.asarray(offsets, np.float64).reshape(-1) - self.basis_mean)

    def with_depth(self, offsets_xy: np.ndarray) -> np.ndarray:
        """68×2 offsets → 68×3 (z = 0)."""
        out = np.zeros((NUM_LANDMARKS, 3))
        out[:, :2] = offsets_xy
        return out
