"""Shape, range, determinism and import-hygiene tests of codec.models on the "tiny" config."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from codec.config import CONFIGS, ModelConfig, get_config
from codec.keypoints import POSE_BINS
from codec.models import (
    FaceVid2Vid,
    MultiScalePatchDiscriminator,
    PoseExpression,
    SourceState,
    build_discriminator,
    build_model,
)
from codec.models.blocks import coordinate_grid

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = get_config("tiny")


@pytest.fixture(scope="module")
def tiny_model() -> FaceVid2Vid:
    return build_model("tiny", seed=0)


def _images(batch: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    size = TINY.image_size
    return torch.rand(batch, 3, size, size, generator=generator)


# ---------------------------------------------------------------- config
def test_config_json_round_trip() -> None:
    for config in CONFIGS.values():
        data = json.loads(json.dumps(config.to_dict()))
        assert ModelConfig.from_dict(data) == config


def test_config_rejects_unknown_and_missing_keys() -> None:
    data = TINY.to_dict()
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({**data, "colour": 3})
    del data["num_kp"]
    with pytest.raises(ValueError, match="missing"):
        ModelConfig.from_dict(data)


def test_config_rejects_inconsistent_sizes() -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(TINY, generator_up_channels=(8,))
    with pytest.raises(ValueError):
        dataclasses.replace(TINY, num_kp=0)


def test_get_config_unknown_lists_names() -> None:
    with pytest.raises(KeyError, match="vox256"):
        get_config("no-such-model")


def test_vox256_parameter_budget() -> None:
    config = get_config("vox256")
    assert config.image_size == 256 and config.num_kp == 20
    with torch.device("meta"):  # shapes only: nothing allocated, nothing run
        model = build_model(config)
        discriminator = build_discriminator(config)
    counts = model.parameter_counts()
    assert counts["total"] == model.inference_parameter_count() <= 10_000_000
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    assert sum(p.numel() for p in discriminator.parameters()) <= 3_000_000


# ---------------------------------------------------------------- shapes and ranges
def test_estimate_motion_shapes(tiny_model: FaceVid2Vid) -> None:
    with torch.inference_mode():
        pose = tiny_model.estimate_motion(_images(2))
    assert isinstance(pose, PoseExpression)
    for angle in (pose.yaw, pose.pitch, pose.roll):
        assert angle.shape == (2,) and bool((angle.abs() < 99).all())
    for logits in (pose.yaw_logits, pose.pitch_logits, pose.roll_logits):
        assert logits.shape == (2, POSE_BINS)
    assert pose.translation.shape == (2, 3)
    assert pose.expression.shape == (2, TINY.num_kp, 3)
    assert pose.angles().shape == (2, 3) and pose.rotation().shape == (2, 3, 3)
    # t and δ heads start near zero
    assert pose.translation.abs().max() < 0.05 and pose.expression.abs().max() < 0.05


def test_prepare_source_and_render_shapes(tiny_model: FaceVid2Vid) -> None:
    c = TINY
    with torch.inference_mode():
        source = tiny_model.prepare_source(_images(1))
        assert isinstance(source, SourceState)
        assert source.feature_volume.shape == (1, c.feature_channels, c.feature_depth,
                                               c.feature_size, c.feature_size)
        assert source.canonical_keypoints.shape == (1, c.num_kp, 3)
        assert source.source_keypoints.shape == (1, c.num_kp, 3)
        assert source.rotation.shape == (1, 3, 3)
        assert bool((source.canonical_keypoints.abs() <= 1).all())
        image = tiny_model.render(source, source.rotation, source.translation, source.expression)
    assert image.shape == (1, 3, c.image_size, c.image_size)
    assert bool(torch.isfinite(image).all()) and image.min() >= 0 and image.max() <= 1


def test_forward_training_outputs(tiny_model: FaceVid2Vid) -> None:
    c = TINY
    source, driving = _images(2, seed=2), _images(2, seed=3)
    out = tiny_model(source, driving)
    assert out.prediction.shape == (2, 3, c.image_size, c.image_size)
    assert out.deformation.shape == (2, c.feature_depth, c.feature_size, c.feature_size, 3)
    assert out.occlusion.shape == (2, 1, c.feature_size, c.feature_size)
    assert bool((out.occlusion > 0).all() and (out.occlusion < 1).all())
    assert out.masks.shape == (2, c.num_kp + 1, c.feature_depth, c.motion_size, c.motion_size)
    torch.testing.assert_close(out.masks.sum(1), torch.ones_like(out.masks[:, 0]))
    for kp in (out.canonical_keypoints, out.source_keypoints, out.driving_keypoints):
        assert kp.shape == (2, c.num_kp, 3)
    # gradients reach every network that training updates
    out.prediction.mean().backward()
    for name in ("appearance", "canonical_kp", "head_pose", "motion", "generator"):
        grads = [p.grad for p in getattr(tiny_model, name).parameters() if p.grad is not None]
        assert grads, f"no gradient reached {name}"
    tiny_model.zero_grad(set_to_none=True)


def test_discriminator_outputs() -> None:
    discriminator = build_discriminator("tiny", seed=0)
    assert isinstance(discriminator, MultiScalePatchDiscriminator)
    outputs = discriminator(_images(2))
    assert len(outputs) == TINY.discriminator_scales
    for scale in outputs:
        assert len(scale.features) == len(TINY.discriminator_channels)
        assert scale.logits.shape[:2] == (2, 1)


# ---------------------------------------------------------------- behaviour
def test_seeded_build_is_deterministic() -> None:
    state_a = build_model("tiny", seed=7).state_dict()
    state_b = build_model("tiny", seed=7).state_dict()
    state_c = build_model("tiny", seed=8).state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert any(not torch.equal(state_a[k], state_c[k]) for k in state_a)


def test_seeded_build_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model("tiny", seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_build_model_is_in_eval_mode(tiny_model: FaceVid2Vid) -> None:
    assert not tiny_model.training
    assert tiny_model.config == TINY


def test_render_broadcasts_batch1_source(tiny_model: FaceVid2Vid) -> None:
    with torch.inference_mode():
        source = tiny_model.prepare_source(_images(1))
        poses = tiny_model.estimate_motion(_images(3, seed=4))
        rotation = poses.rotation()
        batched = tiny_model.render(source, rotation, poses.translation, poses.expression)
        assert batched.shape == (3, 3, TINY.image_size, TINY.image_size)
        for i in range(3):
            single = tiny_model.render(source, rotation[i:i + 1], poses.translation[i:i + 1],
                                       poses.expression[i:i + 1])
            torch.testing.assert_close(batched[i:i + 1], single, atol=1e-5, rtol=1e-4)


def test_render_rejects_bad_motion_shapes(tiny_model: FaceVid2Vid) -> None:
    with torch.inference_mode():
        source = tiny_model.prepare_source(_images(1))
        with pytest.raises(ValueError):
            tiny_model.render(source, source.rotation, source.translation,
                              torch.zeros(1, TINY.num_kp + 1, 3))


def test_render_with_source_pose_is_finite_and_identity_warp() -> None:
    # With the source's own pose and expression, x_d = x_s and R_d = R_s, so every
    # flow is the identity map and so is their mask-weighted mix.
    model = build_model("tiny", seed=3)
    with torch.inference_mode():
        source = model.prepare_source(_images(1, seed=9))
        image = model.render(source, source.rotation, source.translation, source.expression)
        motion = model.motion(source.feature_volume, source.source_keypoints,
                              source.source_keypoints, source.rotation, source.rotation)
    assert bool(torch.isfinite(image).all())
    grid = coordinate_grid(TINY.feature_depth, TINY.feature_size, TINY.feature_size)
    torch.testing.assert_close(motion.deformation[0], grid, atol=1e-5, rtol=0)


def test_canonical_keypoints_distinct_at_init(tiny_model: FaceVid2Vid) -> None:
    with torch.inference_mode():
        keypoints = tiny_model.canonical_kp(_images(2))
    distances = torch.cdist(keypoints, keypoints)
    off_diagonal = distances + torch.eye(TINY.num_kp) * 10
    assert off_diagonal.min() > 0.1, "untrained keypoints collapsed together"
    # and the detector does look at the image
    assert not torch.allclose(keypoints[0], keypoints[1])


def test_models_import_without_io_libraries() -> None:
    code = (
        "import sys\n"
        "sys.modules['av'] = None\n"
        "sys.modules['aiortc'] = None\n"
        "sys.modules['constriction'] = None\n"
        "import codec.models, codec.config, codec.keypoints\n"
        "codec.models.build_model('tiny', seed=0)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_head_pose_speed_benchmark_writes_json(tmp_path: Path) -> None:
    from benchmarks.head_pose_speed import main

    out = tmp_path / "speed.json"
    threads = torch.get_num_threads()
    try:
        assert main(["--config", "tiny", "--frames", "3", "--warmup", "1", "--threads", "1",
                     "--json", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads(out.read_text())
    assert report["name"] == "head_pose_speed"
    assert set(report["env"]) >= {"torch", "device", "threads", "cpu"}
    assert report["results"][0]["median_ms"] > 0


def test_render_in_half_precision_matches_float() -> None:
    # fp16 is the GPU product path; the CPU kernels cover it too for the tiny model.
    model = build_model("tiny", seed=0)
    half_model = build_model("tiny", seed=0).half()
    image = _images(1, seed=5)
    with torch.inference_mode():
        source = model.prepare_source(image)
        want = model.render(source, source.rotation, source.translation, source.expression)
        half_source = half_model.prepare_source(image.half())
        got = half_model.render(half_source, source.rotation, source.translation,
                                source.expression)
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.float(), want, atol=2e-2, rtol=0)
