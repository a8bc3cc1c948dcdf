"""Time-boxed, resumable, DDP-ready GAN training of :class:`codec.models.FaceVid2Vid`.

One call of :func:`train` is a *chunk*: it trains until ``minutes`` have passed (or a
step cap), then — on rank 0 only — saves the full training state atomically to
``OUT/state.pt``, exports the inference weights (``OUT/model.safetensors``, fp16, via
:func:`codec.zoo.export_weights`) and the discriminator (``OUT/discriminator.safetensors``,
fp16), writes a sample grid and runs the dev evaluation. ``resume=True`` continues from
``state.pt`` with the same step, data position and RNG states, so chunked training gives
the same parameters as one long run (tested on CPU). ``init_from`` restarts from the two
safetensors files alone (optimizer moments restart; that is logged).

Runs unchanged under ``torchrun`` (DistributedDataParallel, DistributedSampler,
rank-0-only logging and saving; NCCL on CUDA, gloo on CPU). Imports torch, numpy and
OpenCV only (no av, aiortc, constriction): the GPU machine has nothing else.

CPU proof (tiny config, one shared VoxCeleb-cropped clip, 2 shared CPU cores; the dev
"set" is the same clip, so this proves the pipeline learns, not that it generalises)::

    cp ../shared/data/talking/CVPR2022-DaGAN/driving.mp4 /tmp/clip.mp4
    python -m codec.training train --config tiny --data /tmp/clip.mp4 --dev /tmp/clip.mp4 \
        --out /tmp/proof --minutes 8 --batch 4 --workers 0 --threads 1 --device cpu

Measured (VGG16 perceptual backbone, 886 steps in 8 min): G loss 304 -> 77 (perceptual
29.7 -> 7.3, raw); on the clip's 183 non-key frames at 64 px PSNR 24.12 dB vs 19.78 for
the frozen keyframe, SSIM 0.769 vs 0.619, AKD 1.60 vs 2.82 px; LPIPS 0.089 vs 0.032
(the frozen keyframe is sharp, our tiny output blurry). With ``--perceptual-backbone
random`` (6 min, 1289 steps): PSNR 25.12 vs 19.78 dB.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from codec.config import ModelConfig, get_config
from codec.keypoints import transform_keypoints
from codec.models import (
    DiscriminatorScaleOutput,
    FaceVid2Vid,
    Vid2VidOutput,
    build_discriminator,
    build_model,
)
from codec.training import losses as L
from codec.training.dataset import VIDEO_SUFFIXES, read_video_rgb
from codec.training.evaluate import evaluate_model

log = logging.getLogger("codec.training")

STATE_FORMAT = "facecodec-train-state-v1"
DISCRIMINATOR_FORMAT = "facecodec-discriminator-v1"
LOG_COLUMNS = ["step", "epoch", "time_s", "perceptual", "gan", "feature_matching", "equivariance",
               "keypoint_prior", "head_pose", "deformation_prior", "generator_total",
               "discriminator", "lr_g", "lr_d", "imgs_per_s"]


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
    perceptual_backbone: str = "vgg"  # "vgg" (converted VGG16) or "random" (tests only)
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


# ---------------------------------------------------------------------------- data
class VideoPairDataset(Dataset):
    """Pairs of frames of the same clip from video files read with OpenCV.

    For quick single-clip experiments and the CPU proof (the real training data is
    ``codec.training.dataset.PairDataset``). Items follow PairDataset's dict layout;
    there are no pose pseudo-labels or landmarks, so "source_pose"/"driving_pose" are
    NaN (the head-pose loss skips them). Item ``i`` of epoch ``e`` is a pure function
    of (seed, e, i), so resumed runs see the same pairs.
    """

    def __init__(self, videos: Sequence[Path], size: int, length: int | None = None,
                 seed: int = 0, max_frames: int | None = None) -> None:
        self.clips: list[np.ndarray] = []
        for video in videos:
            frames = read_video_rgb(video, max_frames)
            if frames.shape[1] != size or frames.shape[2] != size:
                frames = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA)
                                   for f in frames])
            self.clips.append(frames)
        self.length = length or sum(len(c) for c in self.clips)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        clip = self.clips[int(rng.integers(len(self.clips)))]
        a, b = rng.integers(len(clip), size=2)
        nan = torch.full((3,), float("nan"))

        def tensor(frame: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(frame).permute(2, 0, 1).float() / 255.0

        return {"source": tensor(clip[a]), "driving": tensor(clip[b]), "source_pose": nan,
                "driving_pose": nan.clone(), "identity": 0}


def build_dataset(path: Path, size: int, seed: int, length: int | None = None) -> Dataset:
    """PairDataset for a dataset root; VideoPairDataset for a video file or a folder of them."""
    path = Path(path)
    videos: list[Path] = []
    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        videos = [path]
    elif path.is_dir():
        videos = sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if videos:
        log.info("training on %d video file(s) under %s (no pose pseudo-labels)", len(videos), path)
        return VideoPairDataset(videos, size, length=length, seed=seed)
    from codec.training.dataset import PairDataset

    return PairDataset(path, size=size, augment=True, seed=seed, length=length)


class _ResumableBatches(torch.utils.data.Sampler[list[int]]):
    """Batches of this rank's DistributedSampler indices for one epoch, skipping the
    first ``start_batch`` (the ones a previous chunk already trained on)."""

    def __init__(self, indices: list[int], batch: int, start_batch: int) -> None:
        self.batches = [indices[i:i + batch] for i in range(0, len(indices) - batch + 1, batch)]
        self.start_batch = start_batch

    def __len__(self) -> int:
        return max(0, len(self.batches) - self.start_batch)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches[self.start_batch:])


# ---------------------------------------------------------------------------- perceptual stand-in
class RandomVGGStandIn(nn.Module):
    """A seeded random-weight net shaped like the perceptual VGG16 stack — for tests ONLY.

    The layout of ``codec.training.lpips.VGGPerceptual`` (3×3 conv + ReLU, 2× max-pool
    between stages) up to relu4_1, at ``width`` × VGG16's widths; returns the relu1_2,
    relu2_2, relu3_3 and relu4_1 activations (B×3×H×W -> 4 maps, names in ``layers``, as
    ``multiscale_perceptual_loss`` expects). Frozen. Random conv features still make a
    usable structural loss, but nothing trained with it is a product model; the trainer
    logs a loud warning whenever it is used.
    """

    layers = ("relu1_2", "relu2_2", "relu3_3", "relu4_1")

    def __init__(self, seed: int = 0, width: float = 0.25) -> None:
        super().__init__()
        widths = [max(4, int(c * width)) for c in (64, 128, 256, 512)]
        blocks = []
        previous = 3
        generator = torch.Generator().manual_seed(seed)
        for index, (channels, depth) in enumerate(zip(widths, (2, 2, 3, 1))):
            layers: list[nn.Module] = [nn.MaxPool2d(2)] if index else []
            for _ in range(depth):
                conv = nn.Conv2d(previous, channels, 3, padding=1)
                with torch.no_grad():  # He init from our own generator: same net for a seed
                    conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator)
                                      * (2.0 / (9 * previous)) ** 0.5)
                    conv.bias.zero_()
                layers += [conv, nn.ReLU()]
                previous = channels
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(blocks)
        self.requires_grad_(False)
        self.eval()

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = image * 2.0 - 1.0
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features


def load_perceptual_backbone(kind: str, seed: int = 0) -> nn.Module:
    """"vgg": the converted VGG16 (``VGGPerceptual.from_cache``); "random": the test stand-in."""
    if kind == "vgg":
        from codec.training.lpips import VGGPerceptual

        return VGGPerceptual.from_cache().eval().requires_grad_(False)
    if kind == "random":
        log.warning("!" * 72)
        log.warning("PERCEPTUAL BACKBONE = RANDOM-WEIGHT VGG-SHAPED STAND-IN (seed %d). "
                    "TEST/SMOKE USE ONLY: weights trained this way are not a product model.", seed)
        log.warning("!" * 72)
        return RandomVGGStandIn(seed=seed)
    raise ValueError(f"unknown perceptual backbone {kind!r} (use 'vgg' or 'random')")


# ---------------------------------------------------------------------------- model wrapper
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


# ---------------------------------------------------------------------------- state I/O
def _rng_state(device: torch.device) -> dict[str, Any]:
    """This process's python / numpy / torch (/ cuda) RNG states as tensors and plain types."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _as_tuple(value: Any) -> Any:
    # random.setstate needs tuples; a list may come back from some serialisations.
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def _atomic_torch_save(obj: Any, path: Path) -> None:
    """Write to a temp file beside ``path``, fsync, then rename: a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def export_discriminator(discriminator: nn.Module, path: Path, config: ModelConfig, step: int) -> None:
    """The discriminator as fp16 safetensors with its config name and the training step."""
    from safetensors.torch import save_file

    state = {k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()).contiguous()
             for k, v in discriminator.state_dict().items()}
    meta = {"facecodec": json.dumps({"format": DISCRIMINATOR_FORMAT, "config": config.name,
                                     "step": step}, sort_keys=True)}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_discriminator_file(discriminator: nn.Module, path: Path) -> dict[str, Any]:
    """Load an :func:`export_discriminator` file into ``discriminator``; return its metadata."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = json.loads((f.metadata() or {}).get("facecodec", "{}"))
        state = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("format") != DISCRIMINATOR_FORMAT:
        raise ValueError(f"{path} is not a {DISCRIMINATOR_FORMAT} file")
    expected = discriminator.state_dict()
    discriminator.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()
                                   if k in expected}, strict=True)
    return meta


