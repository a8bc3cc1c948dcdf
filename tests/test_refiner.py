"""Refiner tests: identity at init, size and shapes, a few steps learn, export round trip,
the on-the-fly warp equals the landmark family's render, and the trainer, its evaluation
and the GPU chunk script run on a tiny synthetic segment set without av/aiortc/constriction.

All on the CPU with synthetic data (CI has no cache/ folder); the perceptual backbones are
not needed (``--perceptual none``, ``--no-lpips``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import BLOCK_TRANSPORT_IMPORTS

from codec.models.refiner import LANDMARK_CHANNELS, MASK_BIAS, Refiner, landmark_masks
from training.refiner import (
    REFINER_FORMAT,
    RefinerTrainConfig,
    export_refiner,
    load_refiner,
    refiner_loss,
    train,
)
from training.refiner_data import RefinerPairs, region_masks, warp_inputs
from training.refiner_eval import evaluate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    # On a shared 2-core machine two OpenMP threads can make each tiny step take seconds
    # (measured: 1.5 s vs 25 ms); the tests need one.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _inputs(batch: int = 2, height: int = 64, width: int = 64, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random refiner inputs: warped, keyframe (smooth images), maps (identity + jitter), masks."""
    g = torch.Generator().manual_seed(seed)

    def image() -> torch.Tensor:
        low = torch.rand(batch, 3, 8, 8, generator=g)
        return torch.nn.functional.interpolate(low, size=(height, width), mode="bilinear")

    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32),
                            torch.arange(width, dtype=torch.float32), indexing="ij")
    maps = torch.stack([xs, ys])[None].repeat(batch, 1, 1, 1) + torch.randn(batch, 2, height, width, generator=g)
    masks = torch.rand(batch, LANDMARK_CHANNELS, height, width, generator=g)
    return image(), image(), maps, masks


# ---------------------------------------------------------------------------- the network
def test_identity_at_init_bit_for_bit() -> None:
    torch.manual_seed(0)
    refiner = Refiner()
    warped, keyframe, maps, masks = _inputs()
    with torch.no_grad():
        out = refiner(warped, keyframe, maps, masks)
    assert torch.equal(out, warped)
    assert torch.all(refiner.head.weight == 0) and float(refiner.head.bias[3].detach()) == MASK_BIAS


def test_frozen_refiner_matches_the_eager_one() -> None:
    """Traced and frozen: the eager output within float32 rounding at any batch size, and
    within a level of 255 with the U-Net in bfloat16; at init still the warp, bit for bit."""
    from codec.models.refiner import frozen_refiner

    torch.manual_seed(0)
    refiner = Refiner().eval()
    identity = frozen_refiner(refiner, 64, bfloat16=True)
    warped, keyframe, maps, masks = _inputs(batch=2)
    with torch.inference_mode():
        assert torch.equal(identity(warped, keyframe, maps, masks), warped)
        torch.nn.init.normal_(refiner.head.weight, std=0.3)  # a refiner that changes the frame
        frozen = frozen_refiner(refiner, 64, bfloat16=False)
        half = frozen_refiner(refiner, 64, bfloat16=True)
        assert isinstance(frozen, torch.jit.ScriptModule) and isinstance(half, torch.jit.ScriptModule)
        for batch in (1, 3):
            inputs = _inputs(batch=batch, seed=batch)
            expected = refiner(*inputs)
            assert (expected - inputs[0]).abs().max() > 0.05
            assert (frozen(*inputs) - expected).abs().max() < 1e-5
            assert half(*inputs).dtype == torch.float32
            assert (half(*inputs) - expected).abs().max() < 1.5 / 255
    refiner.train()
    assert frozen_refiner(refiner, 64) is refiner  # training: the module itself


def test_the_landmark_model_refreezes_a_changed_refiner() -> None:
    """Weights changed in place (a training step, a load_state_dict) or a new refiner: the
    next render runs the new weights, not a stale frozen copy."""
    from codec.zoo import resolve_model

    model = resolve_model("landmark")
    first = model._inference_refiner()
    assert model._inference_refiner() is first
    with torch.no_grad():
        model.refiner.head.bias.add_(0.1)
    second = model._inference_refiner()
    assert second is not first
    model.refiner = Refiner().eval()
    assert model._inference_refiner() is not second
    model.refiner_mode = "eager"
    assert model._inference_refiner() is model.refiner


