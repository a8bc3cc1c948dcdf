"""One training chunk's configuration and everything set up from it, before the first step.

:func:`setup_run` binds the device and the process group, seeds every RNG, builds the generator,
discriminator, optimizers and scalers, restores ``--resume`` / ``--init-from`` state, wraps the
modules for DDP, loads the perceptual network and builds the data: a :class:`TrainRun`, which
the loop in :mod:`training.trainer` then advances. Imports torch, numpy and OpenCV alone.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from codec.config import ModelConfig, get_config
from codec.keypoints import transform_keypoints
from codec.models import FaceVid2Vid, Vid2VidOutput, build_discriminator, build_model
from training import losses as L
from training.checkpoint import load_discriminator_file, read_state, set_rng_state
from training.distributed import DistContext, init_distributed
from training.video_pairs import build_dataset

log = logging.getLogger("training")


@dataclass
class TrainConfig:
    """Everything one training chunk needs (the CLI fills it from its flags)."""

    out: Path
    data: Path
    config: str = "vox256"
    dev: Path | None = None
    minutes: float = 10.0
    batch: int = 4                 # per process
    lr: float = 2e-4
    lr_d: float | None = None      # None: same as lr
    betas: tuple[float, float] = (0.5, 0.999)
    resume: bool = False
    init_from: Path | None = None
    amp: str | None = None         # "bf16" | "fp16" | "none"; None: bf16 on CUDA, none on CPU
    channels_last: bool = False
    compile: bool = False
    workers: int = 2
    seed: int = 0
    device: str | None = None      # None: cuda if available
    perceptual_backbone: str = "vgg"  # the converted VGG16, see load_perceptual_backbone
    weights: L.LossWeights = field(default_factory=L.LossWeights)
    gan_start_step: int = 0        # D and the GAN terms only from this step on
    max_steps: int | None = None   # stop the whole run at this global step
    chunk_steps: int | None = None  # stop this chunk after this many steps (tests, profiling)
    log_every: int = 10
    dev_frames: int = 250
    dev_clips: int | None = None
    eval_at_end: bool = True
    dataset_length: int | None = None  # pairs per epoch for video-file data
    deterministic: bool = False
    threads: int | None = None     # torch intra-op threads (CPU); None: torch's default


class GeneratorWithEquivariance(nn.Module):
    """The generator-side forward DDP wraps: FaceVid2Vid on (source, driving) plus the
    keypoints of the warped driving image for the equivariance loss.

    source, driving, warped_driving: B×3×H×W -> (Vid2VidOutput, B×K×3 keypoints of the
    warped image built from the *source's* canonical keypoints and the warped image's
    own R, t, δ — the same path x_d takes). One module, so every parameter is used in
    each forward and DDP needs no unused-parameter search.
    """

    def __init__(self, model: FaceVid2Vid) -> None:
        super().__init__()
        self.model = model

    def forward(self, source: torch.Tensor, driving: torch.Tensor, warped_driving: torch.Tensor
                ) -> tuple[Vid2VidOutput, torch.Tensor]:
        output = self.model(source, driving)
        pose = self.model.estimate_motion(warped_driving)
        canonical = output.canonical_keypoints
        warped_kp = transform_keypoints(canonical, pose.rotation().to(canonical.dtype),
                                        pose.translation.to(canonical.dtype),
                                        pose.expression.to(canonical.dtype))
        return output, warped_kp


def _channels_last(module: nn.Module) -> None:
    # Only 4D conv weights: Module.to(channels_last) would fail on the 3D convs' 5D weights.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            m.to(memory_format=torch.channels_last)


def _resolve_amp(amp: str | None, device: torch.device) -> torch.dtype | None:
    if amp is None:
        amp = "bf16" if device.type == "cuda" else "none"
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}
    if amp not in table:
        raise ValueError(f"--amp must be bf16, fp16 or none, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("fp16 autocast needs CUDA; use --amp bf16 or none on the CPU")
    return table[amp]


def load_perceptual_backbone(cfg: TrainConfig) -> nn.Module:
    """The frozen perceptual network ``cfg.perceptual_backbone`` names ("vgg": the converted VGG16)."""
    if cfg.perceptual_backbone == "vgg":
        from training.perceptual import VGGPerceptual

        return VGGPerceptual.from_cache().eval().requires_grad_(False)
    raise ValueError(f"unknown perceptual backbone {cfg.perceptual_backbone!r} (use 'vgg')")


@dataclass
class TrainRun:
    """What one chunk builds at setup and its loop advances: modules, optimizers, position."""

    cfg: TrainConfig
    ctx: DistContext
    device: torch.device
    out: Path
    amp_dtype: torch.dtype | None
    model_config: ModelConfig
    model: FaceVid2Vid
    discriminator: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    scaler_g: torch.amp.GradScaler
    scaler_d: torch.amp.GradScaler
    generator_module: nn.Module | None = None      # the DDP / compiled wrappers
    discriminator_module: nn.Module | None = None
    vgg: nn.Module | None = None
    dataset: Dataset | None = None
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    train_seconds: float = 0.0
    last_batch: tuple[torch.Tensor, ...] | None = None  # (source, driving, prediction)

    def parts(self) -> dict[str, Any]:
        """The objects whose state_dicts state.pt holds, by their key there."""
        return {"model": self.model, "discriminator": self.discriminator, "opt_g": self.opt_g,
                "opt_d": self.opt_d, "scaler_g": self.scaler_g, "scaler_d": self.scaler_d}

    def autocast(self) -> dict[str, Any]:
        """``torch.autocast`` arguments for the run's precision."""
        return {"device_type": self.device.type, "dtype": self.amp_dtype or torch.float32,
                "enabled": self.amp_dtype is not None}


