"""Keyframe image coding: round trip, rate vs quality, corrupt input → typed errors."""

from __future__ import annotations

import struct
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from skimage import data as skimage_data

from codec.errors import BitstreamError, OversizedError
from codec.keyframe import (
    KEYFRAME_CODEC_IDS,
    KeyframeDecodeError,
    KeyframeOversizedError,
    decode_keyframe,
    encode_keyframe,
    keyframe_dimensions,
)

CODECS = ["webp", "jpeg", "av1"]


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    """A 256×192 face-like test image (the astronaut's head, non-square on purpose)."""
    return np.ascontiguousarray(skimage_data.astronaut()[40:296, 130:322])


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def test_codec_ids_are_stable() -> None:
    assert KEYFRAME_CODEC_IDS == {"webp": 1, "jpeg": 2, "av1": 5}


@pytest.mark.parametrize("codec", CODECS)
def test_round_trip(face: np.ndarray, codec: str) -> None:
    data = encode_keyframe(face, codec, quality=90)
    assert keyframe_dimensions(data, codec) == (192, 256)
    decoded = decode_keyframe(data, codec)
    assert decoded.shape == face.shape and decoded.dtype == np.uint8
    assert _psnr(decoded, face) > 33.0
    # RGB order kept (a BGR swap would wreck the PSNR of the red/blue channels)
    assert _psnr(decoded[..., 0], face[..., 0]) > 30.0


@pytest.mark.parametrize("codec", CODECS)
def test_size_and_quality_grow_with_quality(face: np.ndarray, codec: str) -> None:
    sizes, psnrs = [], []
    for quality in (20, 50, 90):
        data = encode_keyframe(face, codec, quality)
        sizes.append(len(data))
        psnrs.append(_psnr(decode_keyframe(data, codec), face))
    assert sizes[0] < sizes[1] < sizes[2]
    assert psnrs[0] < psnrs[1] < psnrs[2]


@pytest.mark.parametrize("codec", CODECS)
def test_corrupt_input_raises_typed_error(face: np.ndarray, codec: str) -> None:
    data = encode_keyframe(face, codec, 80)
    other = encode_keyframe(face, "jpeg" if codec == "webp" else "webp", 80)
    for bad in (b"", data[:10], data[:40], data[: len(data) // 2], b"\x00" * 500, other):
        with pytest.raises(KeyframeDecodeError):
            decode_keyframe(bad, codec)
    assert issubclass(KeyframeDecodeError, BitstreamError)


def test_oversized_header_rejected_before_decoding(face: np.ndarray) -> None:
    data = bytearray(encode_keyframe(face, "jpeg", 80))
    sof = data.index(b"\xff\xc0")  # baseline frame header: FF C0 len(2) P(1) H(2) W(2)
    data[sof + 5 : sof + 9] = struct.pack(">HH", 5000, 5000)
    with pytest.raises(KeyframeOversizedError) as info:
        decode_keyframe(bytes(data), "jpeg")
    assert isinstance(info.value, OversizedError) and isinstance(info.value, KeyframeDecodeError)


def test_oversized_av1_sequence_header_rejected_before_decoding() -> None:
    """An AV1 keyframe wider than 4096 (made with PyAV directly: encode_keyframe refuses it)."""
    import av

    context = av.CodecContext.create("libsvtav1", "w")
    context.width, context.height, context.pix_fmt = 4160, 64, "yuv420p"
    context.time_base = Fraction(1, 25)
    context.options = {"preset": "12", "crf": "50"}
    frame = av.VideoFrame.from_ndarray(np.full((64, 4160, 3), 90, np.uint8), format="rgb24")
    frame = frame.reformat(format="yuv420p")
    frame.pts = 0
    data = b"".join(bytes(p) for p in [*context.encode(frame), *context.encode(None)])
    assert keyframe_dimensions(data, "av1") == (4160, 64)
    with pytest.raises(KeyframeOversizedError):
        decode_keyframe(data, "av1")


def test_av1_needs_even_sides(face: np.ndarray) -> None:
    with pytest.raises(ValueError, match="even"):
        encode_keyframe(face[:, :191], "av1")


def test_bad_arguments(face: np.ndarray) -> None:
    with pytest.raises(ValueError):
        encode_keyframe(face, "png")
    with pytest.raises(ValueError):
        encode_keyframe(face.astype(np.float32))
    with pytest.raises(ValueError):
        encode_keyframe(face, quality=0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    codec=st.sampled_from(CODECS),
    position=st.floats(0.0, 1.0),
    junk=st.binary(min_size=1, max_size=16),
    cut=st.booleans(),
)
def test_mutated_input_never_crashes(codec: str, position: float, junk: bytes, cut: bool) -> None:
    """Random damage gives either a decoded image or KeyframeDecodeError, nothing else."""
    image = np.ascontiguousarray(skimage_data.astronaut()[100:164, 180:244])
    data = encode_keyframe(image, codec, 70)
    at = int(position * (len(data) - 1))
    damaged = data[:at] + junk + (b"" if cut else data[at + len(junk) :])
    try:
        decoded = decode_keyframe(damaged, codec)
    except KeyframeDecodeError:
        return
    assert decoded.dtype == np.uint8 and decoded.ndim == 3 and decoded.shape[2] == 3