def test_size_and_shapes(tmp_path: Path) -> None:
    refiner = Refiner()
    assert refiner.parameter_count() <= 1_000_000
    export_refiner(refiner, tmp_path / "r.safetensors")
    assert (tmp_path / "r.safetensors").stat().st_size <= 2 * 1024 * 1024
    warped, keyframe, maps, masks = _inputs(batch=3, height=64, width=96)
    assert refiner(warped, keyframe, maps, masks).shape == (3, 3, 64, 96)
    # the flow input is zero for the identity map and ±1 at half the width
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(96.0), indexing="ij")
    identity = torch.stack([xs, ys])[None]
    assert torch.equal(Refiner.flow_input(identity), torch.zeros(1, 2, 64, 96))
    assert torch.allclose(Refiner.flow_input(identity + 48.0), torch.ones(1, 2, 64, 96))


def test_landmark_and_region_masks() -> None:
    from codec.zoo import resolve_model

    points = resolve_model("landmark").default_landmarks()
    masks = landmark_masks(points, 256)
    assert masks.shape == (256, 256, LANDMARK_CHANNELS) and masks.dtype == np.float32
    assert 0.0 <= masks.min() and masks.max() <= 1.0
    eye = np.round(points[36:42].mean(axis=0)).astype(int)
    lips = np.round(points[48:60].mean(axis=0)).astype(int)
    assert masks[eye[1], eye[0], 2] > 0.5 and masks[lips[1], lips[0], 0] > 0.5
    assert masks[5, 5].max() == 0.0
    mouth, eyes = region_masks(points, 256)
    assert mouth[lips[1], lips[0]] == 1.0 and eyes[eye[1], eye[0]] == 1.0 and mouth.sum() > eyes.sum() / 4


def test_a_few_steps_reduce_the_loss() -> None:
    torch.manual_seed(1)
    refiner = Refiner()
    warped, keyframe, maps, masks = _inputs(batch=2, seed=3)
    target = (warped + 0.2 * masks[:, :1]).clamp(0, 1)  # a correction where the "mouth" mask is
    region = (masks[:, :1] > 0.5).float()
    optimizer = torch.optim.Adam(refiner.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss, terms = refiner_loss(refiner(warped, keyframe, maps, masks), target, region, None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(terms["loss"])
    assert losses[-1] < 0.9 * losses[0], losses


def test_export_load_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(2)
    refiner = Refiner(widths=(8, 16), head_width=4)
    with torch.no_grad():
        for p in refiner.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "refiner.safetensors"
    export_refiner(refiner, path, {"steps": 7, "samples": 28})
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    assert list(metadata) == ["facecodec"]
    meta = json.loads(metadata["facecodec"])
    assert meta["format"] == REFINER_FORMAT and meta["config"] == refiner.config
    loaded, meta2 = load_refiner(path)
    assert meta2 == meta and meta["trained"]["samples"] == 28 and not loaded.training
    for key, value in refiner.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value.half().float()), key
    # a fresh refiner survives fp16 exactly (zeros and −2), so it stays the identity
    export_refiner(Refiner(), tmp_path / "fresh.safetensors")
    fresh, _ = load_refiner(tmp_path / "fresh.safetensors")
    warped, keyframe, maps, masks = _inputs()
    with torch.no_grad():
        assert torch.equal(fresh(warped, keyframe, maps, masks), warped)


# ---------------------------------------------------------------------------- synthetic data
def _face_points(frames: int) -> np.ndarray:
    """frames×68×2: the model's default face, the head drifting and the mouth opening."""
    from codec.zoo import resolve_model

    base = resolve_model("landmark").default_landmarks()
    out = np.repeat(base[None], frames, axis=0).astype(np.float32)
    for t in range(frames):
        out[t] += np.array([1.5 * t, 0.5 * t], np.float32)
        out[t, [56, 57, 58, 65, 66, 67], 1] += 1.0 * t  # lower lip goes down
    return out


def _write_set(root: Path, split: str, segments: int = 2, frames: int = 6) -> Path:
    """A segment set in the builder's layout: index.json, 256px mp4 + npz labels per segment."""
    (root / "segments").mkdir(parents=True)
    entries = []
    rng = np.random.default_rng(0)
    for s in range(segments):
        name = f"synthetic__{s:02d}"
        points = _face_points(frames)
        writer = cv2.VideoWriter(str(root / "segments" / f"{name}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"),
                                 25, (256, 256))
        backdrop = cv2.resize(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), (256, 256))
        for t in range(frames):
            frame = backdrop.copy()
            cv2.fillPoly(frame, [np.round(points[t, 0:17]).astype(np.int32)], (90, 140, 200))
            cv2.fillPoly(frame, [np.round(points[t, 60:68]).astype(np.int32)], (20, 20, 60))
            writer.write(frame)
        writer.release()
        np.savez(root / "segments" / f"{name}.npz", pose=np.zeros((frames, 3), np.float32),
                 landmarks=points.astype(np.float16), detected=np.ones(frames, bool))
        entries.append({"name": name, "file": f"segments/{name}.mp4", "labels": f"segments/{name}.npz",
                        "identity": f"id{s}", "source": "synthetic", "frames": frames, "fps": 25.0,
                        "size": 256})
    (root / "index.json").write_text(json.dumps({"split": split, "size": 256, "segments": entries}))
    return root


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("refiner_sets")
    return _write_set(base / "train", "train"), _write_set(base / "dev", "dev", segments=1, frames=8)


