"""Dev evaluation of the refiner: the warp alone, warp + refiner and the frozen keyframe, scored.

The receiver's path on cached dev landmarks (motion unquantised): PSNR, LPIPS-AlexNet and the
mouth/eye region L1s per segment and their mean (``python -m training.refiner evaluate``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from codec.models.refiner import REFINER_FORMAT, Refiner, load_refiner
from training.dataset import read_segment
from training.refiner_data import landmark_warp_model, region_masks, warp_inputs

log = logging.getLogger("training.refiner")  # one logger name for the whole refiner CLI


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """B×3×H×W in [0, 1] -> B×H×W×3 uint8 (rounded, as a display would get it)."""
    return (images.float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _region_l1(pred: np.ndarray, real: np.ndarray, masks: np.ndarray) -> float:
    """Mean |pred − real| (in [0, 1] units) over the mask pixels, all channels; N×H×W masks."""
    diff = np.abs(pred.astype(np.float32) - real.astype(np.float32)).mean(axis=3) / 255.0
    return float((diff * masks).sum() / max(float(masks.sum()), 1.0))


def _summary(row: dict[str, Any]) -> str:
    """One log line of scores: PSNR (and LPIPS) per method, then the region L1s."""
    parts = []
    for name in ("warp", "refined", "frozen"):
        lpips = f" {row[name + '_lpips']:.4f}" if f"{name}_lpips" in row else ""
        parts.append(f"{name} {row[name + '_psnr']:5.2f} dB{lpips}")
    return (" | ".join(parts) + f" | mouth L1 {row['warp_mouth_l1']:.4f} -> {row['refined_mouth_l1']:.4f}"
            f" | eyes L1 {row['warp_eyes_l1']:.4f} -> {row['refined_eyes_l1']:.4f}")


def evaluate(data: Path, weights: Path | None = None, *, every: int = 10, frames: int = 250,
             device: str = "cpu", batch: int = 16, segments: int | None = None,
             use_lpips: bool = True) -> dict[str, Any]:
    """Dev scores of the warp alone, warp + refiner and the frozen keyframe.

    Keyframe = frame 0 of each dev segment; scored frames = every ``every``-th of the first
    ``frames`` (not 0). Motion is the driving landmarks' (from the dev npz), unquantised.
    Without ``weights`` the refiner is a fresh one, i.e. the identity (a pipeline check).
    Scores per segment and their mean: ``{warp,refined,frozen}_{psnr,lpips}`` (LPIPS-AlexNet
    unless ``use_lpips`` is off) and ``{warp,refined}_{mouth,eyes}_l1`` (mean |error| in
    [0, 1] over :func:`region_masks` of the true driving landmarks).
    """
    from evaluation.metrics import frames_to_tensor, lpips_model, psnr_frames

    data = Path(data)
    index = json.loads((data / "index.json").read_text(encoding="utf-8"))
    if index.get("split") == "train":
        raise ValueError(f"{data} is the train split: evaluate on dev")
    torch_device = torch.device(device)
    if weights is not None:
        refiner, meta = load_refiner(weights, torch_device)
    else:
        refiner, meta = Refiner().to(torch_device).eval(), {"format": REFINER_FORMAT, "config": Refiner().config}
    lpips = lpips_model(torch_device) if use_lpips else None
    model = landmark_warp_model()
    rows = []
    for segment in index["segments"][:segments]:
        video, landmarks = read_segment(data, segment)
        n = min(len(video), frames)
        picks = list(range(every, n, every))
        if not picks:
            continue
        warped, maps, masks = zip(*(warp_inputs(model, video[0], landmarks[0], landmarks[i]) for i in picks))
        real = video[picks]
        refined = []
        with torch.inference_mode():
            for s in range(0, len(picks), batch):
                part = slice(s, s + batch)
                count = len(warped[part])
                out = refiner(frames_to_tensor(np.stack(warped[part])).float().to(torch_device),
                              frames_to_tensor(video[0]).float().to(torch_device).expand(count, -1, -1, -1),
                              torch.from_numpy(np.stack(maps[part])).to(torch_device),
                              torch.from_numpy(np.stack(masks[part]).transpose(0, 3, 1, 2)).to(torch_device))
                refined.append(_to_uint8(out))
        ours, plain = np.concatenate(refined), np.stack(warped)
        frozen = np.repeat(video[:1], len(real), axis=0)
        mouth, eyes = (np.stack(m) for m in zip(*(region_masks(landmarks[i], model.image_size) for i in picks)))
        row: dict[str, Any] = {"segment": segment["name"], "scored": len(picks)}
        with torch.inference_mode():
            target = frames_to_tensor(real).float().to(torch_device)
            for name, pred in (("warp", plain), ("refined", ours), ("frozen", frozen)):
                row[f"{name}_psnr"] = float(psnr_frames(pred, real).mean())
                if lpips is not None:
                    pred_t = frames_to_tensor(pred).float().to(torch_device)
                    row[f"{name}_lpips"] = float(lpips(pred_t, target).mean())
        for name, pred in (("warp", plain), ("refined", ours)):
            row[f"{name}_mouth_l1"] = _region_l1(pred, real, mouth)
            row[f"{name}_eyes_l1"] = _region_l1(pred, real, eyes)
        rows.append(row)
        log.info("%-44s %s", row["segment"][:44], _summary(row))
    if not rows:
        raise ValueError(f"{data}: no segment had a frame to score (every={every}, frames={frames})")
    keys = [k for k in rows[0] if k not in ("segment", "scored")]
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    log.info("MEAN %s", _summary(mean))
    return {"weights": str(weights) if weights is not None else None, "refiner": meta, "every": every,
            "frames": frames, "motion": "unquantised, from the cached dev landmarks",
            "mean": mean, "segments": rows}