def save_sample_grid(path: Path, source: torch.Tensor, driving: torch.Tensor,
                     prediction: torch.Tensor, rows: int = 4) -> None:
    """PNG with one row per sample: source | driving | output (B×3×H×W in [0, 1])."""
    count = min(rows, source.shape[0])
    parts = [torch.cat([source[i], driving[i], prediction[i]], dim=2) for i in range(count)]
    image = torch.cat(parts, dim=1).detach().float().clamp(0, 1)
    array = (image.permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(array, cv2.COLOR_RGB2BGR))


# ---------------------------------------------------------------------------- distributed
@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_kind: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
        made = True
    else:
        made = False
    return _Dist(rank=dist.get_rank(), world=dist.get_world_size(),
                 local_rank=int(os.environ.get("LOCAL_RANK", "0")), initialised_here=made)


def _any_rank(flag: bool, ctx: _Dist, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any (so all ranks stop at the same step)."""
    if ctx.world == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


# ---------------------------------------------------------------------------- training
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


def train(cfg: TrainConfig, dataset: Dataset | None = None) -> ChunkResult:
    """Run one training chunk (see the module docstring). Returns a :class:`ChunkResult`.

    ``dataset`` replaces the one built from ``cfg.data`` (tests pass small fakes); its
    items must be PairDataset-style dicts and a pure function of (index, epoch) for a
    resumed run to match an uninterrupted one.
    """
    wall_start = time.monotonic()
    device_kind = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ctx = _init_distributed(device_kind.split(":")[0])
    if device_kind == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device(device_kind)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    previous_threads = torch.get_num_threads()
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
    opt_g = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=lr_d, betas=cfg.betas)
    use_scaler = amp_dtype == torch.float16
    scaler_g = torch.amp.GradScaler(device.type, enabled=use_scaler)
    scaler_d = torch.amp.GradScaler(device.type, enabled=use_scaler)
    step = epoch = batch_in_epoch = 0
    train_seconds = 0.0
    resumed_rng: list[dict[str, Any]] | None = None

    state_path = out / "state.pt"
    if not cfg.resume and state_path.is_file():
        # Never overwrite a run's state by accident.
        raise FileExistsError(f"{state_path} exists: pass --resume to continue that run, "
                              "or choose a new --out")
    if cfg.resume:
        if not state_path.is_file():
            raise FileNotFoundError(f"--resume: no {state_path}")
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"{state_path} is not a {STATE_FORMAT} file")
        if state["config"] != model_config.to_dict():
            raise ValueError(f"{state_path} was trained with config {state['config']['name']!r}, "
                             f"not {model_config.name!r}")
        model.load_state_dict(state["model"])
        discriminator.load_state_dict(state["discriminator"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        scaler_g.load_state_dict(state["scaler_g"])
        scaler_d.load_state_dict(state["scaler_d"])
        for opt, lr in ((opt_g, cfg.lr), (opt_d, lr_d)):  # a chunk may change the lr on purpose
            for group in opt.param_groups:
                group["lr"] = lr
        step, epoch, train_seconds = state["step"], state["epoch"], state["train_seconds"]
        batch_in_epoch = state["batch_in_epoch"]
        resumed_rng = state["rng"]
        if len(resumed_rng) != ctx.world:
            log.warning("state.pt holds RNG states of %d ranks, this run has %d: reseeding and "
                        "restarting the epoch (the run is no longer bit-reproducible)",
                        len(resumed_rng), ctx.world)
            torch.manual_seed(cfg.seed + ctx.rank + step)
            batch_in_epoch = 0
            resumed_rng = None
        log.info("resumed from %s at step %d (epoch %d, batch %d)", state_path, step, epoch,
                 batch_in_epoch)
        del state
    elif cfg.init_from is not None:
        from codec.zoo import load_weights_file

        loaded = load_weights_file(Path(cfg.init_from) / "model.safetensors")
        if loaded.network.config != model_config:
            raise ValueError(f"{cfg.init_from}/model.safetensors holds config {loaded.name!r}, "
                             f"not {model_config.name!r}")
        model.load_state_dict(loaded.network.state_dict())
        meta = load_discriminator_file(discriminator, Path(cfg.init_from) / "discriminator.safetensors")
        step = int(meta.get("step", 0))
        log.warning("initialised from %s (fp16 weights, step %d): Adam moments of G and D "
                    "RESTART from zero, data order and RNG restart", cfg.init_from, step)

    # Wrap for DDP after loading, so every rank starts from rank 0's identical weights.
    generator_module: nn.Module = GeneratorWithEquivariance(model)
    discriminator_module: nn.Module = discriminator
    if ctx.world > 1:
        ids = [device.index] if device.type == "cuda" else None
        generator_module = DistributedDataParallel(generator_module, device_ids=ids)
        discriminator_module = DistributedDataParallel(discriminator, device_ids=ids)
    if cfg.compile:
        generator_module = torch.compile(generator_module)
        discriminator_module = torch.compile(discriminator_module)
    vgg = load_perceptual_backbone(cfg.perceptual_backbone, seed=cfg.seed).to(device)
    if cfg.channels_last:
        _channels_last(vgg)

    if dataset is None:
        dataset = build_dataset(cfg.data, model_config.image_size, cfg.seed, cfg.dataset_length)
    w = cfg.weights
    if ctx.main:
        counts = model.parameter_counts()
        log.info("config %s: G %.2f M params, D %.2f M; batch %d × %d ranks; amp %s; %d items",
                 model_config.name, counts["total"] / 1e6,
                 sum(p.numel() for p in discriminator.parameters()) / 1e6, cfg.batch, ctx.world,
                 amp_dtype, len(dataset))

    if resumed_rng is not None:
        # Restored last, after everything that draws from the global RNG while being built
        # (e.g. nn.Conv2d's default init in the perceptual stand-in): the first resumed
        # step then draws exactly what the uninterrupted run drew.
        _set_rng_state(resumed_rng[ctx.rank], device)

    log_path = out / "log.csv"
    if ctx.main and not log_path.is_file():  # resumed / re-initialised runs append
        with open(log_path, "w", newline="") as f:
            csv.writer(f).writerow(LOG_COLUMNS)
    sums: dict[str, float] = {}
    sums_count = 0
    interval_start = time.monotonic()
    interval_images = 0
    chunk_start = time.monotonic()
    deadline = wall_start + cfg.minutes * 60.0
    steps_this_chunk = 0
    stopped_by = "epoch-end"
    last_batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    last_losses: dict[str, float] = {}
    autocast = dict(device_type=device.type, dtype=amp_dtype or torch.float32,
                    enabled=amp_dtype is not None)
    stop = False

    while not stop:
        sampler = DistributedSampler(dataset, num_replicas=ctx.world, rank=ctx.rank, shuffle=True,
                                     seed=cfg.seed, drop_last=True)
        sampler.set_epoch(epoch)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        batches = _ResumableBatches(list(sampler), cfg.batch, batch_in_epoch)
        if len(batches.batches) == 0:
            raise ValueError(f"dataset of {len(dataset)} items gives no batch of {cfg.batch} "
                             f"on {ctx.world} ranks")
        # Own generator: creating a loader must not draw from the global RNG (resume parity).
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=cfg.workers,
                            pin_memory=device.type == "cuda",
                            generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch),
                            persistent_workers=False)
        for batch in loader:
            source = batch["source"].to(device, non_blocking=True)
            driving = batch["driving"].to(device, non_blocking=True)
            if cfg.channels_last:
                source = source.contiguous(memory_format=torch.channels_last)
                driving = driving.contiguous(memory_format=torch.channels_last)
            bsz = source.shape[0]
            gan_on = step >= cfg.gan_start_step
            theta = L.random_affine(bsz)  # global CPU RNG: saved and restored with the state
            warped = L.warp_image(driving, theta)

            # ---- generator step (D frozen, in eval mode: no spectral-norm power iteration)
            discriminator.requires_grad_(False)
            discriminator.eval()
            with torch.autocast(**autocast):
                output, warped_kp = generator_module(source, driving, warped)
                prediction = output.prediction
                terms: dict[str, torch.Tensor] = {}
                terms["perceptual"] = L.perceptual_loss(vgg, prediction.float(), driving)
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
            opt_g.zero_grad(set_to_none=True)
            scaler_g.scale(loss_g).backward()
            scaler_g.step(opt_g)
            scaler_g.update()

            # ---- discriminator step: one forward on cat(real, fake) (one DDP forward/backward)
            loss_d = torch.zeros((), device=device)
            if gan_on:
                discriminator.requires_grad_(True)
                discriminator.train()
                both = torch.cat([driving, prediction.detach()])
                with torch.autocast(**autocast):
                    real_d, fake_d = _split_scales(discriminator_module(both), bsz)
                    loss_d = w.discriminator * L.discriminator_hinge_loss(real_d, fake_d)
                opt_d.zero_grad(set_to_none=True)
                scaler_d.scale(loss_d).backward()
                scaler_d.step(opt_d)
                scaler_d.update()

            step += 1
            batch_in_epoch += 1
            steps_this_chunk += 1
            interval_images += bsz * ctx.world
            values = {k: float(v.detach()) for k, v in terms.items()}
            values["generator_total"] = float(loss_g.detach())
            values["discriminator"] = float(loss_d.detach())
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            sums_count += 1
            last_losses = values
            last_batch = (source.detach(), driving.detach(), prediction.detach())
            if not all(np.isfinite(v) for v in values.values()):
                log.warning("step %d: non-finite loss %s", step, values)

            now = time.monotonic()
            if ctx.main and (step % cfg.log_every == 0):
                elapsed = now - interval_start
                row = {"step": step, "epoch": epoch,
                       "time_s": round(train_seconds + now - chunk_start, 2),
                       "lr_g": opt_g.param_groups[0]["lr"], "lr_d": opt_d.param_groups[0]["lr"],
                       "imgs_per_s": round(interval_images / max(elapsed, 1e-9), 3)}
                row.update({k: round(v / sums_count, 6) for k, v in sums.items()})
                with open(log_path, "a", newline="") as f:
                    csv.writer(f).writerow([row.get(c, "") for c in LOG_COLUMNS])
                log.info("step %d  G %.4f  P %.4f  D %.4f  %.1f img/s", step,
                         row.get("generator_total", 0.0), row.get("perceptual", 0.0),
                         row.get("discriminator", 0.0), row["imgs_per_s"])
                sums, sums_count, interval_images, interval_start = {}, 0, 0, now
            reason = None
            if cfg.max_steps is not None and step >= cfg.max_steps:
                reason = "max-steps"
            elif cfg.chunk_steps is not None and steps_this_chunk >= cfg.chunk_steps:
                reason = "chunk-steps"
            elif now >= deadline:
                reason = "time"
            if _any_rank(reason is not None, ctx, device):
                stopped_by = reason or "time"  # another rank hit its deadline first
                stop = True
                break
        else:
            epoch += 1
            batch_in_epoch = 0

    train_seconds += time.monotonic() - chunk_start
    # ---- end of chunk: gather every rank's RNG state, then rank 0 saves.
    rng_state = _rng_state(device)
    if ctx.world > 1:
        gathered: list[Any] = [None] * ctx.world
        dist.all_gather_object(gathered, {k: v for k, v in rng_state.items()})
        rng_states = [_to_cpu(s) for s in gathered]
    else:
        rng_states = [_to_cpu(rng_state)]
    evaluation = None
    if ctx.main:
        state = {"format": STATE_FORMAT, "config": model_config.to_dict(),
                 "model": model.state_dict(), "discriminator": discriminator.state_dict(),
                 "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                 "scaler_g": scaler_g.state_dict(), "scaler_d": scaler_d.state_dict(),
                 "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                 "train_seconds": train_seconds, "rng": rng_states, "world_size": ctx.world,
                 "train_config": _plain_config(cfg)}
        _atomic_torch_save(state, state_path)
        from codec.zoo import export_weights

        sha = export_weights(model, out / "model.safetensors")
        export_discriminator(discriminator, out / "discriminator.safetensors", model_config, step)
        log.info("chunk done at step %d (%s): state.pt, model.safetensors (sha256 %s…), "
                 "discriminator.safetensors written", step, stopped_by, sha[:16])
        if last_batch is not None:
            save_sample_grid(out / "samples" / f"step_{step:07d}.png", *last_batch)
        if cfg.eval_at_end and cfg.dev is not None:
            evaluation = evaluate_model(model, cfg.dev, frames=cfg.dev_frames,
                                        out_dir=out / "eval" / f"step_{step:07d}", device=device,
                                        max_clips=cfg.dev_clips, autocast_dtype=amp_dtype)
            log.info("dev average: %s", json.dumps(evaluation["average"]))
    if ctx.initialised_here:
        dist.barrier()
        dist.destroy_process_group()
    torch.set_num_threads(previous_threads)
    return ChunkResult(step=step, epoch=epoch, steps_this_chunk=steps_this_chunk,
                       stopped_by=stopped_by, last_losses=last_losses, evaluation=evaluation,
                       out=out)


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    return value


def _plain_config(cfg: TrainConfig) -> dict[str, Any]:
    """The TrainConfig as JSON-safe plain types (for the record inside state.pt)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, L.LossWeights):
            value = value.as_dict()
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out
