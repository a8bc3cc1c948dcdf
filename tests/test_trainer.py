"""Trainer tests: each loss on toy inputs, one step, exact resume, DDP on
gloo, export round trip, and no av/aiortc/constriction on the training path.

All on the CPU with the "tiny" config and the random perceptual stand-in (the converted
VGG16 may be absent here).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BLOCK_TRANSPORT_IMPORTS
from perceptual_standin import RandomVGGStandIn, stand_in_backbone
from torch.utils.data import Dataset

from codec.keypoints import degrees_to_bin
from codec.models.discriminator import DiscriminatorScaleOutput
from training import losses as L
from training import train_run
from training.trainer import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _perceptual_stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """The random-weight stand-in as the perceptual network (the converted VGG16 may be absent)."""
    monkeypatch.setattr(train_run, "load_perceptual_backbone", stand_in_backbone)


# ---------------------------------------------------------------------------- fakes
class FakePairs(Dataset):
    """Deterministic PairDataset-shaped items at 64 px: smooth random images, a pose label on
    even items and NaN (no label) on odd ones. Pure function of (index, epoch)."""

    def __init__(self, length: int = 6, size: int = 64) -> None:
        self.length, self.size, self.epoch = length, size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(1000 * self.epoch + index)

        def image() -> torch.Tensor:
            low = torch.rand(1, 3, 8, 8, generator=g)
            return torch.nn.functional.interpolate(low, size=self.size, mode="bilinear")[0]

        pose = (torch.rand(3, generator=g) * 40 - 20) if index % 2 == 0 else torch.full((3,), math.nan)
        return {"source": image(), "driving": image(), "source_pose": pose,
                "driving_pose": pose.clone(), "identity": 0}


def _config(out: Path, **overrides) -> TrainConfig:
    base = dict(out=out, data=out / "unused", config="tiny", minutes=5.0, batch=2, workers=0,
                device="cpu", perceptual_backbone="random", log_every=1, eval_at_end=False,
                seed=3, threads=1)
    base.update(overrides)
    return TrainConfig(**base)


def _write_clip(path: Path, frames: int = 12, size: int = 64) -> Path:
    """A small synthetic mp4 (a moving disc) written with OpenCV."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (size, size))
    for i in range(frames):
        frame = np.full((size, size, 3), 40, np.uint8)
        cv2.circle(frame, (20 + i, 32), 12, (200, 150, 100), -1)
        writer.write(frame)
    writer.release()
    return path


def _scale(logits: float, features: list[float], batch: int = 2) -> DiscriminatorScaleOutput:
    return DiscriminatorScaleOutput(features=[torch.full((batch, 2, 4, 4), f) for f in features],
                                    logits=torch.full((batch, 1, 3, 3), logits))


# ---------------------------------------------------------------------------- losses
def test_loss_weights_are_the_papers() -> None:
    w = L.LossWeights()
    assert (w.perceptual, w.gan, w.equivariance, w.keypoint_prior, w.head_pose,
            w.deformation_prior) == (10, 1, 20, 10, 20, 5)


def test_hinge_losses() -> None:
    confident = L.discriminator_hinge_loss([_scale(2.0, [0]), _scale(1.0, [0])],
                                           [_scale(-2.0, [0]), _scale(-1.0, [0])])
    assert float(confident) == 0.0
    undecided = L.discriminator_hinge_loss([_scale(0.0, [0])] * 2, [_scale(0.0, [0])] * 2)
    assert float(undecided) == pytest.approx(2.0)  # relu(1-0) + relu(1+0)
    wrong = L.discriminator_hinge_loss([_scale(-1.0, [0])], [_scale(0.5, [0])])
    assert float(wrong) == pytest.approx(2.0 + 1.5)
    assert float(L.generator_hinge_loss([_scale(3.0, [0]), _scale(1.0, [0])])) == pytest.approx(-2.0)


def test_feature_matching() -> None:
    real = [_scale(0.0, [1.0, 2.0]), _scale(0.0, [1.0, 2.0])]
    assert float(L.feature_matching_loss(real, real)) == 0.0
    fake = [_scale(0.0, [2.0, 0.0]), _scale(0.0, [1.0, 2.0])]
    # scale 0: |2-1| + |0-2| = 3 ; scale 1: 0 ; averaged over 2 scales
    assert float(L.feature_matching_loss(real, fake)) == pytest.approx(1.5)


