"""evaluation.metrics against independent references.

PSNR and SSIM against scikit-image and hand-computed values; MS-SSIM against a plain
numpy/scipy transcription of Wang, Simoncelli & Bovik 2003 written here (2-D gaussian
correlation, explicit MATLAB-style 2×2 'symmetric' downsampling); AKD on a translation
whose answer is known; AED on ordering only (one face photo is all skimage ships).
scikit-image, SciPy and OpenCV are imported plainly (dependencies, on the GPU machine's image
too). The dlib tests skip where dlib is missing (the GPU machine has none), but fail under CI,
which installs it.
"""

from __future__ import annotations

import math
import sys

import cv2
import numpy as np
import pytest
import torch
from conftest import skip_or_fail_in_ci
from scipy import ndimage
from skimage import data as skimage_data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from evaluation.metrics import (
    MS_SSIM_MIN_SIDE,
    FaceLandmarkMetrics,
    LandmarkScore,
    MetricUnavailableError,
    landmark_metrics_or_reason,
    lpips_model,
    ms_ssim,
    ms_ssim_frames,
    psnr,
    psnr_frames,
    ssim,
    ssim_frames,
)

SKIMAGE_TOLERANCE = 1e-4  # the brief's bound; a faithful port lands near 1e-7


def _astronaut() -> np.ndarray:
    return skimage_data.astronaut()  # 512×512×3 uint8, one frontal face


def _t(image: np.ndarray) -> torch.Tensor:
    """H×W×3 float in [0, 1] (or N×H×W×3) -> N×3×H×W float64."""
    array = image if image.ndim == 4 else image[None]
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64)).permute(0, 3, 1, 2)


def _variants(seed: int = 0) -> dict[str, np.ndarray]:
    """Astronaut in [0, 1] and altered copies: noisy, blurred, shifted."""
    base = _astronaut().astype(np.float64) / 255.0
    rng = np.random.default_rng(seed)
    return {
        "base": base,
        "noisy": np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1),
        "blurred": cv2.GaussianBlur(base, (0, 0), 2.0),
        "shifted": np.roll(base, (3, -2), axis=(0, 1)),
    }


# ---------------------------------------------------------------------------- PSNR
def test_psnr_hand_computed() -> None:
    target = torch.zeros(2, 3, 16, 16, dtype=torch.float64)
    pred = target.clone()
    # image 0: errors 0.1, 0.2, 0 on R, G, B -> MSE (0.01 + 0.04) / 3 -> 10·log10(60) dB
    pred[0, 0] += 0.1
    pred[0, 1] += 0.2
    # image 1: identical -> the 100 dB cap, not inf
    values = psnr(pred, target)
    assert values.shape == (2,)
    assert float(values[0]) == pytest.approx(10 * math.log10(60.0), abs=1e-9)
    assert float(values[1]) == pytest.approx(100.0)
    assert float(psnr(torch.full((1, 3, 8, 8), 0.5), torch.zeros(1, 3, 8, 8))[0]) == \
        pytest.approx(10 * math.log10(4.0), abs=1e-6)


def test_psnr_matches_skimage() -> None:
    images = _variants()
    for name in ("noisy", "blurred", "shifted"):
        expected = peak_signal_noise_ratio(images["base"], images[name], data_range=1.0)
        assert float(psnr(_t(images[name]), _t(images["base"]))[0]) == pytest.approx(expected, abs=1e-9)
    # uint8 frames (data range 255 there) give the same number
    a = _astronaut()
    b = np.clip(a.astype(int) + np.random.default_rng(1).integers(-9, 10, a.shape), 0, 255).astype(np.uint8)
    assert psnr_frames(b, a)[0] == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), abs=1e-9)


# ---------------------------------------------------------------------------- SSIM
def _skimage_ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    return float(structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False, data_range=data_range,
                                       channel_axis=-1))


def test_ssim_matches_skimage_on_real_images() -> None:
    images = _variants()
    names = ["noisy", "blurred", "shifted"]
    ours = ssim(_t(np.stack([images[n] for n in names])), _t(np.stack([images["base"]] * 3)))
    for name, value in zip(names, ours):
        expected = _skimage_ssim(images[name], images["base"])
        assert abs(float(value) - expected) < SKIMAGE_TOLERANCE, (name, float(value), expected)
    assert float(ssim(_t(images["base"]), _t(images["base"]))[0]) == pytest.approx(1.0, abs=1e-12)


def test_ssim_matches_skimage_on_random_images() -> None:
    rng = np.random.default_rng(0)
    for shape in ((40, 48, 3), (37, 53, 3), (11, 11, 3)):  # 11×11: a single valid window
        base = rng.random(shape)
        smooth = cv2.GaussianBlur(base, (7, 7), 2.0)
        noisy = np.clip(smooth + rng.normal(0, 0.05, shape), 0, 1)
        for a, b in ((base, rng.random(shape)), (smooth, noisy)):
            expected = _skimage_ssim(a, b)
            assert abs(float(ssim(_t(a), _t(b))[0]) - expected) < SKIMAGE_TOLERANCE, shape