def setup_run(cfg: TrainConfig, dataset: Dataset | None) -> TrainRun:
    """Device, process group, seeds, models, optimizers, restored state, backbone and data."""
    device_kind = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ctx = init_distributed(device_kind.split(":")[0])
    if device_kind == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device(device_kind)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    if cfg.threads is not None:
        # On a shared CPU, 1 thread per process avoids OpenMP oversubscription (measured
        # here: tiny step 0.2 s with 1 thread vs 5 s with 2 while other jobs ran).
        torch.set_num_threads(cfg.threads)
    if not ctx.main:
        log.setLevel(logging.WARNING)  # rank-0-only logging
    out = Path(cfg.out)
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
    amp_dtype = _resolve_amp(cfg.amp, device)
    model_config = get_config(cfg.config)

    # Seeds: per rank, so augmentations and equivariance warps differ across ranks.
    random.seed(cfg.seed + ctx.rank)
    np.random.seed(cfg.seed + ctx.rank)
    torch.manual_seed(cfg.seed + ctx.rank)
    model = build_model(model_config, seed=cfg.seed).to(device).train()
    discriminator = build_discriminator(model_config, seed=cfg.seed + 1).to(device).train()
    if cfg.channels_last:
        _channels_last(model)
        _channels_last(discriminator)
    lr_d = cfg.lr_d if cfg.lr_d is not None else cfg.lr
    use_scaler = amp_dtype == torch.float16
    run = TrainRun(cfg=cfg, ctx=ctx, device=device, out=out, amp_dtype=amp_dtype,
               model_config=model_config, model=model, discriminator=discriminator,
               opt_g=torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas),
               opt_d=torch.optim.Adam(discriminator.parameters(), lr=lr_d, betas=cfg.betas),
               scaler_g=torch.amp.GradScaler(device.type, enabled=use_scaler),
               scaler_d=torch.amp.GradScaler(device.type, enabled=use_scaler))
    resumed_rng = _restore(run, lr_d)

    # Wrap for DDP after loading, so every rank starts from rank 0's identical weights.
    run.generator_module = GeneratorWithEquivariance(model)
    run.discriminator_module = discriminator
    if ctx.world > 1:
        ids = [device.index] if device.type == "cuda" else None
        run.generator_module = DistributedDataParallel(run.generator_module, device_ids=ids)
        run.discriminator_module = DistributedDataParallel(discriminator, device_ids=ids)
    if cfg.compile:
        run.generator_module = torch.compile(run.generator_module)
        run.discriminator_module = torch.compile(run.discriminator_module)
    run.vgg = load_perceptual_backbone(cfg).to(device)
    if cfg.channels_last:
        _channels_last(run.vgg)

    if dataset is None:
        dataset = build_dataset(cfg.data, model_config.image_size, cfg.seed, cfg.dataset_length)
    run.dataset = dataset
    if ctx.main:
        counts = model.parameter_counts()
        log.info("config %s: G %.2f M params, D %.2f M; batch %d × %d ranks; amp %s; %d items",
                 model_config.name, counts["total"] / 1e6,
                 sum(p.numel() for p in discriminator.parameters()) / 1e6, cfg.batch, ctx.world,
                 amp_dtype, len(dataset))

    if resumed_rng is not None:
        # Restored last, after everything that draws from the global RNG while being built
        # (e.g. nn.Conv2d's default init in a perceptual module): the first resumed step then
        # draws exactly what the uninterrupted run drew.
        set_rng_state(resumed_rng[ctx.rank], device)
    return run


