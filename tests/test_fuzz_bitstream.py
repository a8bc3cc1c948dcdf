"""Property-based fuzzing: parsers see random bytes and mutated valid inputs, and only
typed CodecError subclasses may escape (never IndexError, struct.error, a hang or a crash).

Examples per test: FUZZ_EXAMPLES (default 2000, so CI stays fast). For a long run use
``FUZZ_EXAMPLES=50000 pytest tests/test_fuzz_bitstream.py`` or the plain fuzzer
``python -m benchmarks.fuzz_bitstream --inputs 100000``.
"""

from __future__ import annotations

import dataclasses
import io
import os
import zlib
from collections.abc import Callable

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codec.bitstream import (
    AudioHeader,
    CompactMotionPacket,
    ContainerWriter,
    HeaderFlags,
    KeyframeCodec,
    KeyframePacket,
    MotionFramer,
    MotionPacket,
    MotionSequencer,
    PatchPacket,
    PredictedKeyframePacket,
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
SLOTS = 4
HEADER = StreamHeader("fv2v-fuzz", bytes(8), 256, 256, int(ModelFamily.LANDMARK), EXPRESSION_VALUES,
                      1000, QUALITY, 4, TABLE, KeyframeCodec.WEBP, HeaderFlags.UNTRAINED, reference_slots=SLOTS)
V3_HEADER = dataclasses.replace(HEADER, reference_slots=1, format_version=3)
LANDMARKS = np.stack([np.linspace(60, 200, 68), np.linspace(80, 220, 68)], axis=1)


def _packets() -> list[bytes]:
    """Every v4 form: keyframes into two slots, compact intra and inter packets, extended ones
    (a timestamp off the grid, a named slot), a patch of slot 1, a keyframe predicted from slot 1."""
    framer = MotionFramer(HEADER)
    packets = [KeyframePacket(0, 0, KeyframeCodec.JPEG, b"\xff\xd8\xff\xe0tiny",
                              pack_keyframe_info(LANDMARKS)).pack()]
    framer.keyframe(0)
    for seq, (intra, payload) in enumerate(MOTION_PAYLOADS, start=1):
        if seq == 5:
            packets.append(KeyframePacket(seq, 40 * seq, KeyframeCodec.JPEG, b"\xff\xd8\xff\xe0two",
                                          pack_keyframe_info(LANDMARKS), slot=1).pack())
            framer.keyframe(1)
            packets.append(PatchPacket(seq, 40 * seq, 0, 2, 90, 150, KeyframeCodec.WEBP, b"RIFF\x08\0\0\0WEBPtiny",
                                       np.zeros(6 + EXPRESSION_VALUES, "<f2").tobytes(), reference=1).pack())
        if seq == 8:
            packets.append(PredictedKeyframePacket(seq, 40 * seq, 1, 5, 1, 22, b"chek", b"\0\0\0\x01\x41inter",
                                                   pack_keyframe_info(LANDMARKS),
                                                   np.zeros(6 + EXPRESSION_VALUES, "<f2").tobytes(), slot=0).pack())
        timestamp = 40 * seq + (7 if seq == 3 else 0)
        packets.append(framer.pack(seq, timestamp, intra, payload, 3 if seq == 7 else None))
    return packets


PACKETS = _packets()


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
@given(fuzz_input("packet"), st.sampled_from([None, HEADER, V3_HEADER]))
def test_fuzz_parse_packet(data: bytes, header: StreamHeader | None) -> None:
    _only_codec_errors(lambda d: parse_packet(d, header), data)


@FUZZ_SETTINGS
@given(st.lists(fuzz_input("packet"), max_size=12), st.lists(st.floats(0, 5), max_size=12))
def test_fuzz_motion_sequencer(stream: list[bytes], gaps: list[float]) -> None:
    """Mutated streams through the receiver's numbering: typed errors only, and whatever it
    numbers has a sequence number and a timestamp the format can hold."""
    sequencer = MotionSequencer(HEADER)
    now = 0.0
    for index, data in enumerate(stream):
        now += gaps[index] if index < len(gaps) else 0.04
        try:
            packet = parse_packet(data, HEADER)
        except CodecError:
            continue
        if not isinstance(packet, MotionPacket | CompactMotionPacket):
            continue
        sequencer.arrival(now)
        resolved = sequencer.resolve(packet)
        if resolved is not None:
            assert 0 <= resolved.seq < 2**64 and isinstance(resolved.timestamp, int)
            assert resolved.reference is None or 0 <= resolved.reference < SLOTS


@FUZZ_SETTINGS
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(1, 400), st.integers(0, 12)), max_size=4),
       st.integers(0, 2**20), st.floats(0.0, 0.5))
def test_no_outage_misnumbers_a_frame(outages: list[tuple[int, int, int]], start: int, jitter: float) -> None:
    """Loss bursts of any length and place, whole or letting every k-th packet through (and
    arrival jitter up to 0.5 s): every packet the receiver numbers gets its true sequence
    number and timestamp."""
    framer, sequencer = MotionFramer(HEADER), MotionSequencer(HEADER)
    lost = {start + offset + k for offset, length, keep in outages for k in range(length)
            if not keep or k % keep}
    rng = np.random.default_rng(len(lost))
    for seq in range(start, start + 700):
        data = framer.pack(seq, 40 * seq, (seq - start) % 25 == 0, seq.to_bytes(8, "little"))
        if seq in lost:
            continue
        sequencer.arrival(seq / HEADER.frame_rate + jitter * rng.random())
        packet = sequencer.resolve(parse_packet(data, HEADER))
        if packet is not None:
            assert packet.seq == seq == int.from_bytes(packet.payload, "little")
            assert packet.timestamp == 40 * seq


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
