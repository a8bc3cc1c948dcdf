"""Dev-set evaluation of a trained model against the frozen-keyframe baseline.

Protocol (per dev clip, first ``frames`` frames): keyframe = frame 1 (index 0); every
later frame is rebuilt from its *own* motion — ``estimate_motion`` on the real frame,
then ``render`` against the keyframe's cached source — exactly what a receiver does with
lossless motion. The baseline shows frame 1 forever. Both are scored on frames 2..N
(index ≥ 1): frame 1 itself is the keyframe the receiver already has, and the frozen
baseline would score an infinite PSNR on it.

Metrics, all from ``evaluation.metrics`` (the project's one definition of each): PSNR (RGB,
images in [0, 1]), SSIM (gaussian window, equals skimage's ``structural_similarity(...,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1,
channel_axis=2)``), LPIPS (AlexNet v0.1, only when the converted backbones are present)
and AKD (mean pixel distance of the 68 dlib landmarks of output and real frame, only
when dlib is importable; ``akd_frames`` counts the frames where both had a face).
Unavailable metrics are reported as the string "n/a" with the reason in ``notes``.

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

from codec.models import FaceVid2Vid
from evaluation.metrics import FaceLandmarkMetrics, landmark_metrics_or_reason, lpips_model, psnr, ssim
from training.dataset import read_video_rgb, video_files

log = logging.getLogger(__name__)

Clip = tuple[str, np.ndarray, "np.ndarray | None", "np.ndarray | None"]


# ---------------------------------------------------------------------------- metrics
def lpips_or_reason(device: torch.device) -> tuple[Any, str | None]:
    """(LPIPS module on ``device``, None), or (None, reason) when the backbone is missing."""
    try:
        return lpips_model(device), None
    except Exception as exc:  # missing module or WeightsError subclass: report, never crash
        return None, (f"LPIPS unavailable ({type(exc).__name__}: {exc}); run "
                      "`python -m training.backbones setup`")


# ---------------------------------------------------------------------------- clips

def iter_dev_clips(dev: Path | str, max_frames: int | None = None) -> Iterator[Clip]:
    """(name, frames N×H×W×3 uint8, landmarks | None, pose | None) for each dev clip.

    ``dev`` is a dataset root (read with ``training.dataset.DevClips``), one video
    file, or a directory of video files (read with OpenCV; for quick experiments).
    """
    dev = Path(dev)
    videos = video_files(dev)
    if videos:
        for video in videos:
            yield video.stem, read_video_rgb(video, max_frames), None, None
        return
    from training.dataset import DevClips

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
    faces, reason = landmark_metrics_or_reason() if use_akd else (None, "AKD disabled")
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
            # the real frames' landmarks are found once and shared by both rows
            real_landmarks = faces.landmarks(real_u8) if faces is not None else []
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
                if faces is not None:
                    score = FaceLandmarkMetrics.akd_from_landmarks(faces.landmarks(images_u8),
                                                                   real_landmarks)
                    metrics["akd"] = score.mean if score.mean is not None else "n/a"
                    metrics["akd_frames"] = score.frames
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