def _restore(run: TrainRun, lr_d: float) -> list[dict[str, Any]] | None:
    """``--resume`` (everything, exactly) or ``--init-from`` (weights only) into ``run``.

    Returns the per-rank RNG states to restore once setup is done, or None.
    """
    cfg, ctx = run.cfg, run.ctx
    state_path = run.out / "state.pt"
    if not cfg.resume and state_path.is_file():
        # Never overwrite a run's state by accident.
        raise FileExistsError(f"{state_path} exists: pass --resume to continue that run, "
                              "or choose a new --out")
    if cfg.resume:
        if not state_path.is_file():
            raise FileNotFoundError(f"--resume: no {state_path}")
        state = read_state(state_path, run.model_config)
        for key, part in run.parts().items():
            part.load_state_dict(state[key])
        for opt, lr in ((run.opt_g, cfg.lr), (run.opt_d, lr_d)):  # a chunk may change the lr on purpose
            for group in opt.param_groups:
                group["lr"] = lr
        run.step, run.epoch, run.train_seconds = state["step"], state["epoch"], state["train_seconds"]
        run.batch_in_epoch = state["batch_in_epoch"]
        resumed_rng = state["rng"]
        if len(resumed_rng) != ctx.world:
            log.warning("state.pt holds RNG states of %d ranks, this run has %d: reseeding and "
                        "restarting the epoch (the run is no longer bit-reproducible)",
                        len(resumed_rng), ctx.world)
            torch.manual_seed(cfg.seed + ctx.rank + run.step)
            run.batch_in_epoch = 0
            resumed_rng = None
        log.info("resumed from %s at step %d (epoch %d, batch %d)", state_path, run.step, run.epoch,
                 run.batch_in_epoch)
        return resumed_rng
    if cfg.init_from is not None:
        from codec.weights_io import load_weights_file

        loaded = load_weights_file(Path(cfg.init_from) / "model.safetensors")
        if loaded.network.config != run.model_config:
            raise ValueError(f"{cfg.init_from}/model.safetensors holds config {loaded.name!r}, "
                             f"not {run.model_config.name!r}")
        run.model.load_state_dict(loaded.network.state_dict())
        meta = load_discriminator_file(run.discriminator,
                                       Path(cfg.init_from) / "discriminator.safetensors")
        run.step = int(meta.get("step", 0))
        log.warning("initialised from %s (fp16 weights, step %d): Adam moments of G and D "
                    "RESTART from zero, data order and RNG restart", cfg.init_from, run.step)
    return None
