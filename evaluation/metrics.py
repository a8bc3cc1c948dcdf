"""Image and face metrics for the whole project (benchmarks and training evaluation).

One place for every number the rate-distortion benchmark reports (its protocol:
docs/results.md and docs/measurements.md), so results compare across sessions:

* :func:`psnr`, :func:`ssim`, :func:`ms_ssim` on B×3×H×W float tensors in [0, 1] (RGB,
  data range 1), each returning B values (float64); :func:`psnr_frames`,
  :func:`ssim_frames`, :func:`ms_ssim_frames` are numpy conveniences for uint8 frames.
* :class:`FaceLandmarkMetrics`: AKD (mean pixel distance of the 68 dlib landmarks) and
  AED (L2 distance of dlib's 128-d face embeddings), each with the count of frame pairs
  scored and skipped because a face was missing in either frame.
* :func:`lpips_model`: LPIPS (AlexNet v0.1) from ``evaluation.lpips``, loaded lazily.

Imports torch and numpy only. dlib (absent on the GPU machine) and the LPIPS module are
imported lazily. When dlib or its model files are missing, :class:`FaceLandmarkMetrics`
raises :class:`MetricUnavailableError` (a typed error, so benchmarks can tell "no dlib"
from a bug); :func:`landmark_metrics_or_reason` turns that into ``(None, reason)`` for
callers that report "n/a".
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from codec.errors import CodecError

__all__ = [
    "MS_SSIM_MIN_SIDE",
    "MS_SSIM_WEIGHTS",
    "FaceLandmarkMetrics",
    "LandmarkScore",
    "MetricUnavailableError",
    "frames_to_tensor",
    "landmark_metrics_or_reason",
    "lpips_model",
    "ms_ssim",
    "ms_ssim_frames",
    "psnr",
    "psnr_frames",
    "ssim",
    "ssim_frames",
]

PSNR_CAP_DB = 100.0
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # scipy/skimage's truncate: radius int(3.5·1.5 + 0.5) = 5, i.e. 11 taps
SSIM_K1 = 0.01
SSIM_K2 = 0.03
# Wang, Simoncelli & Bovik 2003, Table/eq. (7) weights for scales 1 (full size) .. 5.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# Scale 5 is the image halved 4 times (rounding up); the 11-tap window must fit there:
# ceil(side / 16) ≥ 11  <=>  side ≥ 161. 256 (→ 16 px at scale 5) and 512 are fine.
MS_SSIM_MIN_SIDE = 161


class MetricUnavailableError(CodecError):
    """A metric's optional dependency (dlib, a model file, LPIPS weights) is missing."""


# ---------------------------------------------------------------------------- pixels
def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"expected two B×C×H×W tensors of one shape, got {tuple(pred.shape)}, "
                         f"{tuple(target.shape)}")


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image, data range 1, MSE over all RGB values.

    Args:
        pred, target: B×3×H×W float in [0, 1].

    Returns:
        B float64 values, capped at 100 dB (MSE floored at 1e-10) so identical images give
        a finite number that can be averaged (skimage returns inf there).
    """
    _check_pair(pred, target)
    mse = ((pred.double() - target.double()) ** 2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(10.0 ** (-PSNR_CAP_DB / 10.0)))


def _gaussian_window(device: torch.device) -> torch.Tensor:
    """11 float64 taps of scipy.ndimage.gaussian_filter's kernel (σ 1.5, truncate 3.5)."""
    radius = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    kernel = torch.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return kernel / kernel.sum()


def _valid_filter_matrix(window: torch.Tensor, length: int) -> torch.Tensor:
    """length × (length - taps + 1) matrix M with M[j + k, j] = window[k]: v @ M is the
    'valid' correlation of a row vector v with the window."""
    taps = window.numel()
    out = length - taps + 1
    matrix = torch.zeros(length, out, dtype=window.dtype, device=window.device)
    columns = torch.arange(out, device=window.device)
    for k in range(taps):
        matrix[columns + k, columns] = window[k]
    return matrix