def test_warp_inputs_match_the_family_render(sets: tuple[Path, Path]) -> None:
    from codec.families.landmark import motion_from_landmarks, pack_keyframe_info
    from codec.zoo import resolve_model

    model = resolve_model("landmark", refiner=False)
    points = _face_points(6)
    key = cv2.resize(np.random.default_rng(1).integers(0, 255, (16, 16, 3), dtype=np.uint8), (256, 256))
    warped, maps, masks = warp_inputs(model, key, points[0], points[5])
    source = model.prepare_source(key, pack_keyframe_info(points[0]))
    rendered = model.render(source, motion_from_landmarks(points[5], 256, model.face)[None])[0]
    assert np.array_equal(warped, rendered)
    assert maps.shape == (2, 256, 256) and maps.dtype == np.float32
    assert masks.shape == (256, 256, LANDMARK_CHANNELS)


def test_pairs_are_deterministic_and_shaped(sets: tuple[Path, Path]) -> None:
    train_set, _ = sets
    a, b = RefinerPairs(train_set, seed=5), RefinerPairs(train_set, seed=5, start=3)
    assert [a.pair(k) for k in range(3, 8)] == [b.pair(k) for k in range(5)]
    assert all(i != j for _, i, j in (a.pair(k) for k in range(20)))
    item = a[0]
    assert item["warped"].shape == item["keyframe"].shape == item["target"].shape == (3, 256, 256)
    assert item["warped"].dtype == torch.uint8
    assert item["maps"].shape == (2, 256, 256) and item["landmarks"].shape == (LANDMARK_CHANNELS, 256, 256)
    assert item["region"].shape == (1, 256, 256) and 0 < float(item["region"].sum())
    for key, value in a[4].items():
        assert torch.equal(value, RefinerPairs(train_set, seed=5, preload=True)[4][key]), key