def test_ssim_frames_uint8_matches_skimage() -> None:
    a = _astronaut()[::2, ::2]
    b = np.ascontiguousarray(a[:, ::-1])
    assert abs(ssim_frames(b, a)[0] - _skimage_ssim(b, a, data_range=255)) < SKIMAGE_TOLERANCE
    with pytest.raises(ValueError):
        ssim(torch.rand(1, 3, 10, 40), torch.rand(1, 3, 10, 40))  # smaller than the window


# ---------------------------------------------------------------------------- MS-SSIM
PAPER_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _reference_ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM of two H×W×3 float images in [0, 1], straight from the 2003 paper.

    Per channel: 11×11 gaussian (σ 1.5) as a 2-D kernel, statistics on the valid region,
    l = (2μxμy + C1)/(μx² + μy² + C1), cs = (2σxy + C2)/(σx² + σy² + C2); scale j+1 is
    scale j low-passed by a 2×2 mean with symmetric borders and subsampled by 2 (the
    reference MATLAB). MS-SSIM = Π_{j<5} mean(cs_j)^w_j · mean(l_5·cs_5)^w_5; channels averaged.
    """
    grid = np.arange(-5, 6, dtype=np.float64)
    kernel = np.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) / (2 * 1.5**2))
    kernel /= kernel.sum()
    c1, c2 = 0.01**2, 0.03**2

    def filt(image: np.ndarray) -> np.ndarray:
        return ndimage.correlate(image, kernel, mode="constant")[5:-5, 5:-5]  # valid part

    def downsample(image: np.ndarray) -> np.ndarray:
        padded = np.pad(image, ((0, 1), (0, 1)), mode="symmetric")
        low = (padded[:-1, :-1] + padded[1:, :-1] + padded[:-1, 1:] + padded[1:, 1:]) / 4
        return low[::2, ::2]

    per_channel = []
    for channel in range(a.shape[2]):
        x, y = a[..., channel], b[..., channel]
        product = 1.0
        for scale, weight in enumerate(PAPER_WEIGHTS):
            mx, my = filt(x), filt(y)
            sxx, syy, sxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
            cs = (2 * sxy + c2) / (sxx + syy + c2)
            if scale < 4:
                product *= max(cs.mean(), 0.0) ** weight
                x, y = downsample(x), downsample(y)
            else:
                lum = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
                product *= max((lum * cs).mean(), 0.0) ** weight
        per_channel.append(product)
    return float(np.mean(per_channel))


def test_ms_ssim_matches_reference() -> None:
    images = _variants()
    for name in ("noisy", "blurred", "shifted"):
        # 256×256: the benchmark size (16 px at scale 5)
        a, b = images[name][::2, ::2], images["base"][::2, ::2]
        assert float(ms_ssim(_t(a), _t(b))[0]) == pytest.approx(_reference_ms_ssim(a, b), abs=1e-9)
    # odd sides at several scales (200→100→50→25→13, 231→116→58→29→15) and random content
    rng = np.random.default_rng(3)
    a = images["base"][100:300, 150:381]
    for b in (np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1), rng.random(a.shape)):
        assert float(ms_ssim(_t(b), _t(a))[0]) == pytest.approx(_reference_ms_ssim(b, a), abs=1e-9)


def test_ms_ssim_identity_blur_monotone_and_size_limit() -> None:
    base = _astronaut()[::2, ::2]
    assert ms_ssim_frames(base, base)[0] == pytest.approx(1.0, abs=1e-12)
    blurred = np.stack([cv2.GaussianBlur(base, (0, 0), sigma) for sigma in (0.5, 1.0, 2.0, 4.0, 8.0)])
    values = ms_ssim_frames(blurred, np.stack([base] * 5))
    assert np.all(np.diff(values) < 0), values
    assert 0.0 < values[-1] < values[0] < 1.0
    side = MS_SSIM_MIN_SIDE
    assert ms_ssim(torch.rand(1, 3, side, side), torch.rand(1, 3, side, side)).shape == (1,)
    with pytest.raises(ValueError, match="MS-SSIM needs"):
        ms_ssim(torch.rand(1, 3, side - 1, 256), torch.rand(1, 3, side - 1, 256))


# ---------------------------------------------------------------------------- LPIPS
def test_lpips_model_is_shared_and_zero_on_identity() -> None:
    from codec.errors import WeightsError

    try:
        model = lpips_model("cpu")
    except WeightsError as exc:
        pytest.skip(f"LPIPS backbone not set up here: {exc}")
    assert lpips_model(torch.device("cpu")) is model  # loaded once per device
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert float(model(image, image)[0]) == pytest.approx(0.0, abs=1e-7)
        assert float(model(image, image.flip(-1))[0]) > 0.0


# ---------------------------------------------------------------------------- AKD / AED
def test_akd_aed_from_features_hand_computed() -> None:
    """The averaging itself, without dlib: unequal per-point distances, missing faces."""
    ref = np.zeros((68, 2))
    pred = ref.copy()
    pred[:34] += (3.0, 4.0)  # half the points 5 px off, half exact: mean 2.5 (RMS would be 3.54)
    score = FaceLandmarkMetrics.akd_from_landmarks([pred, ref, None], [ref, ref, ref])
    assert score == LandmarkScore(pytest.approx(1.25), 2, 1)  # (2.5 + 0) / 2 pairs
    assert FaceLandmarkMetrics.akd_from_landmarks([None], [ref]) == LandmarkScore(None, 0, 1)
    a, b = np.zeros(128), np.zeros(128)
    b[:2] = (3.0, 4.0)  # L2 5 (L1 would be 7, squared L2 25)
    assert FaceLandmarkMetrics.aed_from_embeddings([b, a], [a, None]) == LandmarkScore(5.0, 1, 1)


@pytest.fixture(scope="module")
def faces() -> FaceLandmarkMetrics:
    try:
        import dlib  # noqa: F401
    except ImportError as exc:
        skip_or_fail_in_ci(f"dlib is not importable ({exc})")
    return FaceLandmarkMetrics()


@pytest.fixture(scope="module")
def head() -> np.ndarray:
    # The head region only: on the full photo dlib's HOG detector also fires (weakly) on
    # the mission patch with a 1 px larger box, and detect_landmarks keeps the largest box.
    return np.ascontiguousarray(_astronaut()[0:300, 80:380])


def test_akd_known_translation(faces: FaceLandmarkMetrics, head: np.ndarray) -> None:
    shifts = [(7, -4), (-5, 3), (12, 9)]
    moved = []
    for dx, dy in shifts:
        matrix = np.float32([[1, 0, dx], [0, 1, dy]])
        moved.append(cv2.warpAffine(head, matrix, head.shape[1::-1], borderMode=cv2.BORDER_REFLECT))
    ref_landmarks = faces.landmarks([head])
    for (dx, dy), frame in zip(shifts, moved):
        score = faces.akd([frame], [head])
        assert score.frames == 1 and score.skipped == 0
        assert abs(score.mean - math.hypot(dx, dy)) < 1.0, (dx, dy, score)
        # the landmarks moved by (dx, dy) on average, not just by that distance
        offset = (faces.landmarks([frame])[0] - ref_landmarks[0]).mean(axis=0)
        assert np.allclose(offset, (dx, dy), atol=1.0), offset
    assert faces.akd([head, head], [head, head]) == LandmarkScore(0.0, 2, 0)


def test_akd_counts_missing_faces(faces: FaceLandmarkMetrics, head: np.ndarray) -> None:
    blank = np.full_like(head, 127)
    shifted = np.roll(head, (0, 6), axis=(0, 1))
    score = faces.akd([shifted, blank, head], [head, head, blank])
    assert score.frames == 1 and score.skipped == 2
    assert abs(score.mean - 6.0) < 1.0  # the average is over the one scored pair only
    assert faces.akd([blank, blank], [head, head]) == LandmarkScore(None, 0, 2)
    with pytest.raises(ValueError):
        faces.akd([head], [head, head])


def test_aed_identity_ordering_and_missing(faces: FaceLandmarkMetrics, head: np.ndarray) -> None:
    shifted = np.roll(head, (5, 3), axis=(0, 1))
    flipped = np.ascontiguousarray(head[:, ::-1])
    blurred = cv2.GaussianBlur(head, (0, 0), 4.0)
    blank = np.full_like(head, 127)
    same = faces.aed([head], [head])
    assert same == LandmarkScore(0.0, 1, 0)
    moved, mirror, soft = (faces.aed([image], [head]).mean for image in (shifted, flipped, blurred))
    # a translation is undone by the landmark alignment; a mirror image or a heavy blur is
    # a different-looking face: ordering only, as there is no second person to compare with
    assert 0.0 < moved < 0.1 < mirror and 0.1 < soft, (moved, mirror, soft)
    score = faces.aed([head, blank, flipped], [head, head, head])
    assert score.frames == 2 and score.skipped == 1
    assert score.mean == pytest.approx(mirror / 2)
    assert faces.aed([blank], [head]) == LandmarkScore(None, 0, 1)


def test_without_dlib_a_typed_error_and_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dlib", None)  # makes `import dlib` raise ImportError
    with pytest.raises(MetricUnavailableError, match="dlib"):
        FaceLandmarkMetrics()
    metrics, reason = landmark_metrics_or_reason()
    assert metrics is None and "dlib" in reason and "not computed" in reason