def _ssim_and_cs(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean SSIM and mean contrast-structure term per image and channel.

    Args:
        x, y: B×C×H×W float64, data range 1, H and W ≥ 11.

    Returns:
        (ssim, cs), each B×C: means over the "valid" positions, where the whole window
        fits. Those are exactly the pixels skimage keeps after cropping its reflect-padded
        border, so no padding choice enters the value.
    """
    window = _gaussian_window(x.device)
    taps = window.numel()
    if min(x.shape[-2:]) < taps:
        raise ValueError(f"images of {tuple(x.shape[-2:])} are smaller than the {taps}-tap window")
    along_w = _valid_filter_matrix(window, x.shape[-1])  # W × (W - taps + 1)
    along_h = _valid_filter_matrix(window, x.shape[-2]).T  # (H - taps + 1) × H

    def blur(image: torch.Tensor) -> torch.Tensor:
        # Separable "valid" gaussian as two banded matrix products: far faster on the CPU
        # than a grouped float64 convolution, and exact to float64 rounding.
        return along_h @ (image @ along_w)

    mu_x, mu_y = blur(x), blur(y)
    # population (biased) moments: use_sample_covariance=False
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1 = SSIM_K1**2
    c2 = SSIM_K2**2
    cs_map = (2 * cov + c2) / (var_x + var_y + c2)
    ssim_map = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs_map
    return ssim_map.mean(dim=(2, 3)), cs_map.mean(dim=(2, 3))


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean SSIM per image (Wang et al. 2004), averaged over the RGB channels.

    Gaussian window of 11 taps (σ 1.5), K1 0.01, K2 0.03, population covariances, data
    range 1, computed in float64: equals skimage's ``structural_similarity(gaussian_weights
    =True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1)`` to ~1e-7.

    Args:
        pred, target: B×C×H×W float in [0, 1] (C = 3 for RGB), H, W ≥ 11.

    Returns:
        B float64 values (1 for identical images).
    """
    _check_pair(pred, target)
    value, _ = _ssim_and_cs(pred.double(), target.double())
    return value.mean(1)


def _halve(image: torch.Tensor) -> torch.Tensor:
    """B×C×H×W -> B×C×ceil(H/2)×ceil(W/2): 2×2 mean, then every other pixel.

    This is Wang's reference MATLAB (``imfilter(ones(2)/4, 'symmetric')`` then
    ``(1:2:end)``); an odd last row/column is averaged with its mirror, i.e. itself.
    """
    pad_h, pad_w = image.shape[-2] % 2, image.shape[-1] % 2
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h), mode="replicate")
    return F.avg_pool2d(image, kernel_size=2, stride=2)