def test_train_export_and_evaluate(tmp_path: Path, sets: tuple[Path, Path]) -> None:
    train_set, dev_set = sets
    cfg = RefinerTrainConfig(data=train_set, out=tmp_path / "run", minutes=2.0, batch=2, workers=0,
                             threads=1, perceptual="none", widths=(8, 16, 16, 16), head_width=4,
                             max_steps=2, log_every=1)
    result = train(cfg)
    assert result["steps"] == 2 and result["samples"] == 4 and result["stopped_by"] == "max-steps"
    rows = (tmp_path / "run" / "log.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,seconds,samples,loss") and len(rows) == 3
    # --init-from: continues the counters (and so the pair stream), keeps the file's config
    again = train(RefinerTrainConfig(**{**cfg.__dict__, "out": tmp_path / "run2",
                                        "init_from": tmp_path / "run" / "refiner.safetensors",
                                        "widths": (16, 32, 64, 128)}))
    assert again["steps"] == 4 and again["samples"] == 8
    _, meta = load_refiner(tmp_path / "run2" / "refiner.safetensors")
    assert meta["config"]["widths"] == [8, 16, 16, 16]

    report = evaluate(dev_set, tmp_path / "run2" / "refiner.safetensors", every=3, use_lpips=False)
    assert report["segments"][0]["scored"] == 2  # frames 3 and 6 of 8
    assert set(report["mean"]) >= {"warp_psnr", "refined_psnr", "frozen_psnr", "warp_mouth_l1",
                                   "refined_eyes_l1"}
    identity = evaluate(dev_set, None, every=3, use_lpips=False)["mean"]
    assert identity["warp_psnr"] == identity["refined_psnr"]
    with pytest.raises(ValueError, match="train split"):
        evaluate(train_set, None, use_lpips=False)




def test_trainer_needs_no_av_aiortc_constriction(tmp_path: Path, sets: tuple[Path, Path]) -> None:
    """With av/aiortc/constriction unimportable: import the modules, train one step, evaluate."""
    train_set, dev_set = sets
    script = BLOCK_TRANSPORT_IMPORTS + f"""
import codec.models.refiner, training.refiner
from training.refiner import main
assert main(["train", "--data", {str(train_set)!r}, "--out", {str(tmp_path / 'run')!r}, "--minutes", "1",
             "--max-steps", "1", "--batch", "1", "--workers", "0", "--threads", "1",
             "--perceptual", "none", "--widths", "8", "16"]) == 0
assert main(["evaluate", "--weights", {str(tmp_path / 'run' / 'refiner.safetensors')!r}, "--data",
             {str(dev_set)!r}, "--every", "4", "--no-lpips", "--threads", "1",
             "--json", {str(tmp_path / 'eval.json')!r}]) == 0
bad = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not bad, bad
print("OK")
"""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((tmp_path / "eval.json").read_text())["segments"][0]["scored"] == 1


