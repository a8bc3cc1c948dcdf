"""Varints, stream header, frame packets, the file container, and golden bytes.

Golden files in tests/expected/ pin the format. Regenerate them only on a deliberate
format change (with a version bump): ``REGEN_GOLDEN=1 pytest tests/test_bitstream.py``.
"""

from __future__ import annotations

import dataclasses
import io
import os
import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from codec.bitstream import (
    CONTAINER_MAGIC,
    MAX_KEYFRAME_BYTES,
    MAX_KEYFRAME_INFO_BYTES,
    MAX_MOTION_PAYLOAD_BYTES,
    MAX_PACKET_BYTES,
    STREAM_MAGIC,
    MAX_REFERENCE_SLOTS,
    AudioHeader,
    AudioPacket,
    CompactMotionPacket,
    ContainerWriter,
    HeaderFlags,
    KeyframeCodec,
    KeyframePacket,
    MotionFramer,
    MotionPacket,
    MotionSequencer,
    PacketType,
    PatchPacket,
    StreamHeader,
    decode_uvarint,
    encode_uvarint,
    parse_packet,
    read_container,
)
from codec.errors import (
    BitstreamError,
    OversizedError,
    ReferenceSlotError,
    TruncatedError,
    UnsupportedVersionError,
)
from codec.families.base import ModelFamily
from codec.motion_coding import MotionDecoder, MotionEncoder, quant_table

EXPECTED_DIR = Path(__file__).parent / "expected"
GOLDEN_STREAM = EXPECTED_DIR / "stream_v4.bin"
GOLDEN_CONTAINER = EXPECTED_DIR / "container_v4.fvvf"
# Format version 3 files (before compact motion packets and reference slots): still decoded.
V3_STREAM = EXPECTED_DIR / "stream_v3.bin"
V3_CONTAINER = EXPECTED_DIR / "container_v3.fvvf"
# Format version 2 files (before patch packets), kept to prove they still decode.
V2_STREAM = EXPECTED_DIR / "stream_v2.bin"
V2_CONTAINER = EXPECTED_DIR / "container_v2.fvvf"
# Format version 1 files, kept to prove they are refused with a clear error.
V1_STREAM = EXPECTED_DIR / "stream_v1.bin"
V1_CONTAINER = EXPECTED_DIR / "container_v1.fvvf"
GOLDEN_EXPRESSION_VALUES = 16  # the landmark family's default N
GOLDEN_FRAMES = 12
GOLDEN_QUALITY = 3
GOLDEN_INTRA_PERIOD = 5
GOLDEN_FRAME_TICKS = 40  # 25 fps at a 1000-tick timebase
FAKE_IMAGE = b"RIFF\x10\x00\x00\x00WEBPfake-keyframe"
FAKE_INFO = bytes(range(40))  # keyframe info bytes (opaque to the bitstream layer)
FAKE_PATCH = b"RIFF\x0e\x00\x00\x00WEBPfake-patch"
PATCH_SEQ = 4  # the golden stream's patch rides with this frame, before its motion packet
GOLDEN_SLOTS = 2  # the v4 golden stream's K
# v4 golden: frames 8-10 carry timestamps 3 ticks off the frame-rate grid (8 is extended, 9 and
# 10 compact, inheriting the departure); a keyframe fills slot 1 before frame 10's motion; frame 12
# names slot 0 again (extended).
DEPARTED_SEQS = (8, 9, 10)
SECOND_KEYFRAME_SEQ = 10
BACK_TO_SLOT_0_SEQ = 12


def golden_patch() -> PatchPacket:
    return PatchPacket(PATCH_SEQ, (PATCH_SEQ - 1) * GOLDEN_FRAME_TICKS, region=0, slot=2, x0=97, y0=160,
                       codec_id=KeyframeCodec.WEBP, image_bytes=FAKE_PATCH, info=bytes(range(44)))


def make_header(expression_count: int = GOLDEN_EXPRESSION_VALUES, flags: int = 0,
                reference_slots: int = 1) -> StreamHeader:
    return StreamHeader(
        model_name="fv2v-test", weights_sha256_prefix=bytes(range(8)), width=256, height=256,
        family=int(ModelFamily.LANDMARK), expression_count=expression_count, timebase=1000,
        quality=GOLDEN_QUALITY, intra_period=GOLDEN_INTRA_PERIOD,
        quant_table=quant_table(GOLDEN_QUALITY, ModelFamily.LANDMARK),
        keyframe_codec=KeyframeCodec.WEBP, flags=int(flags), reference_slots=reference_slots)


def golden_timestamp(seq: int) -> int:
    return seq * GOLDEN_FRAME_TICKS + (3 if seq in DEPARTED_SEQS else 0)


def golden_reference(seq: int) -> int:
    """The slot the v4 golden stream's frame ``seq`` warps from."""
    return 1 if SECOND_KEYFRAME_SEQ <= seq < BACK_TO_SLOT_0_SEQ else 0


