"""Time-boxed, resumable, DDP-ready GAN training of :class:`codec.models.FaceVid2Vid`.

One call of :func:`train` is a *chunk*: it trains until ``minutes`` have passed (or a
step cap), then — on rank 0 only — saves the full training state atomically to
``OUT/state.pt``, exports the inference weights (``OUT/model.safetensors``, fp16, via
:func:`codec.weights_io.export_weights`) and the discriminator (``OUT/discriminator.safetensors``,
fp16), writes a sample grid and runs the dev evaluation. ``resume=True`` continues from
``state.pt`` with the same step, data position and RNG states, so chunked training gives
the same parameters as one long run (tested on CPU). ``init_from`` restarts from the two
safetensors files alone (optimizer moments restart; that is logged).

Runs unchanged under ``torchrun`` (DistributedDataParallel, DistributedSampler,
rank-0-only logging and saving; NCCL on CUDA, gloo on CPU). Imports torch, numpy and
OpenCV only (no av, aiortc, constriction): the GPU machine has nothing else. This module is
the loop (one step, logging, stopping, the chunk end); the setup is
:mod:`~training.train_run`, the saved state :mod:`~training.checkpoint`, the
process group :mod:`~training.distributed` and video-file data
:mod:`~training.video_pairs`.

CPU proof (tiny config, one shared VoxCeleb-cropped clip, 2 shared CPU cores; the dev
"set" is the same clip, so this proves the pipeline learns, not that it generalises)::

    cp ../shared/data/talking/CVPR2022-DaGAN/driving.mp4 /tmp/clip.mp4
    python -m training train --config tiny --data /tmp/clip.mp4 --dev /tmp/clip.mp4 \
        --out /tmp/proof --minutes 8 --batch 4 --workers 0 --threads 1 --device cpu

Measured (VGG16 perceptual backbone, 886 steps in 8 min): G loss 304 -> 77 (perceptual
29.7 -> 7.3, raw); on the clip's 183 non-key frames at 64 px PSNR 24.12 dB vs 19.78 for
the frozen keyframe, SSIM 0.769 vs 0.619, AKD 1.60 vs 2.82 px; LPIPS 0.089 vs 0.032
(the frozen keyframe is sharp, our tiny output blurry). With the tests' random-weight
VGG-shaped stand-in as the perceptual network (6 min, 1289 steps): PSNR 25.12 vs 19.78 dB.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from codec.models import DiscriminatorScaleOutput
from training import losses as L
from training.checkpoint import (
    STATE_FORMAT,
    atomic_torch_save,
    export_discriminator,
    gather_rng_states,
    plain_config,
    save_sample_grid,
)
from training.distributed import ResumableBatches, any_rank
from training.evaluate import evaluate_model
from training.train_run import TrainConfig, TrainRun, setup_run

log = logging.getLogger("training")

LOG_COLUMNS = ["step", "epoch", "time_s", "perceptual", "gan", "feature_matching", "equivariance",
               "keypoint_prior", "head_pose", "deformation_prior", "generator_total",
               "discriminator", "lr_g", "lr_d", "imgs_per_s"]


@dataclass
class ChunkResult:
    """What a chunk did; ``evaluation`` is the dev report (rank 0, when run)."""

    step: int
    epoch: int
    steps_this_chunk: int
    stopped_by: str
    last_losses: dict[str, float]
    evaluation: dict[str, Any] | None = None
    out: Path | None = None


# ---------------------------------------------------------------------------- one step
def _split_scales(outputs: list[DiscriminatorScaleOutput], batch: int
                  ) -> tuple[list[DiscriminatorScaleOutput], list[DiscriminatorScaleOutput]]:
    """Split D's outputs on cat([real, fake]) into the real and the fake halves."""
    real, fake = [], []
    for o in outputs:
        real.append(DiscriminatorScaleOutput([f[:batch] for f in o.features], o.logits[:batch]))
        fake.append(DiscriminatorScaleOutput([f[batch:] for f in o.features], o.logits[batch:]))
    return real, fake


def _masked_pose_loss(pose: Any, target: torch.Tensor) -> torch.Tensor:
    """Head-pose loss over the samples that have a finite pseudo-label (else 0·sum, so the
    graph keeps every parameter)."""
    valid = torch.isfinite(target).all(dim=1)
    if not bool(valid.any()):
        return pose.yaw_logits.float().sum() * 0.0
    return L.head_pose_loss(pose.yaw_logits[valid], pose.pitch_logits[valid],
                            pose.roll_logits[valid], pose.angles()[valid], target[valid])


