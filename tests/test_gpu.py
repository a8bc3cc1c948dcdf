"""CUDA against the CPU on the same inputs: the shipped refiner (fp32, and fp16 autocast) and the
Decoder with the landmark model and its refiner. Marked ``gpu``; skipped without a CUDA device.

fp32 on CUDA runs convolutions in TF32 by default (10-bit mantissa, as the Decoder does), and
fp16 autocast stores activations in 16 bits too. On the CPU, bf16 autocast (7-bit mantissa)
moves this refiner's output by at most 6.2e-3 (mean 6.7e-4) on these inputs, so both 10-bit
paths should stay near 1e-3; the bounds below leave about 5x of room above that.

It needs the project installed with its dependencies (dlib, PyAV, constriction): a CUDA machine
set up like CI, not the bare accelerator image (``pytest -m gpu``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_refiner import _inputs as refiner_inputs

from codec.api import Decoder, Encoder
from codec.families.landmark import pack_keyframe_info
from codec.models.refiner import Refiner, load_refiner
from codec.zoo import LANDMARK_MODELS, WEIGHTS_DIR, resolve_model

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

# Refiner output in [0, 1] on CUDA against the CPU's fp32: (max abs, mean abs).
FP32_TOLERANCE = (5e-3, 5e-4)
FP16_TOLERANCE = (1e-2, 1e-3)


def _shipped_refiner(device: str) -> Refiner:
    entry = LANDMARK_MODELS["landmark"]
    refiner, _ = load_refiner(WEIGHTS_DIR / entry.refiner, device, expected_sha256=entry.refiner_sha256)
    return refiner


def test_refiner_on_cuda_matches_the_cpu() -> None:
    inputs = refiner_inputs(batch=2, height=256, width=256, seed=0)
    with torch.inference_mode():
        expected = _shipped_refiner("cpu")(*inputs)
        refiner = _shipped_refiner("cuda")
        on_cuda = [x.cuda() for x in inputs]
        fp32 = refiner(*on_cuda).cpu()
        with torch.autocast("cuda", dtype=torch.float16):
            fp16 = refiner(*on_cuda).float().cpu()
    # the trained net really changes these inputs: the comparison covers more than the warp
    assert float((expected - inputs[0]).abs().mean()) > 0.01
    for name, output, (max_abs, mean_abs) in (("fp32", fp32, FP32_TOLERANCE), ("fp16", fp16, FP16_TOLERANCE)):
        diff = (output - expected).abs()
        assert output.shape == expected.shape and bool(torch.isfinite(output).all()), name
        assert float(diff.max()) <= max_abs and float(diff.mean()) <= mean_abs, \
            (name, float(diff.max()), float(diff.mean()))


def _moving_head(portrait) -> list[np.ndarray]:
    """The portrait, then the plain warp of it at known poses and expressions: a head that
    turns, nods and talks, with the face inside the crop (so the refiner runs)."""
    crop, landmarks = portrait
    plain = resolve_model("landmark", refiner=False)
    source = plain.prepare_source(crop, pack_keyframe_info(landmarks))
    neutral = plain.neutral_motion(source)
    motions = []
    for i in range(1, 9):
        motion = neutral.copy()
        motion[0] += 2.0 * i  # yaw
        motion[1] += 4.0 * math.sin(i)  # pitch
        motion[6] += 0.5 * math.sin(2 * i)  # the first expression coefficient
        motions.append(motion)
    return [crop, *plain.render(source, np.stack(motions))]


def test_decoder_on_cuda_matches_the_cpu(portrait) -> None:
    frames = _moving_head(portrait)
    encoder = Encoder.from_pretrained("landmark")
    packets = [p for i, frame in enumerate(frames) for p in encoder.encode(frame, i / 25)]
    header = encoder.header()
    cpu = Decoder.from_header(header, device="cpu")
    cuda = Decoder.from_header(header, device="cuda")
    assert next(cuda.model.refiner.parameters()).is_cuda
    expected = np.stack([f.image for f in cpu.decode_stream(packets)]).astype(np.int16)
    got = np.stack([f.image for f in cuda.decode_stream(packets)]).astype(np.int16)
    assert len(expected) == len(frames) and got.shape == expected.shape
    # the refiner ran on these frames: without it they differ
    plain = Decoder.from_header(header, model=resolve_model("landmark", refiner=False))
    warp_only = np.stack([f.image for f in plain.decode_stream(packets)]).astype(np.int16)
    assert np.abs(warp_only - expected).max() > 8
    # uint8 frames: TF32 moves the refiner's output by well under a level, so a pixel may round
    # the other way, rarely by two
    diff = np.abs(got - expected)
    assert diff.max() <= 2 and diff.mean() <= 0.1, (diff.max(), diff.mean())
