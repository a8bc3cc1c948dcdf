"""Train and evaluate the landmark-warp refiner (:class:`codec.models.refiner.Refiner`).

    python -m training.refiner train --data cache/train256 --out out/refiner \\
        --minutes 5 --device cpu --batch 4 --workers 1 --threads 1 --perceptual lpips --preload
    python -m training.refiner evaluate --weights out/refiner/refiner.safetensors \\
        --data cache/dev256 --every 10 --json out/refiner/eval.json

Data: random (keyframe i, driving j) pairs of one train segment, i ≠ j anywhere in it.
The landmark family warps the keyframe to the driving frame's motion on the fly, in the
DataLoader workers (CPU, ~5 ms a pair), exactly as the receiver does: the motion comes from
the driving frame's cached landmarks, and the landmark-mask input is drawn from the 68
points the *receiver* rebuilds from that motion (it never sees the true ones). The true
driving landmarks only place the loss's region weight. No augmentation: a horizontal flip
would need the left/right landmark remap, and colour jitter would teach nothing the warp
does not already carry.

Loss: L1 with the mouth and eye regions weighted ×5 (``--region-weight``), plus a
perceptual term: multi-scale VGG16 (``--perceptual vgg``, the vid2vid trainer's loss),
LPIPS-AlexNet (``lpips``: ~5× cheaper on the CPU, for CPU runs; it is also the evaluation
metric, so say so next to its scores) or none. Adam, lr 2e-4, betas (0.9, 0.999): the refiner is a plain
regression net with no GAN, so the standard betas apply. bf16 autocast on CUDA.

Deterministic: the refiner's init comes from ``--seed``; pair ``k`` is a pure function of
(seed, k), and a run started with ``--init-from`` continues at the sample count stored in
that file, so chained chunks see new pairs.

Export: ``refiner.safetensors`` (fp16) with one metadata key ``facecodec``, JSON
``{"format": "facecodec-refiner-v1", "config": {...}, "trained": {...}}``.

Imports torch, numpy, OpenCV, safetensors and project modules that import nothing else
(the accelerator machine has no PyAV, aiortc or constriction).

Measured (default net, 0.59 M params; dev = cache/dev256, keyframe = frame 0; motion from the
cached landmarks, unquantised):

- CPU, 2 shared cores, ``--threads 1 --workers 1 --batch 4 --perceptual lpips --preload``,
  5 min: 354 steps, 1416 pairs, ~5 pairs/s. Dev (every 25th frame): PSNR 22.49 -> 22.62 dB,
  LPIPS 0.1466 -> 0.1454 (frozen keyframe 18.81 dB, 0.2381). It learns, barely.
- H200, ``bash training/refiner_chunk.sh`` with MINUTES=4 (batch 16, 14 workers, VGG
  ×0.01, bf16): 6836 steps, 109k pairs, ~480 pairs/s, setup with preload 9 s. Dev (every
  10th frame): PSNR 22.59 -> 23.21 dB, mouth L1 0.0555 -> 0.0518, eyes 0.0622 -> 0.0614,
  but LPIPS 0.1435 -> 0.1542 (worse: the L1 term makes it blur); frozen 19.01 dB, 0.2313.
- H200, the same chunk, 5 more minutes from that result with ``PERCEPTUAL=lpips`` (LPIPS ×1):
  17,722 steps, 284k pairs in all, ~600 pairs/s. Dev (every 10th frame): PSNR 22.59 -> 22.84
  dB, LPIPS 0.1435 -> 0.1462 (still worse than the warp; 5 segments much worse, e.g. the
  low-quality webcam clips headtrackr/capture4: 0.166 -> 0.236). Not shipped.
- H200, from identity, ``PERCEPTUAL=lpips EXTRA="--w-l1 0.1 --lr 3e-5"``, MINUTES=3: 6,895
  steps, 110k pairs. Dev (every 10th frame): PSNR 22.59 -> 22.74 dB, LPIPS 0.1435 -> 0.1388,
  one segment worse than the warp by 0.0013. Shipped (``codec/weights/landmark``; the
  chunk's defaults). With lr 1e-4: 22.94 dB / 0.1385 but 4 segments worse; 4.4 minutes
  more of that: 0.1469 (overfit: the train loss kept falling).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from codec.models.refiner import REFINER_FORMAT, Refiner, load_refiner
from training.refiner_data import RefinerPairs, worker_init
from training.refiner_eval import evaluate

log = logging.getLogger("training.refiner")

# warp_l1 / warp_region_l1: the same L1s of the plain warp on the same batch, so the gain is
# readable despite the batch-to-batch spread of the pairs' difficulty.
LOG_COLUMNS = ["step", "seconds", "samples", "loss", "l1", "region_l1", "perceptual", "warp_l1",
               "warp_region_l1", "samples_per_s"]


# ---------------------------------------------------------------------------- loss
def load_perceptual(kind: str, device: torch.device) -> nn.Module | None:
    """"vgg": frozen VGG16 features; "lpips": frozen LPIPS-AlexNet; "none": None."""
    if kind == "none":
        return None
    from evaluation.lpips import LPIPS
    from training.perceptual import VGGPerceptual

    if kind == "vgg":
        return VGGPerceptual.from_cache().to(device)
    if kind == "lpips":
        return LPIPS.from_cache().to(device)
    raise ValueError(f"unknown perceptual loss {kind!r} (vgg, lpips or none)")


def refiner_loss(output: torch.Tensor, target: torch.Tensor, region: torch.Tensor,
                 perceptual: nn.Module | None, *, region_weight: float = 5.0, w_l1: float = 1.0,
                 w_perceptual: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss (scalar) and its terms as floats.

    Args:
        output, target: B×3×H×W in [0, 1]; region: B×1×H×W in {0, 1}.
        perceptual: None, an LPIPS module (B distances) or VGGPerceptual (feature list).
    L1 weights region pixels ``region_weight`` times the rest; the perceptual term is
    LPIPS's batch mean or the 4-scale VGG loss of :func:`training.perceptual.multiscale_perceptual_loss`.
    """
    from evaluation.lpips import LPIPS
    from training.perceptual import multiscale_perceptual_loss

    diff = (output.float() - target.float()).abs()
    weight = 1.0 + (region_weight - 1.0) * region.float()
    weighted = (diff * weight).mean()
    terms = {"l1": float(diff.mean().detach()),
             "region_l1": float(((diff * region).sum() / (3.0 * region.sum()).clamp_min(1.0)).detach())}
    total = w_l1 * weighted
    if perceptual is not None:
        if isinstance(perceptual, LPIPS):
            p = perceptual(output, target).mean()
        else:
            p = multiscale_perceptual_loss(perceptual, output, target.detach())
        total = total + w_perceptual * p.float()
        terms["perceptual"] = float(p.detach())
    terms["loss"] = float(total.detach())
    return total, terms


