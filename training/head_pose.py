"""Head-pose pseudo-labels of faces from their 68 landmarks (cv2.solvePnP on a generic 3D head).

Sign convention, as in :mod:`codec.keypoints`:
R = Rz(roll)·Ry(yaw)·Rx(pitch), axes x = image right, y = image down, z = away from the
camera, R = I for a face looking straight into the camera. In image terms (checked on
real clips and on the scripted-roll synthetic clip, see tests/test_training_data.py):

- yaw > 0: the nose points to the image LEFT (the person turns to their own right);
- pitch > 0: the nose points DOWN (the person looks down);
- roll > 0: the head tilts CLOCKWISE on screen (the image-right eye goes down).

Imports numpy and OpenCV alone.
"""

from __future__ import annotations

import cv2
import numpy as np

from codec.face3d import rotation_angles

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
    return fill_nearest(poses)


def fill_nearest(values: np.ndarray) -> np.ndarray:
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