def test_keypoint_prior() -> None:
    corners = torch.tensor([[x, y, 0.33] for x in (-0.5, 0.5) for y in (-0.5, 0.5)])[None]
    assert float(L.keypoint_prior_loss(corners)) == 0.0  # sq. distances ≥ 1 > 0.1, depth 0.33
    shallow = corners.clone()
    shallow[..., 2] = 0.0
    assert float(L.keypoint_prior_loss(shallow)) == pytest.approx(0.33)
    collapsed = torch.zeros(1, 4, 3)
    assert float(L.keypoint_prior_loss(collapsed)) == pytest.approx(6 * 0.1 + 0.33)  # 6 pairs
    close = corners.clone()
    close[0, 1, :2] = close[0, 0, :2] + torch.tensor([0.1, 0.0])  # sq. distance 0.01
    assert float(L.keypoint_prior_loss(close)) == pytest.approx(0.09, abs=1e-6)


def test_deformation_prior() -> None:
    assert float(L.deformation_prior_loss(torch.zeros(2, 6, 3))) == 0.0
    assert float(L.deformation_prior_loss(torch.full((2, 6, 3), -0.5))) == pytest.approx(0.5)


def test_head_pose_loss() -> None:
    target = torch.tensor([[10.0, -20.0, 5.0]])
    bins = [degrees_to_bin(target[:, i]) for i in range(3)]
    peaked = [torch.nn.functional.one_hot(b, 66).float() * 50.0 for b in bins]
    exact = L.head_pose_loss(*peaked, target, target, ce_weight=0.0)
    assert float(exact) == 0.0
    good = L.head_pose_loss(*peaked, target, target, ce_weight=1.0)
    assert 0.0 <= float(good) < 1e-6
    wrong = L.head_pose_loss(*[torch.zeros(1, 66)] * 3, target + 30.0, target, ce_weight=0.0)
    assert float(wrong) == pytest.approx(math.radians(30.0), rel=1e-5)


def test_equivariance_zero_for_consistent_keypoints_and_matches_warp() -> None:
    torch.manual_seed(0)
    theta = L.random_affine(2, generator=torch.Generator().manual_seed(1))
    warped_kp = torch.rand(2, 5, 3) * 0.8 - 0.4
    driving_kp = warped_kp.clone()
    driving_kp[..., :2] = L.apply_affine_to_points(warped_kp[..., :2], theta)
    driving_kp[..., 2] += 0.3  # depth is not compared
    assert float(L.equivariance_loss(driving_kp, warped_kp, theta)) < 1e-6
    assert float(L.equivariance_loss(driving_kp + 0.1, warped_kp, theta)) == pytest.approx(0.1, rel=1e-4)

    # The convention of warp_image and apply_affine_to_points agree: a blob at q in the
    # warped image came from T·q in the original.
    size = 65
    grid = torch.linspace(-1, 1, size)
    y, x = torch.meshgrid(grid, grid, indexing="ij")
    p = torch.tensor([0.2, -0.15])
    blob = torch.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2) / (2 * 0.05**2))
    image = blob.expand(1, 3, size, size).contiguous()
    theta1 = theta[:1]
    warped = L.warp_image(image, theta1)[0, 0]
    weights = warped / warped.sum()
    q = torch.stack([(weights * x).sum(), (weights * y).sum()])
    assert torch.allclose(L.apply_affine_to_points(q.view(1, 1, 2), theta1)[0, 0], p, atol=0.01)


def test_perceptual_loss_with_stand_in() -> None:
    vgg = RandomVGGStandIn(seed=0)
    image = torch.rand(2, 3, 64, 64)
    assert float(L.perceptual_loss(vgg, image, image)) == 0.0
    assert float(L.perceptual_loss(vgg, image, image.flip(-1))) > 0.0
    # seeded: the same stand-in every time
    assert torch.equal(RandomVGGStandIn(seed=0).blocks[0][0].weight, vgg.blocks[0][0].weight)


# ---------------------------------------------------------------------------- training
def test_one_step_is_finite_and_exports(tmp_path: Path) -> None:
    from codec.weights_io import load_weights_file

    result = train(_config(tmp_path / "run", chunk_steps=1), dataset=FakePairs())
    assert result.step == 1
    assert result.last_losses and all(math.isfinite(v) for v in result.last_losses.values())
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    loaded = load_weights_file(tmp_path / "run" / "model.safetensors")
    assert loaded.name == "tiny"
    assert (tmp_path / "run" / "discriminator.safetensors").is_file()
    assert list((tmp_path / "run" / "samples").glob("*.png"))
    rows = (tmp_path / "run" / "log.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,epoch,time_s,perceptual") and len(rows) == 2

    with pytest.raises(FileExistsError):  # a fresh run never overwrites a run's state
        train(_config(tmp_path / "run", chunk_steps=1), dataset=FakePairs())

    # --init-from: fp16 weights back in, step carried over, optimizers fresh
    again = train(_config(tmp_path / "run2", chunk_steps=1, init_from=tmp_path / "run"),
                  dataset=FakePairs())
    assert again.step == 2


