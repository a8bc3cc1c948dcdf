"""Soft masks of the driving mouth and eyes: what the landmark family's refiner
(:mod:`codec.models.refiner`) is told about the face it repairs. numpy and OpenCV only, so
the plain warp and the training data builder use them without torch."""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import ArrayLike

__all__ = ["LANDMARK_CHANNELS", "landmark_masks"]

# Channels of landmark_masks: mouth (outer lips), mouth interior, both eyes.
LANDMARK_CHANNELS = 3

# dlib 68-point index ranges (end exclusive).
_OUTER_LIPS = (48, 60)
_INNER_LIPS = (60, 68)
_EYES = ((36, 42), (42, 48))


def landmark_masks(points_px: ArrayLike, size: int, blur_px: float = 2.0) -> np.ndarray:
    """Soft masks of the driving mouth and eyes: size×size×3 float32 numpy in [0, 1].

    Channels: 0 outer-lip region (48–59), 1 mouth interior (60–67), 2 both eyes (36–47).
    Filled polygons, then a Gaussian blur of ``blur_px`` (σ in pixels at 256, scaled with
    ``size``) so the net gets a smooth hint rather than a hard edge. ~0.3 ms at 256 px.

    Args:
        points_px: 68×2 (x, y) landmarks in output pixels (numpy or anything array-like).
        size: the output side S.
    """
    pts = np.asarray(points_px, np.float64).reshape(68, 2)
    masks = np.zeros((size, size, LANDMARK_CHANNELS), np.float32)
    shift = 4  # 1/16-pixel vertex precision, as codec.warp does
    groups = ((_OUTER_LIPS,), (_INNER_LIPS,), _EYES)
    for channel, ranges in enumerate(groups):
        plane = np.zeros((size, size), np.uint8)
        for start, end in ranges:
            polygon = np.round(pts[start:end] * (1 << shift)).astype(np.int32)
            if np.all(np.isfinite(pts[start:end])):
                cv2.fillPoly(plane, [polygon], 255, lineType=cv2.LINE_AA, shift=shift)
        masks[..., channel] = plane
    sigma = blur_px * size / 256.0
    if sigma > 0:
        masks = cv2.GaussianBlur(masks, (0, 0), sigma)
        masks = masks.reshape(size, size, LANDMARK_CHANNELS)
    return masks * np.float32(1.0 / 255.0)
