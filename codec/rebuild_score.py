"""Cheap scores of a rebuilt frame against the real one, for the sender's closed loop.

The sender renders what the receiver will show and compares it with the camera's crop on
every check, so a score must cost about a millisecond, and it must rank frames the way
LPIPS (our stand-in for what people see) does. ``benchmarks.score_calibration`` measures
that on the dev crops; its JSON (benchmarks/results/score-calibration.json) is why the
closed loop uses :func:`rebuild_error` rather than PSNR.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["gmsd", "rebuild_error", "rebuild_psnr", "ssim_error"]


def _half_luma(image: np.ndarray) -> np.ndarray:
    """S×S×3 uint8 RGB -> (S/2)×(S/2) float32 luma: half resolution is cheaper and less swayed
    by sensor noise than full."""
    gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    half = (gray.shape[1] // 2, gray.shape[0] // 2)
    return cv2.resize(gray, half, interpolation=cv2.INTER_AREA).astype(np.float32)


def rebuild_psnr(rebuilt: np.ndarray, real: np.ndarray) -> float:
    """PSNR (dB) of two S×S×3 uint8 frames at half resolution."""
    size = (rebuilt.shape[1] // 2, rebuilt.shape[0] // 2)
    a = cv2.resize(rebuilt, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    b = cv2.resize(real, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    mse = float(np.mean((a - b) ** 2))
    return 10.0 * np.log10(255.0 ** 2 / max(mse, 1e-6))


def ssim_error(rebuilt: np.ndarray, real: np.ndarray) -> float:
    """1 − SSIM of the half-resolution luma (Gaussian window σ 1.5, the usual constants)."""
    x, y = _half_luma(rebuilt), _half_luma(real)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(image: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(image, (11, 11), 1.5)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    ssim = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(1.0 - ssim.mean())


def gmsd(rebuilt: np.ndarray, real: np.ndarray) -> float:
    """Gradient magnitude similarity deviation (Xue et al. 2014) of the half-resolution luma:
    the spread of the per-pixel agreement of edge strength; 0 for identical frames."""
    x, y = _half_luma(rebuilt), _half_luma(real)

    def magnitude(image: np.ndarray) -> np.ndarray:
        gx = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=3)
        return np.sqrt(gx * gx + gy * gy)

    mx, my = magnitude(x), magnitude(y)
    c = 170.0 * 4  # the paper's constant for [0, 255] Prewitt; Sobel's gradients are ~4/3 larger
    similarity = (2 * mx * my + c) / (mx * mx + my * my + c)
    return float(similarity.std())


def rebuild_error(rebuilt: np.ndarray, real: np.ndarray) -> float:
    """The closed loop's error of a rebuilt frame (higher is worse)."""
    return ssim_error(rebuilt, real)