def ms_ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Multi-scale SSIM per image (Wang, Simoncelli & Bovik 2003), averaged over channels.

    Five scales, each half the previous (see :func:`_halve`). Per channel:
    ``Π_{j=1..4} cs_j^{w_j} · ssim_5^{w_5}`` with ``MS_SSIM_WEIGHTS``, where cs_j is the
    mean contrast-structure term and ssim_5 the full mean SSIM at the coarsest scale (same
    window and constants as :func:`ssim`). Negative means (possible only for strongly
    anti-correlated images) are clamped to 0 before the fractional powers, as TensorFlow
    and pytorch-msssim do, so the result is 0 rather than NaN.

    Images smaller than ``MS_SSIM_MIN_SIDE`` (161 px) on either side raise ValueError: the
    11-tap window does not fit at scale 5, and silently dropping scales or shrinking the
    window would give numbers that do not compare with the standard metric.

    Args:
        pred, target: B×C×H×W float in [0, 1], H, W ≥ 161.

    Returns:
        B float64 values (1 for identical images).
    """
    _check_pair(pred, target)
    if min(pred.shape[-2:]) < MS_SSIM_MIN_SIDE:
        raise ValueError(f"MS-SSIM needs H, W ≥ {MS_SSIM_MIN_SIDE} (the 11-tap window must fit "
                         f"after 4 halvings); got {tuple(pred.shape[-2:])}")
    x, y = pred.double(), target.double()
    weights = torch.tensor(MS_SSIM_WEIGHTS, dtype=torch.float64, device=x.device)
    result = torch.ones(x.shape[:2], dtype=torch.float64, device=x.device)
    for scale, weight in enumerate(weights):
        full, cs = _ssim_and_cs(x, y)
        last = scale == len(MS_SSIM_WEIGHTS) - 1
        result = result * (full if last else cs).clamp_min(0.0) ** weight
        if not last:
            x, y = _halve(x), _halve(y)
    return result.mean(1)


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """H×W×3 or N×H×W×3 uint8 RGB -> N×3×H×W float64 in [0, 1] (N = 1 for one frame)."""
    array = np.asarray(frames)
    if array.dtype != np.uint8 or array.ndim not in (3, 4) or array.shape[-1] != 3:
        raise ValueError(f"expected uint8 H×W×3 or N×H×W×3 frames, got {array.dtype} {array.shape}")
    if array.ndim == 3:
        array = array[None]
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).double() / 255.0


def psnr_frames(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """:func:`psnr` of uint8 RGB frames (H×W×3 or N×H×W×3) -> N float64 (dB)."""
    return psnr(frames_to_tensor(pred), frames_to_tensor(target)).numpy()


def ssim_frames(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """:func:`ssim` of uint8 RGB frames (H×W×3 or N×H×W×3) -> N float64."""
    return ssim(frames_to_tensor(pred), frames_to_tensor(target)).numpy()


def ms_ssim_frames(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """:func:`ms_ssim` of uint8 RGB frames (H×W×3 or N×H×W×3, sides ≥ 161) -> N float64."""
    return ms_ssim(frames_to_tensor(pred), frames_to_tensor(target)).numpy()


# ---------------------------------------------------------------------------- LPIPS
@functools.lru_cache(maxsize=4)
def _lpips_on(device: str) -> Any:
    from evaluation.lpips import LPIPS  # lazy: keeps this module torch + numpy only

    return LPIPS.from_cache().to(torch.device(device)).eval()


def lpips_model(device: torch.device | str = "cpu") -> Any:
    """Frozen LPIPS (AlexNet v0.1) on ``device``; one instance per device, loaded once.

    ``model(x0, x1)`` takes B×3×H×W in [0, 1] and returns B distances. Raises
    ``codec.errors.WeightsError`` when the converted backbone is missing (run
    ``python -m training.backbones setup``). Shared instance: do not move it with
    ``.to()``; ask for another device instead.
    """
    return _lpips_on(str(torch.device(device)))


# ---------------------------------------------------------------------------- faces
class LandmarkScore(NamedTuple):
    """A face metric averaged over frame pairs.

    mean: the average over the ``frames`` pairs where both frames have a face; None when
        there is no such pair (never an average over zero frames).
    frames: pairs scored.
    skipped: pairs left out because either frame had no detected face.
    """

    mean: float | None
    frames: int
    skipped: int


def _face_model_path(name: str) -> str:
    """A model file of the ``face-recognition-models`` package, located without importing it."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise MetricUnavailableError("face-recognition-models is not installed (dlib's face models)")
    path = os.path.join(os.path.dirname(spec.origin), "models", name)
    if not os.path.isfile(path):
        raise MetricUnavailableError(f"dlib model file missing: {path}")
    return path


def _mean_distance(pred: Sequence[np.ndarray | None], ref: Sequence[np.ndarray | None],
                   distance: Any) -> LandmarkScore:
    """Average ``distance(p, r)`` over pairs where neither side is None."""
    if len(pred) != len(ref):
        raise ValueError(f"{len(pred)} predicted vs {len(ref)} reference frames")
    values = [distance(p, r) for p, r in zip(pred, ref) if p is not None and r is not None]
    return LandmarkScore(float(np.mean(values)) if values else None, len(values),
                         len(pred) - len(values))


class FaceLandmarkMetrics:
    """AKD and AED with dlib (68-point landmarks, ResNet face embeddings).

    Faces are found with ``codec.facecrop.detect_landmarks`` (HOG detector, largest face,
    68 points), the same detector the codec crops with. Frames are H×W×3 uint8 RGB.

    Raises:
        MetricUnavailableError: at construction, when dlib or the landmark model cannot be
            loaded; the embedding model is checked (and loaded) on the first ``aed`` call.
    """

    def __init__(self) -> None:
        try:
            import dlib  # noqa: F401  (lazy: not installed on the GPU machine)

            from codec.facecrop import detect_landmarks, landmark_model_path

            landmark_model_path()
        except Exception as exc:  # ImportError, FaceNotFoundError (no model file)
            raise MetricUnavailableError(
                f"dlib landmarks unavailable ({type(exc).__name__}: {exc})") from exc
        self._detect = detect_landmarks
        self._encoder: Any = None

    # -- per-frame features (exposed so a reference clip is analysed once, not per method)
    def landmarks(self, frames: Sequence[np.ndarray]) -> list[np.ndarray | None]:
        """68×2 float64 (x, y) landmarks per frame, None where no face is found."""
        return [self._detect(np.ascontiguousarray(frame)) for frame in frames]

    def embeddings(self, frames: Sequence[np.ndarray],
                   landmarks: Sequence[np.ndarray | None] | None = None
                   ) -> list[np.ndarray | None]:
        """128-d float64 dlib face descriptor per frame, None where no face is found.

        Args:
            frames: H×W×3 uint8 RGB frames.
            landmarks: their 68-point landmarks if already known (saves the detection).
        """
        import dlib  # lazy

        if self._encoder is None:
            try:
                self._encoder = dlib.face_recognition_model_v1(
                    _face_model_path("dlib_face_recognition_resnet_model_v1.dat"))
            except RuntimeError as exc:
                raise MetricUnavailableError(f"dlib face embedding model: {exc}") from exc
        if landmarks is None:
            landmarks = self.landmarks(frames)
        out: list[np.ndarray | None] = []
        for frame, points in zip(frames, landmarks):
            if points is None:
                out.append(None)
                continue
            # The descriptor aligns the face from the 68 parts alone (get_face_chip_details);
            # the rectangle is only bookkeeping, so the landmarks' bounding box will do.
            x0, y0 = np.floor(points.min(axis=0)).astype(int)
            x1, y1 = np.ceil(points.max(axis=0)).astype(int)
            shape = dlib.full_object_detection(
                dlib.rectangle(int(x0), int(y0), int(x1), int(y1)),
                [dlib.point(int(round(x)), int(round(y))) for x, y in points])
            descriptor = self._encoder.compute_face_descriptor(np.ascontiguousarray(frame), shape)
            out.append(np.asarray(descriptor, dtype=np.float64))
        return out

    # -- the metrics
    @staticmethod
    def akd_from_landmarks(pred: Sequence[np.ndarray | None],
                           ref: Sequence[np.ndarray | None]) -> LandmarkScore:
        """AKD from per-frame landmarks: mean over pairs of the mean point distance (px)."""
        return _mean_distance(pred, ref, lambda p, r: float(np.linalg.norm(p - r, axis=1).mean()))

    @staticmethod
    def aed_from_embeddings(pred: Sequence[np.ndarray | None],
                            ref: Sequence[np.ndarray | None]) -> LandmarkScore:
        """AED from per-frame embeddings: mean over pairs of the L2 distance."""
        return _mean_distance(pred, ref, lambda p, r: float(np.linalg.norm(p - r)))

    def akd(self, pred_frames: Sequence[np.ndarray], ref_frames: Sequence[np.ndarray]
            ) -> LandmarkScore:
        """Average keypoint distance in pixels of the frames' own resolution.

        Args:
            pred_frames, ref_frames: equally many H×W×3 uint8 RGB frames.

        Returns:
            (mean px | None, pairs where both have a face, pairs skipped).
        """
        return self.akd_from_landmarks(self.landmarks(pred_frames), self.landmarks(ref_frames))

    def aed(self, pred_frames: Sequence[np.ndarray], ref_frames: Sequence[np.ndarray]
            ) -> LandmarkScore:
        """Average euclidean distance of dlib face embeddings (identity preservation).

        For scale: dlib calls two faces the same person below a distance of 0.6.

        Args:
            pred_frames, ref_frames: equally many H×W×3 uint8 RGB frames.

        Returns:
            (mean L2 | None, pairs where both have a face, pairs skipped).
        """
        return self.aed_from_embeddings(self.embeddings(pred_frames), self.embeddings(ref_frames))


def landmark_metrics_or_reason() -> tuple[FaceLandmarkMetrics | None, str | None]:
    """(FaceLandmarkMetrics, None), or (None, reason) when dlib is unusable here."""
    try:
        return FaceLandmarkMetrics(), None
    except MetricUnavailableError as exc:
        return None, f"{exc}; AKD/AED not computed"