def batch_to_device(batch: dict[str, torch.Tensor], device: torch.device
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(warped, keyframe, maps, landmarks, target, region) as float tensors on ``device``."""
    def image(name: str) -> torch.Tensor:
        return batch[name].to(device, non_blocking=True).float() / 255.0

    return (image("warped"), image("keyframe"), batch["maps"].to(device, non_blocking=True),
            batch["landmarks"].to(device, non_blocking=True), image("target"),
            batch["region"].to(device, non_blocking=True))


# ---------------------------------------------------------------------------- file I/O
def export_refiner(refiner: Refiner, path: Path, trained: dict[str, Any] | None = None) -> None:
    """fp16 safetensors with metadata ``facecodec`` = JSON {format, config, trained}; atomic."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().half().contiguous() for k, v in refiner.state_dict().items()}
    meta = {"format": REFINER_FORMAT, "config": refiner.config, "trained": trained or {}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"facecodec": json.dumps(meta, sort_keys=True)})
    os.chmod(tmp, 0o644)  # safetensors writes 0600; the file is meant to be shared and committed
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- training
@dataclass
class RefinerTrainConfig:
    """One time-boxed training run (the CLI fills it from its flags)."""

    data: Path
    out: Path
    minutes: float = 5.0
    device: str = "cpu"
    batch: int = 8
    workers: int = 2
    threads: int | None = None
    lr: float = 2e-4
    amp: str = "none"              # "bf16" (CUDA) or "none"
    init_from: Path | None = None
    seed: int = 0
    perceptual: str = "vgg"        # "vgg" | "lpips" | "none"
    w_l1: float = 1.0
    w_perceptual: float = 0.01
    region_weight: float = 5.0
    widths: tuple[int, ...] = (16, 32, 64, 128)
    head_width: int = 8
    preload: bool = False
    log_every: int = 10
    max_steps: int | None = None