def test_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    """5 steps straight == 2 steps, stop, resume for 3 (crossing an epoch boundary of 3
    batches), bit for bit on every parameter, buffer and optimizer moment."""
    straight = train(_config(tmp_path / "a", max_steps=5), dataset=FakePairs())
    first = train(_config(tmp_path / "b", chunk_steps=2), dataset=FakePairs())
    assert first.step == 2 and first.stopped_by == "chunk-steps"
    resumed = train(_config(tmp_path / "b", max_steps=5, resume=True), dataset=FakePairs())
    assert straight.step == resumed.step == 5 and resumed.epoch == straight.epoch == 1
    a = torch.load(tmp_path / "a" / "state.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "state.pt", weights_only=True)
    for part in ("model", "discriminator"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"
    for part in ("opt_g", "opt_d"):
        for index, slot in a[part]["state"].items():
            for name, value in slot.items():
                assert torch.equal(value, b[part]["state"][index][name]), f"{part} {index} {name}"
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])
    assert (a["epoch"], a["batch_in_epoch"]) == (b["epoch"], b["batch_in_epoch"])


@pytest.mark.slow
def test_ddp_gloo_two_processes(tmp_path: Path) -> None:
    """torchrun, 2 CPU processes on gloo, 2 steps through the real CLI: one state.pt holding
    both ranks' RNG states, and the export loads."""
    from codec.weights_io import load_weights_file

    clip = _write_clip(tmp_path / "clip.mp4")
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tests" / "perceptual_standin.py"), "train", "--config", "tiny", "--data", str(clip),
           "--out", str(out), "--minutes", "3", "--chunk-steps", "2", "--batch", "2",
           "--workers", "0", "--device", "cpu",
           "--log-every", "1", "--no-eval", "--dataset-length", "8"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["step"] == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    rows = (out / "log.csv").read_text().strip().splitlines()
    assert len(rows) == 3  # header + 2 steps, written by rank 0 only
    assert load_weights_file(out / "model.safetensors").name == "tiny"




@pytest.mark.slow
def test_training_path_needs_no_av_aiortc_constriction(tmp_path: Path) -> None:
    """In a subprocess where av/aiortc/constriction cannot be imported: import the training
    modules, train one step from a video file and evaluate the export on it."""
    clip = _write_clip(tmp_path / "clip.mp4")
    script = BLOCK_TRANSPORT_IMPORTS + f"""
import training.trainer, training.losses, training.evaluate
from training.__main__ import main
sys.path.insert(0, {str(REPO / 'tests')!r})
from perceptual_standin import install
install()
assert main(["train", "--config", "tiny", "--data", {str(clip)!r}, "--dev", {str(clip)!r},
             "--out", {str(tmp_path / 'run')!r}, "--minutes", "2", "--chunk-steps", "1",
             "--batch", "2", "--workers", "0", "--device", "cpu",
             "--dev-frames", "4", "--threads", "1"]) == 0
assert main(["evaluate", "--weights", {str(tmp_path / 'run' / 'model.safetensors')!r},
             "--dev", {str(clip)!r}, "--frames", "4", "--out", {str(tmp_path / 'eval')!r},
             "--device", "cpu", "--threads", "1"]) == 0
bad = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not bad, bad
print("OK")
"""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=150)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    import json

    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    clip_report = report["clips"]["clip"]
    assert clip_report["frames"] == 3
    # The frozen keyframe's scores, recomputed here: frame 0 against frames 1..3 of the clip
    # (64 px, the tiny model's size, so no resize), PSNR in float64, SSIM by scikit-image.
    from skimage.metrics import structural_similarity

    from training.dataset import read_video_rgb

    real = read_video_rgb(clip, max_frames=4).astype(np.float64) / 255.0
    frozen = clip_report["frozen_keyframe"]
    expected_psnr = np.mean([10 * math.log10(1 / np.mean((real[0] - f) ** 2)) for f in real[1:]])
    expected_ssim = np.mean([structural_similarity(real[0], f, gaussian_weights=True, sigma=1.5,
                                                   use_sample_covariance=False, data_range=1.0,
                                                   channel_axis=-1) for f in real[1:]])
    assert frozen["psnr"] == pytest.approx(expected_psnr, abs=1e-3)
    assert frozen["ssim"] == pytest.approx(expected_ssim, abs=1e-4)
    # The disc moved 1..3 px: the frozen frame is close but not equal (≈ 20-30 dB).
    assert 15 < frozen["psnr"] < 40 and 0.5 < frozen["ssim"] < 1
    # One step of training: a picture in [0, 1], neither garbage nor a copy (finite, sane).
    ours = clip_report["ours"]
    assert math.isfinite(ours["psnr"]) and 5 < ours["psnr"] < 60, ours
    assert -1 < ours["ssim"] < 1, ours
    assert (tmp_path / "eval" / "clip.png").is_file()