def _train_step(run: TrainRun, batch: dict[str, Any]) -> tuple[dict[str, float], tuple[torch.Tensor, ...]]:
    """One generator and (once the GAN is on) one discriminator update on ``batch``.

    Returns the loss values and (source, driving, prediction), detached, for the sample grid.
    """
    cfg, device, w = run.cfg, run.device, run.cfg.weights
    source = batch["source"].to(device, non_blocking=True)
    driving = batch["driving"].to(device, non_blocking=True)
    if cfg.channels_last:
        source = source.contiguous(memory_format=torch.channels_last)
        driving = driving.contiguous(memory_format=torch.channels_last)
    bsz = source.shape[0]
    gan_on = run.step >= cfg.gan_start_step
    theta = L.random_affine(bsz)  # global CPU RNG: saved and restored with the state
    warped = L.warp_image(driving, theta)

    # ---- generator step (D frozen, in eval mode: no spectral-norm power iteration)
    discriminator = run.discriminator
    discriminator.requires_grad_(False)
    discriminator.eval()
    with torch.autocast(**run.autocast()):
        output, warped_kp = run.generator_module(source, driving, warped)
        prediction = output.prediction
        terms: dict[str, torch.Tensor] = {}
        terms["perceptual"] = L.perceptual_loss(run.vgg, prediction.float(), driving)
        if gan_on:
            fake_out = discriminator(prediction)
            with torch.no_grad():
                real_out = discriminator(driving)
            terms["gan"] = L.generator_hinge_loss(fake_out)
            terms["feature_matching"] = L.feature_matching_loss(real_out, fake_out)
        terms["equivariance"] = L.equivariance_loss(output.driving_keypoints, warped_kp, theta)
        terms["keypoint_prior"] = L.keypoint_prior_loss(output.driving_keypoints)
        pose_targets = (batch["source_pose"].to(device).float(),
                        batch["driving_pose"].to(device).float())
        terms["head_pose"] = 0.5 * (_masked_pose_loss(output.source_pose, pose_targets[0])
                                    + _masked_pose_loss(output.driving_pose, pose_targets[1]))
        terms["deformation_prior"] = L.deformation_prior_loss(output.driving_pose.expression)
        loss_g = sum(getattr(w, name) * value.float() for name, value in terms.items())
    run.opt_g.zero_grad(set_to_none=True)
    run.scaler_g.scale(loss_g).backward()
    run.scaler_g.step(run.opt_g)
    run.scaler_g.update()

    # ---- discriminator step: one forward on cat(real, fake) (one DDP forward/backward)
    loss_d = torch.zeros((), device=device)
    if gan_on:
        discriminator.requires_grad_(True)
        discriminator.train()
        both = torch.cat([driving, prediction.detach()])
        with torch.autocast(**run.autocast()):
            real_d, fake_d = _split_scales(run.discriminator_module(both), bsz)
            loss_d = w.discriminator * L.discriminator_hinge_loss(real_d, fake_d)
        run.opt_d.zero_grad(set_to_none=True)
        run.scaler_d.scale(loss_d).backward()
        run.scaler_d.step(run.opt_d)
        run.scaler_d.update()

    values = {k: float(v.detach()) for k, v in terms.items()}
    values["generator_total"] = float(loss_g.detach())
    values["discriminator"] = float(loss_d.detach())
    return values, (source.detach(), driving.detach(), prediction.detach())


# ---------------------------------------------------------------------------- the loop
class _IntervalLog:
    """Loss averages and throughput since the last row of ``log.csv`` (rows from rank 0 only)."""

    def __init__(self, path: Path, main: bool) -> None:
        self.path = path
        if main and not path.is_file():  # resumed / re-initialised runs append
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(LOG_COLUMNS)
        self.sums: dict[str, float] = {}
        self.count = 0
        self.start = time.monotonic()
        self.images = 0

    def add(self, values: dict[str, float], images: int) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1
        self.images += images

    def write(self, run: TrainRun, now: float, time_s: float) -> None:
        elapsed = now - self.start
        row = {"step": run.step, "epoch": run.epoch, "time_s": round(time_s, 2),
               "lr_g": run.opt_g.param_groups[0]["lr"], "lr_d": run.opt_d.param_groups[0]["lr"],
               "imgs_per_s": round(self.images / max(elapsed, 1e-9), 3)}
        row.update({k: round(v / self.count, 6) for k, v in self.sums.items()})
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([row.get(c, "") for c in LOG_COLUMNS])
        log.info("step %d  G %.4f  P %.4f  D %.4f  %.1f img/s", run.step,
                 row.get("generator_total", 0.0), row.get("perceptual", 0.0),
                 row.get("discriminator", 0.0), row["imgs_per_s"])
        self.sums, self.count, self.images, self.start = {}, 0, 0, now


def _epoch_loader(run: TrainRun) -> DataLoader:
    """This rank's batches of the current epoch, from the stored position on."""
    cfg, ctx, dataset = run.cfg, run.ctx, run.dataset
    sampler = DistributedSampler(dataset, num_replicas=ctx.world, rank=ctx.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=True)
    sampler.set_epoch(run.epoch)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(run.epoch)
    batches = ResumableBatches(list(sampler), cfg.batch, run.batch_in_epoch)
    if len(batches.batches) == 0:
        raise ValueError(f"dataset of {len(dataset)} items gives no batch of {cfg.batch} "
                         f"on {ctx.world} ranks")
    # Own generator: creating a loader must not draw from the global RNG (resume parity).
    return DataLoader(dataset, batch_sampler=batches, num_workers=cfg.workers,
                      pin_memory=run.device.type == "cuda",
                      generator=torch.Generator().manual_seed(cfg.seed * 100003 + run.epoch),
                      persistent_workers=False)