def golden_motion_vectors() -> list[np.ndarray]:
    """A fixed motion sequence built from integers only (random.Random is stable across
    platforms and versions, and float32 division is exact IEEE), so the bytes never depend
    on numpy's RNG or libm."""
    rng = random.Random(20240601)
    length = 6 + GOLDEN_EXPRESSION_VALUES
    units = [0] * length
    vectors = []
    for _ in range(GOLDEN_FRAMES):
        units = [u + rng.randint(-60, 60) for u in units]
        values = np.array(units, np.float32)
        # Angles in hundredths of a degree, translation and coefficients in 1e-4 units.
        scale = np.array([100.0] * 3 + [10000.0] * (length - 3), np.float32)
        vectors.append(values / scale)
    return vectors


def golden_packets() -> list[bytes]:
    """Format version 4: keyframe packet (slot 0) then GOLDEN_FRAMES motion packets (seq 1…,
    intra every 5, framed by MotionFramer), with one patch packet before the motion packet of
    PATCH_SEQ and a keyframe into slot 1 before SECOND_KEYFRAME_SEQ's (see DEPARTED_SEQS)."""
    encoder = MotionEncoder(quant_table(GOLDEN_QUALITY, ModelFamily.LANDMARK), GOLDEN_EXPRESSION_VALUES,
                            GOLDEN_INTRA_PERIOD)
    framer = MotionFramer(make_header(reference_slots=GOLDEN_SLOTS))
    packets = [KeyframePacket(0, 0, KeyframeCodec.WEBP, FAKE_IMAGE, FAKE_INFO).pack()]
    framer.keyframe(0)
    for frame, vector in enumerate(golden_motion_vectors()):
        seq = frame + 1
        intra, payload = encoder.encode_vector(vector, seq)
        if seq == PATCH_SEQ:
            packets.append(golden_patch().pack())
        if seq == SECOND_KEYFRAME_SEQ:
            packets.append(KeyframePacket(seq, seq * GOLDEN_FRAME_TICKS, KeyframeCodec.WEBP, FAKE_IMAGE[::-1],
                                          FAKE_INFO, slot=1).pack())
            framer.keyframe(1)
        reference = 0 if seq == BACK_TO_SLOT_0_SEQ else None
        packets.append(framer.pack(seq, golden_timestamp(seq), intra, payload, reference))
    return packets


def build_golden_stream() -> bytes:
    """The stream file: varint-length-prefixed messages, header first, then the packets."""
    messages = [make_header(reference_slots=GOLDEN_SLOTS).pack(), *golden_packets()]
    return b"".join(encode_uvarint(len(m)) + m for m in messages)


def build_golden_container() -> bytes:
    output = io.BytesIO()
    with ContainerWriter(output, make_header(reference_slots=GOLDEN_SLOTS)) as writer:
        packets = golden_packets()
        writer.write_video_packet(packets[0])
        writer.write_audio_header(AudioHeader("opus", 48000, 1, pre_skip=312, num_samples=9600))
        for index, packet in enumerate(packets[1:]):
            writer.write_video_packet(packet)
            if index % 2 == 0:
                writer.write_audio_packet(960 * index, bytes([0xF8, index, 0xAA]))
    return output.getvalue()


def split_stream(data: bytes) -> list[bytes]:
    messages, offset = [], 0
    while offset < len(data):
        length, offset = decode_uvarint(data, offset)
        messages.append(data[offset:offset + length])
        offset += length
    return messages


def regenerate_golden() -> None:
    EXPECTED_DIR.mkdir(parents=True, exist_ok=True)
    GOLDEN_STREAM.write_bytes(build_golden_stream())
    GOLDEN_CONTAINER.write_bytes(build_golden_container())


if os.environ.get("REGEN_GOLDEN") == "1":
    regenerate_golden()


# --- varint -----------------------------------------------------------------------------

@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16383, 16384, 2**32, 2**63, 2**64 - 1])
def test_varint_round_trip(value: int) -> None:
    data = encode_uvarint(value)
    assert len(data) <= 10
    assert decode_uvarint(data) == (value, len(data))
    assert decode_uvarint(b"\xff" + data, 1) == (value, len(data) + 1)


def test_varint_known_bytes() -> None:
    assert encode_uvarint(0) == b"\x00"
    assert encode_uvarint(300) == b"\xac\x02"
    assert encode_uvarint(2**64 - 1) == b"\xff" * 9 + b"\x01"


@pytest.mark.parametrize("bad", [-1, 2**64, 1.5, True])
def test_varint_encode_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        encode_uvarint(bad)  # type: ignore[arg-type]


def test_varint_decode_errors() -> None:
    with pytest.raises(TruncatedError):
        decode_uvarint(b"")
    with pytest.raises(TruncatedError):
        decode_uvarint(b"\x80\x80")
    with pytest.raises(BitstreamError):
        decode_uvarint(b"\x80" * 10 + b"\x01")  # 11 bytes
    with pytest.raises(BitstreamError):
        decode_uvarint(b"\xff" * 9 + b"\x02")  # 65 bits
    with pytest.raises(BitstreamError):
        decode_uvarint(b"\x80\x00")  # non-canonical


