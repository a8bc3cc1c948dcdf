"""Property-based fuzzing: parsers see random bytes and mutated valid inputs, and only
typed CodecError subclasses may escape (never IndexError, struct.error, a hang or a crash).

Examples per test: FUZZ_EXAMPLES (default 2000, so CI stays fast). For a long run use
``FUZZ_EXAMPLES=50000 pytest tests/test_fuzz_bitstream.py`` or the plain fuzzer
``python -m benchmarks.fuzz_bitstream --inputs 100000``.
"""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Callable

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codec.bitstream import (
    AudioHeader,
    ContainerWriter,
    HeaderFlags,
    KeyframeCodec,
    KeyframePacket,
    MotionPacket,
    StreamHeader,
    parse_packet,
    read_container,
)
from codec.errors import CodecError
from codec.families.base import ModelFamily
from codec.families.landmark import pack_keyframe_info
from codec.motion_coding import MotionDecoder, MotionEncoder, quant_table

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "2000"))
FUZZ_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

EXPRESSION_VALUES = 12  # the landmark family's default
QUALITY = 2
TABLE = quant_table(QUALITY, ModelFamily.LANDMARK)


def _motion_payloads() -> list[tuple[bool, bytes]]:
    rng = np.random.default_rng(0)
    encoder = MotionEncoder(TABLE, EXPRESSION_VALUES, intra_period=4)
    vector = np.zeros(6 + EXPRESSION_VALUES, np.float32)
    payloads = []
    for seq in range(8):
        vector = vector + rng.normal(0, 0.01, vector.shape).astype(np.float32)
        vector[:3] += 0.7
        payloads.append(encoder.encode_vector(vector, seq))
    return payloads


MOTION_PAYLOADS = _motion_payloads()
HEADER = StreamHeader("fv2v-fuzz", bytes(8), 256, 256, int(ModelFamily.LANDMARK), EXPRESSION_VALUES,
                      1000, QUALITY, 4, TABLE, KeyframeCodec.WEBP, HeaderFlags.UNTRAINED)
LANDMARKS = np.stack([np.linspace(60, 200, 68), np.linspace(80, 220, 68)], axis=1)
PACKETS = [KeyframePacket(0, 0, KeyframeCodec.JPEG, b"\xff\xd8\xff\xe0tiny",
                          pack_keyframe_info(LANDMARKS)).pack()] + [
    MotionPacket(seq + 1, 40 * seq, intra, payload).pack()
    for seq, (intra, payload) in enumerate(MOTION_PAYLOADS)]


def _container() -> bytes:
    output = io.BytesIO()
    with ContainerWriter(output, HEADER) as writer:
        writer.write_video_packet(PACKETS[0])
        writer.write_audio_header(AudioHeader("opus", 48000, 1))
        for index, packet in enumerate(PACKETS[1:4]):
            writer.write_video_packet(packet)
            writer.write_audio_packet(960 * index, b"\xf8\xff\xfe")
    return output.getvalue()


SEEDS = {
    "header": [HEADER.pack()],
    "packet": PACKETS,
    "container": [_container()],
    "motion": [payload for _, payload in MOTION_PAYLOADS],
}


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A valid seed after a few bit flips, byte overwrites, truncations, insertions,
    deletions or duplications."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        operation = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "dup"]))
        position = draw(st.integers(0, len(data)))
        if operation == "flip" and data:
            index = min(position, len(data) - 1)
            data[index] ^= 1 << draw(st.integers(0, 7))
        elif operation == "set" and data:
            data[min(position, len(data) - 1)] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
        elif operation == "truncate":
            del data[position:]
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif operation == "delete":
            del data[position:position + draw(st.integers(1, 8))]
        elif operation == "dup":
            data[position:position] = data[position:position + draw(st.integers(1, 16))]
    return bytes(data)


def fuzz_input(kind: str) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=300), mutated(SEEDS[kind]))


def _only_codec_errors(parse: Callable[[bytes], object], data: bytes) -> None:
    try:
        parse(data)
    except CodecError:
        pass  # typed rejection is the expected outcome; anything else fails the test


@FUZZ_SETTINGS
@given(fuzz_input("packet"))
def test_fuzz_parse_packet(data: bytes) -> None:
    _only_codec_errors(parse_packet, data)


@FUZZ_SETTINGS
@given(fuzz_input("header"), st.booleans())
def test_fuzz_stream_header(data: bytes, fix_crc: bool) -> None:
    if fix_crc and len(data) >= 5:
        # Recompute the CRC so mutated fields reach the validation behind it.
        data = data[:-4] + zlib.crc32(data[:-4]).to_bytes(4, "little")
    _only_codec_errors(StreamHeader.parse, data)


@FUZZ_SETTINGS
@given(fuzz_input("container"))
def test_fuzz_read_container(data: bytes) -> None:
    _only_codec_errors(read_container, data)


@FUZZ_SETTINGS
@given(fuzz_input("motion"), st.booleans(), st.booleans())
def test_fuzz_motion_decoder(data: bytes, is_intra: bool, in_sequence: bool) -> None:
    decoder = MotionDecoder(TABLE, EXPRESSION_VALUES)
    decoder.decode_vector(True, 0, MOTION_PAYLOADS[0][1])
    seq = 1 if in_sequence else 5
    try:
        vector = decoder.decode_vector(is_intra, seq, data)
    except CodecError:
        return
    limit = TABLE.bounds_vector(EXPRESSION_VALUES) + TABLE.steps_vector(EXPRESSION_VALUES)
    assert np.all(np.isfinite(vector)) and np.all(np.abs(vector) <= limit)