def _stop_reason(cfg: TrainConfig, step: int, steps_this_chunk: int, now: float,
                 deadline: float) -> str | None:
    if cfg.max_steps is not None and step >= cfg.max_steps:
        return "max-steps"
    if cfg.chunk_steps is not None and steps_this_chunk >= cfg.chunk_steps:
        return "chunk-steps"
    if now >= deadline:
        return "time"
    return None


def _train_until_stop(run: TrainRun, deadline: float) -> ChunkResult:
    """Steps until a stop condition holds on any rank; the result has no evaluation yet."""
    cfg, ctx = run.cfg, run.ctx
    interval = _IntervalLog(run.out / "log.csv", ctx.main)
    chunk_start = time.monotonic()
    result = ChunkResult(step=run.step, epoch=run.epoch, steps_this_chunk=0, stopped_by="epoch-end",
                         last_losses={}, out=run.out)
    while True:
        for batch in _epoch_loader(run):
            values, run.last_batch = _train_step(run, batch)
            run.step += 1
            run.batch_in_epoch += 1
            result.steps_this_chunk += 1
            interval.add(values, batch["source"].shape[0] * ctx.world)
            result.last_losses = values
            if not all(np.isfinite(v) for v in values.values()):
                log.warning("step %d: non-finite loss %s", run.step, values)

            now = time.monotonic()
            if ctx.main and (run.step % cfg.log_every == 0):
                interval.write(run, now, run.train_seconds + now - chunk_start)
            reason = _stop_reason(cfg, run.step, result.steps_this_chunk, now, deadline)
            if any_rank(reason is not None, ctx, run.device):
                result.stopped_by = reason or "time"  # another rank hit its deadline first
                run.train_seconds += time.monotonic() - chunk_start
                result.step, result.epoch = run.step, run.epoch
                return result
        run.epoch += 1
        run.batch_in_epoch = 0


# ---------------------------------------------------------------------------- chunk end
def _save_chunk(run: TrainRun, result: ChunkResult) -> dict[str, Any] | None:
    """Rank 0: state.pt, the two exports, a sample grid, the dev evaluation (returned)."""
    rng_states = gather_rng_states(run.ctx, run.device)  # a collective: every rank calls it
    if not run.ctx.main:
        return None
    cfg, out, step = run.cfg, run.out, run.step
    state = {"format": STATE_FORMAT, "config": run.model_config.to_dict(),
             **{key: part.state_dict() for key, part in run.parts().items()},
             "step": step, "epoch": run.epoch, "batch_in_epoch": run.batch_in_epoch,
             "train_seconds": run.train_seconds, "rng": rng_states, "world_size": run.ctx.world,
             "train_config": plain_config(cfg)}
    atomic_torch_save(state, out / "state.pt")
    from codec.weights_io import export_weights

    sha = export_weights(run.model, out / "model.safetensors")
    export_discriminator(run.discriminator, out / "discriminator.safetensors", run.model_config, step)
    log.info("chunk done at step %d (%s): state.pt, model.safetensors (sha256 %s…), "
             "discriminator.safetensors written", step, result.stopped_by, sha[:16])
    if run.last_batch is not None:
        save_sample_grid(out / "samples" / f"step_{step:07d}.png", *run.last_batch)
    if not (cfg.eval_at_end and cfg.dev is not None):
        return None
    evaluation = evaluate_model(run.model, cfg.dev, frames=cfg.dev_frames,
                                out_dir=out / "eval" / f"step_{step:07d}", device=run.device,
                                max_clips=cfg.dev_clips, autocast_dtype=run.amp_dtype)
    log.info("dev average: %s", json.dumps(evaluation["average"]))
    return evaluation


def train(cfg: TrainConfig, dataset: Dataset | None = None) -> ChunkResult:
    """Run one training chunk (see the module docstring). Returns a :class:`ChunkResult`.

    ``dataset`` replaces the one built from ``cfg.data`` (tests pass small fakes); its
    items must be PairDataset-style dicts and a pure function of (index, epoch) for a
    resumed run to match an uninterrupted one.
    """
    wall_start = time.monotonic()
    previous_threads = torch.get_num_threads()
    run = setup_run(cfg, dataset)
    result = _train_until_stop(run, deadline=wall_start + cfg.minutes * 60.0)
    result.evaluation = _save_chunk(run, result)
    if run.ctx.initialised_here:
        dist.barrier()
        dist.destroy_process_group()
    torch.set_num_threads(previous_threads)
    return result
