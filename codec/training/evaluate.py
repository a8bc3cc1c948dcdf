"""Dev-set evaluation of a trained model against the frozen-keyframe baseline.

Protocol (per dev clip, first ``frames`` frames): keyframe = frame 1 (index 0); every
later frame is rebuilt from its *own* motion — ``estimate_motion`` on the real frame,
then ``render`` against the keyframe's cached source — exactly what a receiver does with
lossless motion. The baseline shows frame 1 forever. Both are scored on frames 2..N
(index ≥ 1): frame 1 itself is the keyframe the receiver already has, and the frozen
baseline would score an infinite PSNR on it.

Metrics: PSNR (RGB, images in [0, 1]), SSIM (our gaussian-window SSIM, matches
skimage's ``structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1, channel_axis=2)``), LPIPS (AlexNet v0.1,
only when the converted backbones are present) and AKD (mean pixel distance of the 68
dlib landmarks of output and real frame, only when dlib is importable). Unavailable
metrics are reported as the string "n/a" with the reason in ``notes``.

Imports torch, numpy and OpenCV only; LPIPS, the dataset and dlib are imported lazily.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from codec.models import FaceVid2Vid

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
Clip = tuple[str, np.ndarray, "np.ndarray | None", "np.ndarray | None"]


# ---------------------------------------------------------------------------- metrics
def psnr(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image of B×3×H×W tensors in [0, 1] (MSE over all RGB values) -> B.

    Capped at 100 dB so identical images do not give inf.
    """
    mse = ((prediction.float() - target.float()) ** 2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


def _gaussian_window(sigma: float, truncate: float, device: torch.device) -> torch.Tensor:
    # scipy.ndimage.gaussian_filter's kernel: radius int(truncate·σ + 0.5), normalised.
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def ssim(prediction: torch.Tensor, target: torch.Tensor, sigma: float = 1.5,
         data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM per image of B×C×H×W tensors -> B (Wang et al. 2004, gaussian window).

    Local statistics use a separable gaussian (σ = 1.5, truncated at 3.5σ: 11 taps) in
    "valid" mode, i.e. only where the window fits — the same pixels skimage keeps after
    cropping its reflect-padded border — with population (not sample) covariances,
    K1 = 0.01, K2 = 0.03. Computed in float64 so it agrees with skimage to ~1e-6.
    """
    x = prediction.double()
    y = target.double()
    channels = x.shape[1]
    window = _gaussian_window(sigma, 3.5, x.device)
    taps = window.numel()
    if min(x.shape[-2:]) < taps:
        raise ValueError(f"images of {tuple(x.shape[-2:])} are smaller than the {taps}-tap window")
    kernel_h = window.view(1, 1, 1, taps).repeat(channels, 1, 1, 1)
    kernel_v = window.view(1, 1, taps, 1).repeat(channels, 1, 1, 1)

    def blur(image: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(image, kernel_h, groups=channels), kernel_v, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(1).float()


def landmark_detector_or_reason() -> tuple[Any, str | None]:
    """(detect_landmarks, None) when dlib and its model are usable, else (None, reason)."""
    try:
        import dlib  # noqa: F401  (lazy: absent on the GPU machine)

        from codec.facecrop import detect_landmarks, landmark_model_path

        landmark_model_path()
    except Exception as exc:  # ImportError, FaceNotFoundError (no model file), ...
        return None, f"dlib landmarks unavailable ({type(exc).__name__}: {exc}); AKD not computed"
    return detect_landmarks, None


def lpips_or_reason(device: torch.device) -> tuple[Any, str | None]:
    """(LPIPS module on ``device``, None), or (None, reason) when the backbone is missing."""
    try:
        from codec.training.lpips import LPIPS

        return LPIPS.from_cache().to(device).eval(), None
    except Exception as exc:  # missing module or WeightsError subclass: report, never crash
        return None, (f"LPIPS unavailable ({type(exc).__name__}: {exc}); run "
                      "`python -m codec.training.backbones setup`")


# ---------------------------------------------------------------------------- clips
def read_video_rgb(path: Path, max_frames: int | None = None) -> np.ndarray:
    """N×H×W×3 uint8 RGB frames of a video file read with OpenCV."""
    capture = cv2.VideoCapture(str(path))
    frames: list[np.ndarray] = []
    try:
        while max_frames is None or len(frames) < max_frames:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
    if not frames:
        raise ValueError(f"no frames could be read from {path}")
    return np.stack(frames)


def iter_dev_clips(dev: Path | str, max_frames: int | None = None) -> Iterator[Clip]:
    """(name, frames N×H×W×3 uint8, landmarks | None, pose | None) for each dev clip.

    ``dev`` is a dataset root (read with ``codec.training.dataset.DevClips``), one video
    file, or a directory of video files (read with OpenCV; for quick experiments).
    """
    dev = Path(dev)
    videos: list[Path] = []
    if dev.is_file() and dev.suffix.lower() in VIDEO_SUFFIXES:
        videos = [dev]
    elif dev.is_dir():
        videos = sorted(p for p in dev.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if videos:
        for video in videos:
            yield video.stem, read_video_rgb(video, max_frames), None, None
        return
    from codec.training.dataset import DevClips

    for name, frames, landmarks, pose in DevClips(dev):
        yield name, frames, landmarks, pose


def _to_tensor(frames: np.ndarray, size: int, device: torch.device) -> torch.Tensor:
    """N×H×W×3 uint8 -> N×3×size×size float in [0, 1] (INTER_AREA when resizing)."""
    if frames.shape[1] != size or frames.shape[2] != size:
        frames = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA)
                           for f in frames])
    return torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float() / 255.0


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """B×3×H×W in [0, 1] -> B×H×W×3 uint8 RGB."""
    return (images.detach().float().clamp(0, 1) * 255.0 + 0.5).byte().permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def reconstruct_clip(model: FaceVid2Vid, frames: torch.Tensor, batch: int = 16,
                     autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Rebuild frames[1:] from keyframe frames[0] and each frame's own motion.

    frames: N×3×H×W in [0, 1] on the model's device -> (N−1)×3×H×W in [0, 1].
    """
    device_type = frames.device.type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32,
                        enabled=autocast_dtype is not None):
        source = model.prepare_source(frames[:1])
        outputs = []
        for start in range(1, frames.shape[0], batch):
            chunk = frames[start:start + batch]
            pose = model.estimate_motion(chunk)
            outputs.append(model.render(source, pose.rotation(), pose.translation,
                                        pose.expression).float().clamp(0, 1))
    return torch.cat(outputs)


def _akd(detect: Any, outputs: np.ndarray, reals_landmarks: list[np.ndarray | None]
         ) -> tuple[float | None, int]:
    """Mean landmark distance over frames where both faces are found, and that count."""
    distances = []
    for image, real in zip(outputs, reals_landmarks):
        if real is None:
            continue
        found = detect(image)
        if found is None:
            continue
        distances.append(float(np.linalg.norm(found - real, axis=1).mean()))
    return (float(np.mean(distances)) if distances else None), len(distances)


def _strip(real: np.ndarray, ours: np.ndarray, frozen: np.ndarray, rows: int = 4) -> np.ndarray:
    """Rows of input | ours | frozen keyframe at evenly spaced frames -> H'×W'×3 RGB."""
    picks = np.linspace(0, len(real) - 1, num=min(rows, len(real))).round().astype(int)
    return np.concatenate([np.concatenate([real[i], ours[i], frozen[i]], axis=1) for i in picks])


def _mean(values: Iterable[float | None]) -> float | str:
    numbers = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return float(np.mean(numbers)) if numbers else "n/a"


def evaluate_model(model: FaceVid2Vid, dev: Path | str, frames: int = 250,
                   out_dir: Path | str | None = None, device: torch.device | str | None = None,
                   batch: int = 16, max_clips: int | None = None, use_lpips: bool = True,
                   use_akd: bool = True, autocast_dtype: torch.dtype | None = None
                   ) -> dict[str, Any]:
    """Score ``model`` on the dev clips next to the frozen keyframe; write JSON and strips.

    Returns {"clips": {name: {"frames", "ours": {...}, "frozen_keyframe": {...}}},
    "average": {"ours": {...}, "frozen_keyframe": {...}}, "notes": [...]} where each
    metrics dict has psnr, ssim, lpips, akd (floats or "n/a"). With ``out_dir``, writes
    ``metrics.json`` and ``<clip>.png`` (input | ours | frozen keyframe) there.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    notes: list[str] = ["scored on frames 2..N (frame 1 is the keyframe)"]
    lpips_net, reason = lpips_or_reason(device) if use_lpips else (None, "LPIPS disabled")
    if reason:
        notes.append(reason)
    detect, reason = landmark_detector_or_reason() if use_akd else (None, "AKD disabled")
    if reason:
        notes.append(reason)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    size = model.config.image_size
    results: dict[str, Any] = {}
    try:
        for clip_index, (name, clip, _landmarks, _pose) in enumerate(iter_dev_clips(dev, frames)):
            if max_clips is not None and clip_index >= max_clips:
                break
            clip = clip[:frames]
            if len(clip) < 2:
                notes.append(f"{name}: skipped, fewer than 2 frames")
                continue
            real = _to_tensor(clip, size, device)
            ours = reconstruct_clip(model, real, batch=batch, autocast_dtype=autocast_dtype)
            target = real[1:]
            frozen = real[:1].expand_as(target)
            entry: dict[str, Any] = {"frames": int(target.shape[0])}
            real_u8, ours_u8, frozen_u8 = _to_uint8(target), _to_uint8(ours), _to_uint8(frozen)
            real_landmarks = [detect(f) for f in real_u8] if detect is not None else []
            for label, images, images_u8 in (("ours", ours, ours_u8),
                                             ("frozen_keyframe", frozen, frozen_u8)):
                metrics: dict[str, Any] = {}
                metrics["psnr"] = float(torch.cat([psnr(images[i:i + batch], target[i:i + batch])
                                                   for i in range(0, len(target), batch)]).mean())
                metrics["ssim"] = float(torch.cat([ssim(images[i:i + batch], target[i:i + batch])
                                                   for i in range(0, len(target), batch)]).mean())
                if lpips_net is not None:
                    with torch.no_grad():
                        values = torch.cat([lpips_net(images[i:i + batch], target[i:i + batch]).flatten()
                                            for i in range(0, len(target), batch)])
                    metrics["lpips"] = float(values.mean())
                else:
                    metrics["lpips"] = "n/a"
                if detect is not None:
                    akd, found = _akd(detect, images_u8, real_landmarks)
                    metrics["akd"] = akd if akd is not None else "n/a"
                    metrics["akd_frames"] = found
                else:
                    metrics["akd"] = "n/a"
                entry[label] = metrics
            results[name] = entry
            if out is not None:
                strip = _strip(real_u8, ours_u8, frozen_u8)
                cv2.imwrite(str(out / f"{name}.png"), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
            log.info("dev %s: PSNR ours %.2f / frozen %.2f dB, SSIM %.3f / %.3f", name,
                     entry["ours"]["psnr"], entry["frozen_keyframe"]["psnr"],
                     entry["ours"]["ssim"], entry["frozen_keyframe"]["ssim"])
    finally:
        model.train(was_training)
    average = {label: {key: _mean(r[label].get(key) for r in results.values())
                       for key in ("psnr", "ssim", "lpips", "akd")}
               for label in ("ours", "frozen_keyframe")}
    report = {"clips": results, "average": average, "frames_per_clip": frames, "notes": notes}
    if out is not None:
        (out / "metrics.json").write_text(json.dumps(report, indent=2))
    return report