@pytest.mark.slow
def test_gpu_chunk_script_runs_on_cpu(tmp_path: Path, sets: tuple[Path, Path]) -> None:
    """The accelerator's chunk, CPU-sized, on the synthetic sets: trains, evaluates, fills $OUT;
    a second call on the same $RUN continues from the first (a warm machine)."""
    train_set, dev_set = sets
    env = dict(os.environ, MINUTES="0.05", DEVICE="cpu", WORKERS="0", BATCH="1", PERCEPTUAL="none",
               PRELOAD="0", EVERY="4", EVAL_ARGS="--no-lpips --threads 1", TRAIN=str(train_set), DEV=str(dev_set),
               RUN=str(tmp_path / "run"), OUT=str(tmp_path / "out"), PYTHON=sys.executable,
               EXTRA="--widths 8 16 --threads 1", PYTHONPATH=str(REPO))
    for _ in range(2):
        proc = subprocess.run(["bash", "training/refiner_chunk.sh"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=240, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "log.csv", "refiner.safetensors", "refiner_eval.json"]
    assert "initialised from" in proc.stderr  # the second call started from the first's file
    _, meta = load_refiner(tmp_path / "out" / "refiner.safetensors")
    assert meta["trained"]["steps"] >= 2


# ---------------------------------------------------------------------------- shipped refiner
def test_shipped_refiner_loads_by_default_and_renders_what_it_was_evaluated_on() -> None:
    """The zoo's landmark model carries the registered refiner; its render equals the
    training evaluation's path (warp_inputs + the refiner) bit for bit when the refiner runs
    eager, and within a level of 255 as it runs by default (traced and frozen, maybe in
    bfloat16); it differs from the plain warp, and ``refiner=False`` gives the plain warp
    with the same stream identity."""
    from codec.families.landmark import motion_from_landmarks, pack_keyframe_info
    from codec.zoo import resolve_model
    from evaluation.metrics import frames_to_tensor

    model = resolve_model("landmark")
    plain = resolve_model("landmark", refiner=False)
    assert model.refiner is not None and plain.refiner is None and model.sha256 == plain.sha256
    points = _face_points(6)
    key = cv2.resize(np.random.default_rng(3).integers(0, 255, (16, 16, 3), dtype=np.uint8), (256, 256))
    source = model.prepare_source(key, pack_keyframe_info(points[0]))
    motions = np.stack([motion_from_landmarks(points[i], 256, model.face) for i in (2, 5)])
    fast = model.render(source, motions)
    model.refiner_mode = "eager"
    rendered = model.render(source, motions)
    warped = plain.render(plain.prepare_source(key, pack_keyframe_info(points[0])), motions)
    for k, i in enumerate((2, 5)):
        warp, maps, masks = warp_inputs(plain, key, points[0], points[i])
        assert np.array_equal(warp, warped[k])
        with torch.inference_mode():
            out = model.refiner(frames_to_tensor(warp).float(), frames_to_tensor(key).float(),
                                torch.from_numpy(maps[None]), torch.from_numpy(masks[None].transpose(0, 3, 1, 2)))
        expected = (out.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()[0]
        assert np.array_equal(rendered[k], expected)
        assert not np.array_equal(rendered[k], warp)
        difference = np.abs(fast[k].astype(int) - expected)
        assert difference.max() <= 2 and difference.mean() < 0.1


def test_refiner_weights_are_checked(tmp_path: Path) -> None:
    from codec.errors import WeightsError
    from codec.models.refiner import load_refiner as load_checked
    from codec.zoo import LANDMARK_MODELS, WEIGHTS_DIR

    entry = LANDMARK_MODELS["landmark"]
    with pytest.raises(WeightsError, match="sha256"):
        load_checked(WEIGHTS_DIR / entry.refiner, expected_sha256="0" * 64)
    with pytest.raises(WeightsError, match="not found"):
        load_checked(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError):
        load_checked(tmp_path / "junk.safetensors")


def test_calls_drop_the_refiner_when_it_does_not_fit_the_frame_interval(monkeypatch) -> None:
    from app import mode_choice

    class Model:
        refiner = object()

    slow, fast = Model(), Model()
    monkeypatch.setattr(mode_choice, "measure_render_fps", lambda model, frames=3, size=None: 30.0)  # 33 ms a frame
    mode_choice.fit_refiner_to_budget(slow, fps=25.0)  # budget 10 ms
    assert slow.refiner is None
    monkeypatch.setattr(mode_choice, "measure_render_fps", lambda model, frames=3, size=None: 200.0)  # 5 ms
    mode_choice.fit_refiner_to_budget(fast, fps=25.0)
    assert fast.refiner is not None


def test_refiner_leaves_frames_whose_face_is_outside_the_crop() -> None:
    """With most driving landmarks outside the crop the refiner has no face to repair (it
    painted a faint copy of the keyframe's face there): such frames show the plain warp."""
    from codec.families.landmark import motion_from_landmarks, pack_keyframe_info
    from codec.zoo import resolve_model

    model = resolve_model("landmark")
    plain = resolve_model("landmark", refiner=False)
    points = _face_points(3)
    key = cv2.resize(np.random.default_rng(4).integers(0, 255, (16, 16, 3), dtype=np.uint8), (256, 256))
    motion = motion_from_landmarks(points[1], 256, model.face)
    away = motion.copy()
    away[3] += 1.5  # translation x, in crop units: the whole face leaves the crop
    motions = np.stack([motion, away])
    source = model.prepare_source(key, pack_keyframe_info(points[0]))
    rendered = model.render(source, motions)
    warped = plain.render(plain.prepare_source(key, pack_keyframe_info(points[0])), motions)
    assert not np.array_equal(rendered[0], warped[0])  # in view: refined
    assert np.array_equal(rendered[1], warped[1])  # out of view: the plain warp