def train(cfg: RefinerTrainConfig, dataset: Dataset | None = None) -> dict[str, Any]:
    """Train until ``minutes`` (from this call's start) or ``max_steps``; export and log.

    ``dataset`` replaces the one built from ``cfg.data`` (tests). Returns a summary dict.
    """
    started = time.monotonic()
    deadline = started + cfg.minutes * 60.0
    device = torch.device(cfg.device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if cfg.amp not in ("bf16", "none"):
        raise ValueError(f"--amp must be bf16 or none, got {cfg.amp!r}")
    amp_dtype = torch.bfloat16 if cfg.amp == "bf16" else None
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)

    step = samples = 0
    if cfg.init_from is not None:
        refiner, meta = load_refiner(cfg.init_from)
        trained = meta.get("trained", {})
        step, samples = int(trained.get("steps", 0)), int(trained.get("samples", 0))
        log.warning("initialised from %s (config %s, %d samples): Adam moments restart",
                    cfg.init_from, meta["config"], samples)
    else:
        refiner = Refiner(tuple(cfg.widths), cfg.head_width)
    refiner = refiner.to(device).train()
    optimizer = torch.optim.Adam(refiner.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    perceptual = load_perceptual(cfg.perceptual, device)
    if dataset is None:
        dataset = RefinerPairs(cfg.data, seed=cfg.seed, start=samples, preload=cfg.preload)
    log.info("refiner %s: %d params; batch %d, lr %g, amp %s, perceptual %s ×%g; setup %.1f s",
             refiner.config, refiner.parameter_count(), cfg.batch, cfg.lr, cfg.amp, cfg.perceptual,
             cfg.w_perceptual, time.monotonic() - started)
    loader = DataLoader(dataset, batch_size=cfg.batch, shuffle=False, num_workers=cfg.workers,
                        pin_memory=device.type == "cuda", drop_last=True,
                        worker_init_fn=worker_init if cfg.workers > 0 else None,
                        persistent_workers=False)
    log_path = out / "log.csv"
    if not log_path.is_file():  # chained chunks in one folder append
        with open(log_path, "w", newline="") as f:
            csv.writer(f).writerow(LOG_COLUMNS)
    sums: dict[str, float] = {}
    count = 0
    interval_start, interval_samples = time.monotonic(), 0
    first_step = step
    stopped_by = "data"
    last: dict[str, float] = {}
    for batch in loader:
        warped, keyframe, maps, landmarks, target, region = batch_to_device(batch, device)
        with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32,
                            enabled=amp_dtype is not None):
            output = refiner(warped, keyframe, maps, landmarks)
            loss, terms = refiner_loss(output, target, region, perceptual, region_weight=cfg.region_weight,
                                       w_l1=cfg.w_l1, w_perceptual=cfg.w_perceptual)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            warp_diff = (warped - target).abs()
            terms["warp_l1"] = float(warp_diff.mean())
            terms["warp_region_l1"] = float((warp_diff * region).sum() / (3.0 * region.sum()).clamp_min(1.0))
        step += 1
        samples += warped.shape[0]
        interval_samples += warped.shape[0]
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + value
        count += 1
        last = terms
        if not np.isfinite(terms["loss"]):
            raise FloatingPointError(f"step {step}: non-finite loss {terms}")
        now = time.monotonic()
        if cfg.max_steps is not None and step - first_step >= cfg.max_steps:
            stopped_by = "max-steps"
        elif now >= deadline:
            stopped_by = "time"
        # step 1 of a run is logged alone (the loss at the start); the last one too
        if step - first_step == 1 or step % cfg.log_every == 0 or stopped_by != "data":
            row = {"step": step, "seconds": round(now - started, 2), "samples": samples,
                   "samples_per_s": round(interval_samples / max(now - interval_start, 1e-9), 2)}
            row.update({k: round(v / count, 6) for k, v in sums.items()})
            with open(log_path, "a", newline="") as f:
                csv.writer(f).writerow([row.get(c, "") for c in LOG_COLUMNS])
            log.info("step %d  loss %.4f  l1 %.4f (warp %.4f)  region %.4f (warp %.4f)  perc %s  "
                     "%.1f samples/s", step, row["loss"], row["l1"], row["warp_l1"], row["region_l1"],
                     row["warp_region_l1"], row.get("perceptual", "-"), row["samples_per_s"])
            sums, count, interval_start, interval_samples = {}, 0, now, 0
        if stopped_by != "data":
            break
    trained = {"steps": step, "samples": samples, "seed": cfg.seed, "perceptual": cfg.perceptual,
               "lr": cfg.lr, "amp": cfg.amp, "last_loss": last.get("loss")}
    export_refiner(refiner, out / "refiner.safetensors", trained)
    log.info("stopped by %s at step %d (%d samples, %.1f min): %s", stopped_by, step, samples,
             (time.monotonic() - started) / 60.0, out / "refiner.safetensors")
    return {"steps": step, "samples": samples, "stopped_by": stopped_by, "last": last}