# --- stream header ----------------------------------------------------------------------

def test_header_round_trip_and_layout() -> None:
    header = make_header()
    data = header.pack()
    name_length = len(header.model_name)
    assert len(data) == 88 + name_length
    assert data[35 + name_length] == 1  # K
    assert data[20 + name_length] == ModelFamily.LANDMARK
    assert struct.unpack_from("<H", data, 21 + name_length)[0] == GOLDEN_EXPRESSION_VALUES
    assert struct.unpack_from("<I", data, 27 + name_length)[0] == header.frame_rate_millihz
    assert data[:4] == STREAM_MAGIC and data[4] == 4
    assert struct.unpack_from("<H", data, 5)[0] == 0
    assert data[7] == name_length and data[8:8 + name_length] == b"fv2v-test"
    assert struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[:-4])
    parsed = StreamHeader.parse(data)
    assert parsed == header and not parsed.untrained
    assert StreamHeader.parse(make_header(flags=HeaderFlags.UNTRAINED).pack()).untrained
    four = make_header(reference_slots=MAX_REFERENCE_SLOTS)
    assert StreamHeader.parse(four.pack()).reference_slots == MAX_REFERENCE_SLOTS


def test_header_every_truncation_raises() -> None:
    data = make_header().pack()
    for cut in range(len(data)):
        with pytest.raises(TruncatedError):
            StreamHeader.parse(data[:cut])


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_header_errors() -> None:
    data = make_header().pack()
    with pytest.raises(BitstreamError):
        StreamHeader.parse(b"XXXX" + data[4:])
    with pytest.raises(UnsupportedVersionError):
        StreamHeader.parse(_with_crc(data[:4] + b"\x05" + data[5:-4]))
    slots_offset = 8 + len("fv2v-test") + 27
    for bad_slots in (0, MAX_REFERENCE_SLOTS + 1, 255):
        with pytest.raises(BitstreamError, match="reference slot"):
            StreamHeader.parse(_with_crc(data[:slots_offset] + bytes([bad_slots]) + data[slots_offset + 1:-4]))
    family_offset = 8 + len("fv2v-test") + 12
    with pytest.raises(BitstreamError):  # unknown family
        StreamHeader.parse(_with_crc(data[:family_offset] + b"\x09" + data[family_offset + 1:-4]))
    with pytest.raises(BitstreamError):  # no expression values
        StreamHeader.parse(_with_crc(data[:family_offset + 1] + b"\0\0" + data[family_offset + 3:-4]))
    with pytest.raises(BitstreamError, match="CRC"):
        StreamHeader.parse(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(BitstreamError, match="trailing"):
        StreamHeader.parse(data + b"\0")
    with pytest.raises(OversizedError):
        StreamHeader.parse(data + b"\0" * 1000)
    name_offset = 8
    with pytest.raises(BitstreamError):  # unknown flag bit, valid CRC
        StreamHeader.parse(_with_crc(data[:5] + b"\x04\x00" + data[7:-4]))
    # Bit 1 (WHOLE_FRAME) is known in v4 ...
    assert StreamHeader.parse(_with_crc(data[:5] + b"\x02\x00" + data[7:-4])).whole_frame
    k_offset = name_offset + len("fv2v-test") + 27  # v3 headers have no K byte
    v3 = data[:4] + b"\x03" + data[5:k_offset] + data[k_offset + 1:-4]
    assert StreamHeader.parse(_with_crc(v3)).format_version == 3
    with pytest.raises(BitstreamError):  # ... and refused in a v3 header
        StreamHeader.parse(_with_crc(v3[:5] + b"\x02\x00" + v3[7:]))
    with pytest.raises(BitstreamError):  # non-ASCII model name
        StreamHeader.parse(_with_crc(data[:name_offset] + b"\xff" + data[name_offset + 1:-4]))
    fields_offset = name_offset + len("fv2v-test") + 8
    with pytest.raises(BitstreamError):  # width 0
        StreamHeader.parse(_with_crc(data[:fields_offset] + b"\0\0" + data[fields_offset + 2:-4]))
    table_offset = len(data) - 4 - 48
    with pytest.raises(BitstreamError):  # angle step NaN
        StreamHeader.parse(_with_crc(data[:table_offset] + struct.pack("<f", float("nan"))
                                     + data[table_offset + 4:-4]))


def test_header_validation() -> None:
    with pytest.raises(ValueError):
        make_header(flags=0x8000)
    with pytest.raises(ValueError):
        StreamHeader("bad name!", bytes(8), 1, 1, 2, 1, 1, 0, 1, quant_table(0), 1)
    with pytest.raises(ValueError):
        StreamHeader("m", bytes(7), 1, 1, 2, 1, 1, 0, 1, quant_table(0), 1)
    with pytest.raises(ValueError):
        StreamHeader("m", bytes(8), 1, 1, 2, 1, 1, 0, 1, quant_table(0), 99)
    with pytest.raises(ValueError):  # unknown family
        StreamHeader("m", bytes(8), 1, 1, 7, 1, 1, 0, 1, quant_table(0), 1)
    for slots in (0, MAX_REFERENCE_SLOTS + 1):
        with pytest.raises(ValueError):
            make_header(reference_slots=slots)
    with pytest.raises(ValueError):  # before version 4 there is one reference
        dataclasses.replace(make_header(reference_slots=2), format_version=3)


# --- frame packets ----------------------------------------------------------------------

def sample_packets() -> list[bytes]:
    return [
        KeyframePacket(7, 123456, KeyframeCodec.JPEG, b"\xff\xd8jpeg", b"info", slot=3).pack(),
        MotionPacket(2**40, 2**63, True, b"\x01\x02\x03\x04", reference=15).pack(),
        MotionPacket(0, 0, False, b"").pack(),
        MotionPacket(300, 40, False, bytes(range(200))).pack(),
        CompactMotionPacket.of(2**40 + 5, True, b"\x01\x02").pack(),
        CompactMotionPacket.of(300, False, b"\x01\x02").pack(),
    ]


def test_packet_round_trip_and_layout() -> None:
    keyframe = KeyframePacket(7, 300, KeyframeCodec.JPEG, b"abc")
    data = keyframe.pack()
    assert data == b"\x01\x07\xac\x02\x00\x02\x03abc\x00"  # slot 0, empty keyframe info
    assert parse_packet(data) == keyframe
    with_info = KeyframePacket(7, 300, KeyframeCodec.JPEG, b"abc", b"xy", slot=2)
    assert with_info.pack() == b"\x01\x07\xac\x02\x02\x02\x03abc\x02xy"
    assert parse_packet(with_info.pack()) == with_info
    motion = MotionPacket(5, 200, False, b"wxyz", reference=1)
    assert motion.pack() == b"\x03\x05\xc8\x01\x01wxyz"  # extended: the payload runs to the end
    assert parse_packet(motion.pack()) == motion
    intra = MotionPacket(5, 200, True, b"wxyz")
    assert intra.pack()[0] == PacketType.MOTION_INTRA
    assert parse_packet(bytearray(intra.pack())) == intra
    assert parse_packet(memoryview(intra.pack())) == intra
    # Compact: 1 I ssssss, then (intra) varint seq >> 6, then the payload.
    assert CompactMotionPacket.of(5, False, b"wxyz").pack() == b"\x85wxyz"
    assert CompactMotionPacket.of(200, True, b"ab").pack() == b"\xc8\x03ab"  # 200 = 3·64 + 8
    assert CompactMotionPacket.of(63, False, b"").pack() == b"\xbf"
    compact = parse_packet(b"\xc8\x03ab")
    assert compact == CompactMotionPacket(True, 8, b"ab", 3) and compact.seq == 200
    assert parse_packet(b"\x85wxyz") == CompactMotionPacket(False, 5, b"wxyz") and parse_packet(b"\x85").seq is None
    with pytest.raises(ValueError):
        MotionPacket(5, 200, False, b"", reference=None).pack()
    with pytest.raises(ValueError):
        CompactMotionPacket(False, 5, b"", seq_high=1).pack()


def test_packet_every_truncation_raises() -> None:
    """Every cut inside a packet's fields raises. A motion payload runs to the end of its
    record, so a cut inside it is a shorter payload: the record's own length (container record,
    data-channel message, RTP extension element, each authenticated or CRC-checked) is trusted."""
    for data in sample_packets():
        packet = parse_packet(data)
        payload = getattr(packet, "payload", None)
        fields_end = len(data) - len(payload) if payload is not None else len(data)
        for cut in range(fields_end):
            with pytest.raises(TruncatedError):
                parse_packet(data[:cut])


def test_packet_errors() -> None:
    motion = MotionPacket(1, 2, True, b"abcd").pack()
    assert parse_packet(motion + b"\0").payload == b"abcd\0"  # v4: the payload runs to the end
    keyframe = KeyframePacket(1, 2, KeyframeCodec.WEBP, b"abcd").pack()
    with pytest.raises(BitstreamError, match="trailing"):
        parse_packet(keyframe + b"\0")
    v3_motion = V3_STREAM.read_bytes()
    v3_header = StreamHeader.parse(split_stream(v3_motion)[0])
    with pytest.raises(BitstreamError, match="trailing"):
        parse_packet(split_stream(v3_motion)[-1] + b"\0", v3_header)
    for type_byte in (0x00, 0x06, 0x3F):  # 0x05: the predicted keyframe (tests/test_predicted_keyframe.py)
        with pytest.raises(BitstreamError, match="unknown packet type"):
            parse_packet(bytes([type_byte]) + motion[1:])
    v3 = dataclasses.replace(make_header(), format_version=3)
    with pytest.raises(BitstreamError, match="version 3 or older"):
        parse_packet(bytes([0x05]) + motion[1:], v3)
    for type_byte in (0x80, 0xFF):  # compact motion from version 4 on
        assert isinstance(parse_packet(bytes([type_byte]) + b"\x00", make_header()), CompactMotionPacket)
        with pytest.raises(BitstreamError, match="unknown packet type"):
            parse_packet(bytes([type_byte]) + motion[1:], v3)
    with pytest.raises(BitstreamError, match="frame rate"):
        parse_packet(b"\x85ab", dataclasses.replace(make_header(), frame_rate_millihz=0))
    with pytest.raises(BitstreamError, match="64 bits"):
        parse_packet(b"\xc0" + encode_uvarint(2**58))
    with pytest.raises(BitstreamError, match="control"):
        parse_packet(bytes([PacketType.KEYFRAME_REQUEST]) + motion[1:])
    with pytest.raises(BitstreamError):  # unknown keyframe codec
        parse_packet(b"\x01\x00\x00\x00\x09\x01a")
    with pytest.raises(BitstreamError):  # empty keyframe image
        parse_packet(b"\x01\x00\x00\x00\x01\x00")
    with pytest.raises(BitstreamError):  # non-canonical varint seq
        parse_packet(b"\x02\x80\x00\x00\x00")
    with pytest.raises(BitstreamError):  # non-canonical compact sequence number
        parse_packet(b"\xc0\x80\x00")


def test_reference_slot_fields_are_checked_against_k() -> None:
    header = make_header(reference_slots=3)
    for packet in (KeyframePacket(1, 40, KeyframeCodec.WEBP, b"x", slot=2),
                   MotionPacket(1, 40, True, b"ab", reference=2), dataclasses.replace(golden_patch(), reference=2)):
        assert parse_packet(packet.pack(), header) == packet
        bad = dataclasses.replace(packet, **{"slot" if isinstance(packet, KeyframePacket) else "reference": 3})
        with pytest.raises(ReferenceSlotError):
            parse_packet(bad.pack(), header)
        parse_packet(bad.pack())  # without a header: up to 16 slots
    with pytest.raises(ReferenceSlotError):
        parse_packet(b"\x03\x01\x28\x10ab")  # slot 16
    with pytest.raises(ValueError):
        MotionPacket(1, 40, True, b"", reference=MAX_REFERENCE_SLOTS).pack()


def test_packet_size_limits() -> None:
    oversized_motion_length = encode_uvarint(MAX_MOTION_PAYLOAD_BYTES + 1)
    v3 = dataclasses.replace(make_header(), format_version=3)
    with pytest.raises(OversizedError):
        parse_packet(b"\x02\x00\x00" + oversized_motion_length, v3)
    with pytest.raises(OversizedError):
        parse_packet(b"\x02\x00\x00\x00" + bytes(MAX_MOTION_PAYLOAD_BYTES + 1))
    with pytest.raises(OversizedError):
        parse_packet(b"\x81" + bytes(MAX_MOTION_PAYLOAD_BYTES + 1))
    assert len(parse_packet(b"\x81" + bytes(MAX_MOTION_PAYLOAD_BYTES)).payload) == MAX_MOTION_PAYLOAD_BYTES
    with pytest.raises(OversizedError):
        parse_packet(b"\x01\x00\x00\x00\x01" + encode_uvarint(MAX_KEYFRAME_BYTES + 1))
    with pytest.raises(OversizedError):  # keyframe info over its limit
        parse_packet(b"\x01\x00\x00\x00\x01\x01a" + encode_uvarint(MAX_KEYFRAME_INFO_BYTES + 1))
    with pytest.raises(OversizedError):
        KeyframePacket(0, 0, KeyframeCodec.WEBP, b"a", bytes(MAX_KEYFRAME_INFO_BYTES + 1)).pack()
    with pytest.raises(OversizedError):
        parse_packet(b"\x02\x00\x00" + encode_uvarint(2**64 - 1), v3)
    with pytest.raises(OversizedError):
        parse_packet(bytes(MAX_PACKET_BYTES + 1))
    with pytest.raises(OversizedError):
        MotionPacket(0, 0, True, bytes(MAX_MOTION_PAYLOAD_BYTES + 1)).pack()
    with pytest.raises(OversizedError):
        KeyframePacket(0, 0, KeyframeCodec.WEBP, bytes(MAX_KEYFRAME_BYTES + 1)).pack()
    biggest = KeyframePacket(2**64 - 1, 2**64 - 1, KeyframeCodec.WEBP,
                             bytes(MAX_KEYFRAME_BYTES), bytes(MAX_KEYFRAME_INFO_BYTES)).pack()
    assert len(biggest) <= MAX_PACKET_BYTES
    assert len(parse_packet(biggest).image_bytes) == MAX_KEYFRAME_BYTES
    with pytest.raises(ValueError):
        MotionPacket(-1, 0, True, b"").pack()


# --- container --------------------------------------------------------------------------

def make_container(with_audio: bool = True) -> bytes:
    output = io.BytesIO()
    writer = ContainerWriter(output, make_header(reference_slots=MAX_REFERENCE_SLOTS))
    for packet in sample_packets():
        writer.write_video_packet(packet)
    if with_audio:
        writer.write_audio_header(AudioHeader("opus", 48000, 2))
        writer.write_audio_packet(0, b"\xf8\x01")
        writer.write_audio_packet(960, b"\xf8\x02\x03")
    writer.write_video_packet(MotionPacket(301, 80, False, b"1234"))
    writer.close()
    writer.close()  # idempotent
    return output.getvalue()


def test_container_round_trip(tmp_path: Path) -> None:
    data = make_container()
    assert data[:4] == CONTAINER_MAGIC and data[4] == 1
    container = read_container(data)
    assert container.header == make_header(reference_slots=MAX_REFERENCE_SLOTS)
    assert container.video_packets == [*sample_packets(),
                                       MotionPacket(301, 80, False, b"1234").pack()]
    assert container.audio_header == AudioHeader("opus", 48000, 2)
    assert container.audio_packets == [AudioPacket(0, b"\xf8\x01"),
                                       AudioPacket(960, b"\xf8\x02\x03")]
    path = tmp_path / "call.fvvf"
    path.write_bytes(data)
    with path.open("rb") as handle:
        assert read_container(handle) == container
    silent = read_container(make_container(with_audio=False))
    assert silent.audio_header is None and silent.audio_packets == []


def test_container_every_truncation_raises() -> None:
    data = make_container()
    for cut in range(len(data)):
        with pytest.raises(TruncatedError):
            read_container(data[:cut])


def test_container_errors() -> None:
    data = make_container(with_audio=False)
    with pytest.raises(BitstreamError):
        read_container(b"RIFF" + data[4:])
    with pytest.raises(UnsupportedVersionError):
        read_container(data[:4] + b"\x02" + data[5:])
    with pytest.raises(BitstreamError, match="after"):
        read_container(data + b"\0")
    with pytest.raises(BitstreamError, match="CRC"):
        # Flip a payload byte of the last motion record: still parses, CRC catches it.
        index = data.rindex(b"1234")
        read_container(data[:index] + b"X" + data[index + 1:])
    with pytest.raises(UnsupportedVersionError):
        # A stream header of an unknown version inside a valid container.
        header_start = 5 + 1
        read_container(data[:header_start + 4] + b"\x09" + data[header_start + 5:])


def _raw_container(records: bytes) -> bytes:
    header = make_header().pack()
    return CONTAINER_MAGIC + b"\x01" + encode_uvarint(len(header)) + header + records


def _end_record(prefix: bytes, video: int, audio: int) -> bytes:
    body = encode_uvarint(video) + encode_uvarint(audio) + struct.pack("<I", zlib.crc32(prefix))
    return b"\x7f" + encode_uvarint(len(body)) + body


def test_container_record_rules() -> None:
    motion = MotionPacket(1, 1, True, b"abcd").pack()
    video = b"\x01" + encode_uvarint(len(motion)) + motion
    audio_header = AudioHeader("opus", 16000, 1).pack()
    audio_header_record = b"\x02" + encode_uvarint(len(audio_header)) + audio_header
    audio = b"\x03\x03\x00\x01\x02"

    def finish(records: bytes, video_count: int, audio_count: int) -> bytes:
        prefix = _raw_container(records)
        return prefix + _end_record(prefix, video_count, audio_count)

    assert len(read_container(finish(video, 1, 0)).video_packets) == 1
    with pytest.raises(BitstreamError, match="counts"):
        read_container(finish(video, 2, 0))
    with pytest.raises(BitstreamError, match="before the audio header"):
        read_container(finish(audio, 0, 1))
    with pytest.raises(BitstreamError, match="second audio header"):
        read_container(finish(audio_header_record * 2, 0, 0))
    with pytest.raises(BitstreamError, match="record kind"):
        read_container(finish(b"\x05\x00", 0, 0))
    with pytest.raises(OversizedError):
        read_container(_raw_container(b"\x01" + encode_uvarint(MAX_PACKET_BYTES + 1)))
    with pytest.raises(OversizedError):
        read_container(_raw_container(b"\x02\x40"))
    with pytest.raises(BitstreamError):  # a video record that is not a valid packet
        read_container(finish(b"\x01\x01\x00", 1, 0))
    with pytest.raises(OversizedError):
        read_container(CONTAINER_MAGIC + b"\x01" + encode_uvarint(10**6))


def test_container_writer_misuse() -> None:
    writer = ContainerWriter(io.BytesIO(), make_header())
    with pytest.raises(ValueError):
        writer.write_audio_packet(0, b"x")
    writer.write_audio_header(AudioHeader("opus", 48000, 1))
    with pytest.raises(ValueError):
        writer.write_audio_header(AudioHeader("opus", 48000, 1, pre_skip=312, num_samples=9600))
    with pytest.raises(BitstreamError):
        writer.write_video_packet(b"\x09junk")
    with pytest.raises(OversizedError):
        writer.write_audio_packet(0, bytes(70000))
    writer.close()
    with pytest.raises(ValueError):
        writer.write_video_packet(MotionPacket(0, 0, True, b""))
    with pytest.raises(ValueError):
        AudioHeader("Opus!", 48000, 1)


def test_container_writer_skips_end_on_error() -> None:
    output = io.BytesIO()
    with pytest.raises(RuntimeError):
        with ContainerWriter(output, make_header()) as writer:
            writer.write_video_packet(MotionPacket(0, 0, True, b"abcd"))
            raise RuntimeError("capture failed")
    with pytest.raises(TruncatedError):
        read_container(output.getvalue())


# --- golden bytes -----------------------------------------------------------------------

def test_golden_stream_bytes() -> None:
    assert GOLDEN_STREAM.exists(), "run REGEN_GOLDEN=1 pytest tests/test_bitstream.py"
    assert build_golden_stream() == GOLDEN_STREAM.read_bytes()


def test_golden_container_bytes() -> None:
    assert GOLDEN_CONTAINER.exists(), "run REGEN_GOLDEN=1 pytest tests/test_bitstream.py"
    assert build_golden_container() == GOLDEN_CONTAINER.read_bytes()


def _decode_golden_motion(header: StreamHeader, packets: list) -> list[MotionPacket]:
    """Number the motion packets (MotionSequencer) and check every one decodes to the golden
    motion within half a quantization step; returns them numbered."""
    sequencer = MotionSequencer(header)
    motion = [sequencer.resolve(p) for p in packets if isinstance(p, MotionPacket | CompactMotionPacket)]
    decoder = MotionDecoder(header.quant_table, header.expression_count)
    steps = header.quant_table.steps_vector(header.expression_count)
    for packet, vector in zip(motion, golden_motion_vectors(), strict=True):
        decoded = decoder.decode_vector(packet.intra, packet.seq, packet.payload)
        assert np.all(np.abs(decoded - vector) <= steps * (0.5 + 1e-5))
    assert [p.seq for p in motion if p.intra] == [1, 6, 11]
    return motion


@pytest.mark.parametrize("stream, container, version", [(V3_STREAM, V3_CONTAINER, 3),
                                                         (V2_STREAM, V2_CONTAINER, 2)])
def test_old_golden_streams_decode(stream: Path, container: Path, version: int) -> None:
    """Decode the checked-in files of older versions: they must stay readable."""
    messages = split_stream(stream.read_bytes())
    assert messages[0][len(STREAM_MAGIC)] == version
    header = StreamHeader.parse(messages[0])
    assert header == make_header() and header.format_version == version and header.reference_slots == 1
    keyframe = parse_packet(messages[1], header)
    assert isinstance(keyframe, KeyframePacket) and keyframe.image_bytes == FAKE_IMAGE
    assert keyframe.info == FAKE_INFO and keyframe.slot == 0
    packets = [parse_packet(message, header) for message in messages[2:]]
    patches = [packet for packet in packets if isinstance(packet, PatchPacket)]
    assert patches == ([golden_patch()] if version == 3 else [])
    motion = _decode_golden_motion(header, packets)
    assert [p.timestamp for p in motion] == [(p.seq - 1) * GOLDEN_FRAME_TICKS for p in motion]
    assert all(p.reference == 0 for p in motion)
    read = read_container(container.read_bytes())
    assert read.header.format_version == version
    assert read.video_packets == messages[1:]
    assert len(read.audio_packets) == len(range(0, len(messages) - 2, 2))  # one every other packet


def test_golden_v4_stream_decodes() -> None:
    """The checked-in v4 file: compact packets numbered and timed as the sender meant, the
    extended ones where the timestamp departs or the reference switches."""
    messages = split_stream(GOLDEN_STREAM.read_bytes())
    header = StreamHeader.parse(messages[0])
    assert header == make_header(reference_slots=GOLDEN_SLOTS) and header.format_version == 4
    packets = [parse_packet(message, header) for message in messages[1:]]
    keyframes = [p for p in packets if isinstance(p, KeyframePacket)]
    assert [(k.seq, k.slot) for k in keyframes] == [(0, 0), (SECOND_KEYFRAME_SEQ, 1)]
    assert [p for p in packets if isinstance(p, PatchPacket)] == [golden_patch()]
    extended = [p.seq for p in packets if isinstance(p, MotionPacket)]
    assert extended == [DEPARTED_SEQS[0], BACK_TO_SLOT_0_SEQ]
    motion = _decode_golden_motion(header, packets)
    assert [p.seq for p in motion] == list(range(1, GOLDEN_FRAMES + 1))
    assert [p.timestamp for p in motion] == [golden_timestamp(p.seq) for p in motion]
    compact = [m for m in messages[1:] if m[0] & 0x80]
    assert len(compact) == GOLDEN_FRAMES - 2
    assert all(len(m) == len(p.payload) + (2 if p.intra else 1)
               for m, p in zip(compact, (q for q in motion if q.reference is None)))
    read = read_container(GOLDEN_CONTAINER.read_bytes())
    assert read.header == header and read.video_packets == messages[1:]


def test_sequencer_never_numbers_across_an_outage() -> None:
    """Compact inter packets carry 6 sequence bits: after exactly 64 lost packets the next one
    looks like the successor of the last one received. With arrival times (a call) the
    receiver forgets its last number after the gap and waits for an intra packet; intra packets
    renumber exactly at any distance."""
    header = make_header()
    framer = MotionFramer(header)
    stream = [(seq, framer.pack(seq, seq * GOLDEN_FRAME_TICKS, seq % 25 == 0, bytes([seq % 251])))
              for seq in range(700)]
    assert framer.compact == 700 and framer.extended == 0
    lost = set(range(30, 30 + 64)) | set(range(200, 200 + 5 * 64))  # the second: a 12.8 s outage
    # Then 2.6 s in which only every 10th packet gets through, never an intra one: 624 has the
    # low bits of 560, and no arrival gap is long.
    survivors = set(range(564, 625, 10))
    lost |= set(range(560, 625)) - survivors

    def receive(with_arrival: bool) -> list[tuple[int, int]]:
        sequencer, out = MotionSequencer(header), []
        for seq, data in stream:
            if seq in lost:
                continue
            if with_arrival:
                sequencer.arrival(seq / header.frame_rate)
            packet = sequencer.resolve(parse_packet(data, header))
            if packet is not None:
                out.append((packet.seq, packet.payload[0]))
        return out

    numbered = receive(with_arrival=True)
    assert all(payload == seq % 251 for seq, payload in numbered)  # never misnumbered
    assert {seq for seq, _ in numbered} == (set(range(700)) - lost - survivors
                                           - set(range(94, 100)) - set(range(520, 525)))
    blind = receive(with_arrival=False)  # what the guard prevents: 94 taken for 30
    assert any(payload != seq % 251 for seq, payload in blind)


def test_framer_uses_the_extended_form_only_where_needed() -> None:
    header = make_header(reference_slots=3)
    framer = MotionFramer(header)
    sequencer = MotionSequencer(header)
    sent = [(0, 0, True, None), (1, 40, False, None), (2, 85, False, None), (3, 125, False, None),
            (4, 160, True, None), (5, 200, False, 2), (6, 240, False, None), (7, 280, True, None),
            (9, 360, False, None), (10, 400, True, 0)]
    forms = []
    for seq, timestamp, intra, reference in sent:
        data = framer.pack(seq, timestamp, intra, b"p", reference)
        forms.append("compact" if data[0] & 0x80 else "extended")
        packet = sequencer.resolve(parse_packet(data, header))
        assert (packet.seq, packet.timestamp, packet.intra) == (seq, timestamp, intra)
    assert forms == ["compact", "compact", "extended", "compact", "compact", "extended", "compact",
                     "extended", "extended", "compact"]
    with pytest.raises(ValueError):
        framer.pack(11, 440, False, b"", reference=3)


def test_patch_packet_round_trip_and_bad_fields() -> None:
    patch = golden_patch()
    data = patch.pack()
    assert data[0] == PacketType.PATCH and parse_packet(data) == patch
    for cut in range(1, len(data)):
        with pytest.raises(BitstreamError):  # TruncatedError is one
            parse_packet(data[:cut])
    with pytest.raises(BitstreamError, match="trailing|after"):
        parse_packet(data + b"\0")
    prefix = len(data) - len(FAKE_PATCH) - 2 - 44 - 7
    for offset, value, message in ((0, 3, "region"), (1, 8, "slot"), (6, 9, "codec")):
        bad = bytearray(data)
        bad[prefix + offset] = value
        with pytest.raises(BitstreamError, match=message):
            parse_packet(bytes(bad))
    with pytest.raises(ValueError):
        PatchPacket(1, 0, region=0, slot=8, x0=0, y0=0, codec_id=1, image_bytes=b"x").pack()
    with pytest.raises(ValueError):
        PatchPacket(1, 0, region=0, slot=0, x0=0, y0=0, codec_id=1, image_bytes=b"").pack()


def test_version_1_files_are_refused_clearly() -> None:
    """Streams written before the landmark family (format version 1) get a typed error
    that says what to do, never a misparse."""
    messages = split_stream(V1_STREAM.read_bytes())
    with pytest.raises(UnsupportedVersionError, match="version 1"):
        StreamHeader.parse(messages[0])
    with pytest.raises(UnsupportedVersionError, match="version 1"):
        read_container(V1_CONTAINER.read_bytes())