# ---------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.refiner", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the refiner for a fixed time")
    t.add_argument("--data", type=Path, default=Path("cache/train256"), help="train set (default: %(default)s)")
    t.add_argument("--out", type=Path, required=True, help="writes refiner.safetensors and log.csv here")
    t.add_argument("--minutes", type=float, required=True, help="time box, from the start (setup included)")
    t.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    t.add_argument("--amp", choices=("bf16", "none"), default=None, help="default: bf16 on cuda, none on cpu")
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--workers", type=int, default=2, help="DataLoader workers (the warp runs there)")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads of the trainer")
    t.add_argument("--lr", type=float, default=2e-4)
    t.add_argument("--init-from", type=Path, default=None, help="a refiner.safetensors to start from")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--perceptual", choices=("vgg", "lpips", "none"), default="vgg")
    t.add_argument("--w-l1", type=float, default=1.0, help="weight of the region-weighted L1 (%(default)s)")
    t.add_argument("--w-perceptual", type=float, default=None,
                   help="weight of the perceptual term (default: 0.01 for vgg, 1 for lpips: either "
                        "about 1.6× the weighted L1 of the plain warp)")
    t.add_argument("--region-weight", type=float, default=5.0, help="L1 factor on mouth and eyes (%(default)s)")
    t.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128], help="U-Net widths")
    t.add_argument("--head-width", type=int, default=8)
    t.add_argument("--preload", action="store_true", help="decode the whole train set first (GPU machine)")
    t.add_argument("--log-every", type=int, default=10)
    t.add_argument("--max-steps", type=int, default=None, help="stop after this many steps of this run")
    e = sub.add_parser("evaluate", help="dev scores: warp vs warp + refiner vs frozen keyframe")
    e.add_argument("--weights", type=Path, default=None, help="refiner.safetensors (default: identity refiner)")
    e.add_argument("--data", type=Path, default=Path("cache/dev256"), help="dev set (default: %(default)s)")
    e.add_argument("--every", type=int, default=10, help="score every N-th frame (default: %(default)s)")
    e.add_argument("--frames", type=int, default=250, help="of the first N frames (default: %(default)s)")
    e.add_argument("--segments", type=int, default=None, help="only the first N segments")
    e.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    e.add_argument("--batch", type=int, default=16)
    e.add_argument("--threads", type=int, default=None)
    e.add_argument("--no-lpips", action="store_true", help="PSNR and region L1 only (no backbone file)")
    e.add_argument("--json", type=Path, default=None, help="write the report here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "train":
        w_perceptual = args.w_perceptual if args.w_perceptual is not None else (
            0.01 if args.perceptual == "vgg" else 1.0)
        train(RefinerTrainConfig(
            data=args.data, out=args.out, minutes=args.minutes, device=args.device,
            batch=args.batch, workers=args.workers, threads=args.threads, lr=args.lr,
            amp=args.amp or ("bf16" if args.device == "cuda" else "none"), init_from=args.init_from,
            seed=args.seed, perceptual=args.perceptual, w_l1=args.w_l1, w_perceptual=w_perceptual,
            region_weight=args.region_weight, widths=tuple(args.widths), head_width=args.head_width,
            preload=args.preload, log_every=args.log_every, max_steps=args.max_steps))
        return 0
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    report = evaluate(args.data, args.weights, every=args.every, frames=args.frames, device=args.device,
                      batch=args.batch, segments=args.segments, use_lpips=not args.no_lpips)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(json.dumps(report["mean"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
