"""The stream header and the frame packets: explicit little-endian layouts, never pickle.

Stream header (sent once per call and at the start of a file), format version 3::

    offset   size  field
    0        4     magic b"FVVS"
    4        1     format version (3; 2 is also read: the same, without patch packets)
    5        2     flags, uint16 (bit 0 = UNTRAINED model; other bits reserved, must be 0)
    7        1     n = model name length (1 … 32)
    8        n     model name, ASCII [A-Za-z0-9._-]
    8+n      8     weights sha256 prefix (first 8 bytes of the digest)
    16+n     2     width, uint16 (pixels, 1 … 16384)
    18+n     2     height, uint16
    20+n     1     model family (codec.families.ModelFamily: 1 vid2vid, 2 landmark)
    21+n     2     N = expression values per frame, uint16 (1 … 765)
    23+n     4     timebase, uint32 (timestamp ticks per second, ≥ 1)
    27+n     4     nominal frame rate, uint32, in millihertz (25000 = 25 fps; 0 = unknown)
    31+n     1     quality, uint8 (the quant_table level it was made with; informative)
    32+n     2     intra_period, uint16 (≥ 1)
    34+n     1     keyframe image codec id (KeyframeCodec)
    35+n     48    QuantTable: angles, translation, expression × (step, bound, intra
                   scale, inter scale), float32
    83+n     4     CRC32 (zlib) of bytes 0 … 82+n
    total 87+n bytes

The motion layout is family + N: every frame's motion vector is 3 angles (degrees), 3
translation values and N expression values, quantized by the table's three groups;
the family fixes what the translation and expression values mean
(:class:`codec.families.ModelFamily`). Version 1 streams (a fixed 6 + 3K vid2vid
layout, no family) are refused with UnsupportedVersionError.

Frame packet (one data-channel message or one container record)::

    1 byte   type (PacketType)
    varint   sequence number
    varint   timestamp (ticks of the header's timebase)
    1 byte   keyframe image codec id            (keyframe packets only)
    varint   payload length L (≤ the type's limit)
    L bytes  payload (image bytes, or range-coded motion)
    varint   info length I (keyframe packets only; ≤ 4096)
    I bytes  keyframe info: what the family's receiver needs beside the pixels (the
             landmark family: the keyframe's 68 landmarks; vid2vid: nothing)
    nothing may follow.

The explicit length makes every truncation detectable even though the transport
already delimits messages; it costs one byte per motion packet.

Patch packet (format version 3): real pixels of one face region the keyframe lacks
(:mod:`codec.reference_patches`); it applies from its sequence number on, until the next
keyframe::

    1 byte   type (PATCH)
    varint   sequence number
    varint   timestamp
    1 byte   region id (0 mouth, 1 right eye, 2 left eye)
    1 byte   slot (0 … MAX_PATCH_SLOTS-1): the reference it replaces
    2+2      x0, y0 uint16: where the patch sat in its frame (crop pixels)
    1 byte   image codec id (KeyframeCodec)
    varint   image length L (1 … MAX_PATCH_IMAGE_BYTES)
    L bytes  image
    varint   info length I (≤ MAX_KEYFRAME_INFO_BYTES)
    I bytes  placement info: what the family needs to move the patch with the face (the
             landmark family: its frame's decoded motion vector, float16)
    nothing may follow.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from codec.bitstream.varint import MAX_VARINT_BYTES, ByteReader, encode_uvarint
from codec.errors import BitstreamError, OversizedError, TruncatedError, UnsupportedVersionError
from codec.families.base import ModelFamily
from codec.motion_coding import MAX_EXPRESSION_VALUES, QuantTable

STREAM_MAGIC = b"FVVS"
STREAM_FORMAT_VERSION = 3
READABLE_FORMAT_VERSIONS = (2, 3)  # 2: before patch packets, otherwise the same

MAX_MODEL_NAME_BYTES = 32
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,%d}" % MAX_MODEL_NAME_BYTES)
WEIGHTS_PREFIX_BYTES = 8
MAX_DIMENSION = 16384
MAX_KEYFRAME_BYTES = 4 * 1024 * 1024
MAX_MOTION_PAYLOAD_BYTES = 4 * 1024
MAX_KEYFRAME_INFO_BYTES = 4 * 1024
MAX_PATCH_IMAGE_BYTES = 64 * 1024
MAX_PATCH_SLOTS = 8
MAX_PATCH_REGIONS = 3
# type + seq + timestamp + codec id + payload length + payload + info length + info.
MAX_PACKET_BYTES = 1 + 4 * MAX_VARINT_BYTES + 1 + MAX_KEYFRAME_BYTES + MAX_KEYFRAME_INFO_BYTES
MAX_HEADER_BYTES = 87 + MAX_MODEL_NAME_BYTES


class HeaderFlags(IntFlag):
    """Stream-header flag bits; unknown bits are rejected (a new meaning needs a version)."""

    UNTRAINED = 1 << 0  # weights are a placeholder: frames are not meaningful


KNOWN_HEADER_FLAGS = int(HeaderFlags.UNTRAINED)


class KeyframeCodec(IntEnum):
    """How a keyframe image is coded."""

    WEBP = 1
    JPEG = 2
    # Ids 3 (PNG) and 4 (one H.264 intra frame) are reserved; add them only with a decoder.
    AV1 = 5  # one SVT-AV1 intra frame as low-overhead OBUs (AVIF's image data, no container)


class PacketType(IntEnum):
    """First byte of every frame packet."""

    KEYFRAME = 0x01
    MOTION_INTRA = 0x02
    MOTION_INTER = 0x03
    PATCH = 0x04
    # 0x40–0x7F are reserved for control messages defined by the transport layer;
    # parse_packet rejects them. 0x80 and up are reserved for future extension.
    KEYFRAME_REQUEST = 0x40


CONTROL_TYPE_RANGE = range(0x40, 0x80)
KNOWN_FAMILIES = frozenset(int(family) for family in ModelFamily)
KNOWN_KEYFRAME_CODECS = frozenset(int(codec) for codec in KeyframeCodec)

_HEADER_FIXED_AFTER_NAME = struct.Struct("<8sHHBHIIBHB")  # prefix … keyframe codec (27 bytes)
_HEADER_PREAMBLE = struct.Struct("<4sBHB")  # magic, version, flags, name length (8 bytes)
_FLAGS = struct.Struct("<H")
_CRC = struct.Struct("<I")


def _check_uint(name: str, value: int, low: int, high: int) -> None:
    """ValueError unless ``value`` is an int in [low, high] (bool excluded)."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class StreamHeader:
    """Everything a receiver needs before the first packet. See the module docstring."""

    model_name: str
    weights_sha256_prefix: bytes
    width: int
    height: int
    family: int  # a ModelFamily value
    expression_count: int
    timebase: int
    quality: int
    intra_period: int
    quant_table: QuantTable
    keyframe_codec: int
    flags: int = 0
    frame_rate_millihz: int = 25000

    @property
    def frame_rate(self) -> float:
        """Nominal frames per second (0.0 when the sender did not know it)."""
        return self.frame_rate_millihz / 1000.0

    def __post_init__(self) -> None:
        name = self.model_name
        if not isinstance(name, str) or not MODEL_NAME_PATTERN.fullmatch(name):
            raise ValueError(f"model name must match {MODEL_NAME_PATTERN.pattern}, "
                             f"got {self.model_name!r}")
        if (not isinstance(self.weights_sha256_prefix, bytes)
                or len(self.weights_sha256_prefix) != WEIGHTS_PREFIX_BYTES):
            raise ValueError(f"weights prefix must be {WEIGHTS_PREFIX_BYTES} bytes")
        _check_uint("width", self.width, 1, MAX_DIMENSION)
        _check_uint("height", self.height, 1, MAX_DIMENSION)
        _check_uint("family", self.family, 0, 0xFF)
        if self.family not in KNOWN_FAMILIES:
            raise ValueError(f"unknown model family {self.family!r}")
        _check_uint("expression_count", self.expression_count, 1, MAX_EXPRESSION_VALUES)
        _check_uint("timebase", self.timebase, 1, 0xFFFFFFFF)
        _check_uint("frame_rate_millihz", self.frame_rate_millihz, 0, 1_000_000)
        _check_uint("quality", self.quality, 0, 0xFF)
        _check_uint("intra_period", self.intra_period, 1, 0xFFFF)
        if not isinstance(self.quant_table, QuantTable):
            raise ValueError("quant_table must be a QuantTable")
        _check_uint("keyframe_codec", self.keyframe_codec, 0, 0xFF)
        if self.keyframe_codec not in KNOWN_KEYFRAME_CODECS:
            raise ValueError(f"unknown keyframe codec id {self.keyframe_codec!r}")
        _check_uint("flags", self.flags, 0, 0xFFFF)
        if self.flags & ~KNOWN_HEADER_FLAGS:
            raise ValueError(f"unknown header flag bits {self.flags & ~KNOWN_HEADER_FLAGS:#x}")

    @property
    def untrained(self) -> bool:
        return bool(self.flags & HeaderFlags.UNTRAINED)

    def pack(self) -> bytes:
        name = self.model_name.encode("ascii")
        body = (
            _HEADER_PREAMBLE.pack(STREAM_MAGIC, STREAM_FORMAT_VERSION, self.flags, len(name))
            + name
            + _HEADER_FIXED_AFTER_NAME.pack(
                self.weights_sha256_prefix, self.width, self.height, int(self.family),
                self.expression_count,
                self.timebase, self.frame_rate_millihz, self.quality, self.intra_period,
                int(self.keyframe_codec))
            + self.quant_table.to_bytes()
        )
        return body + _CRC.pack(zlib.crc32(body))

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> StreamHeader:
        """Parse exactly one header. Wrong magic or bad fields → BitstreamError, unknown
        version → UnsupportedVersionError, too short → TruncatedError, too long →
        OversizedError / BitstreamError (trailing bytes), CRC mismatch → BitstreamError."""
        if len(data) > MAX_HEADER_BYTES:
            raise OversizedError(f"stream header of {len(data)} bytes exceeds {MAX_HEADER_BYTES}")
        reader = ByteReader(data)
        magic = reader.read_bytes(len(STREAM_MAGIC), "header magic")
        if magic != STREAM_MAGIC:
            raise BitstreamError(f"not a stream header (magic {magic!r})")
        version = reader.read_u8("header version")
        if version == 1:
            raise UnsupportedVersionError(
                "stream format version 1 (vid2vid only, before the landmark family) is no longer "
                f"read; this build reads version {STREAM_FORMAT_VERSION}: compress the video again")
        if version not in READABLE_FORMAT_VERSIONS:
            raise UnsupportedVersionError(f"stream format version {version} is not supported "
                                          f"(this build reads {READABLE_FORMAT_VERSIONS})")
        flags = reader.read_struct(_FLAGS, "header flags")[0]
        name_length = reader.read_u8("model name length")
        if not 1 <= name_length <= MAX_MODEL_NAME_BYTES:
            raise BitstreamError(f"model name length {name_length} out of range")
        name_bytes = reader.read_bytes(name_length, "model name")
        fixed = reader.read_struct(_HEADER_FIXED_AFTER_NAME, "header fields")
        table_bytes = reader.read_bytes(QuantTable.SERIALIZED_SIZE, "quant table")
        body_length = reader.offset
        crc = reader.read_struct(_CRC, "header CRC")[0]
        reader.expect_end("stream header")
        if crc != zlib.crc32(bytes(memoryview(data)[:body_length])):
            raise BitstreamError("stream header CRC mismatch")
        (prefix, width, height, family, expression_count, timebase, frame_rate, quality,
         intra_period, codec) = fixed
        try:
            return cls(
                model_name=name_bytes.decode("ascii"),
                weights_sha256_prefix=prefix, width=width, height=height, family=family,
                expression_count=expression_count,
                timebase=timebase, quality=quality, intra_period=intra_period,
                quant_table=QuantTable.from_bytes(table_bytes), keyframe_codec=codec,
                flags=flags, frame_rate_millihz=frame_rate)
        except (ValueError, UnicodeDecodeError) as error:
            raise BitstreamError(f"invalid stream header: {error}") from error


def _check_image(what: str, codec_id: int, image: bytes, limit: int, info: bytes) -> None:
    """ValueError for an unknown codec or an empty image; OversizedError above the limits."""
    _check_uint("codec_id", codec_id, 0, 0xFF)
    if codec_id not in KNOWN_KEYFRAME_CODECS:
        raise ValueError(f"unknown {what} image codec id {codec_id!r}")
    if not image:
        raise ValueError(f"{what} image is empty")
    if len(image) > limit:
        raise OversizedError(f"{what} image of {len(image)} bytes exceeds {limit}")
    if len(info) > MAX_KEYFRAME_INFO_BYTES:
        raise OversizedError(f"{what} info of {len(info)} bytes exceeds {MAX_KEYFRAME_INFO_BYTES}")


def _packet_prefix(packet_type: PacketType, seq: int, timestamp: int) -> bytes:
    return bytes([packet_type]) + encode_uvarint(seq) + encode_uvarint(timestamp)


@dataclass(frozen=True)
class KeyframePacket:
    """One coded keyframe image. codec_id is a KeyframeCodec value."""

    seq: int
    timestamp: int
    codec_id: int
    image_bytes: bytes
    info: bytes = b""  # the family's keyframe info (see the module docstring)

    def pack(self) -> bytes:
        """Serialise; OversizedError above MAX_KEYFRAME_BYTES, ValueError on bad fields."""
        _check_image("keyframe", self.codec_id, self.image_bytes, MAX_KEYFRAME_BYTES, self.info)
        return (_packet_prefix(PacketType.KEYFRAME, self.seq, self.timestamp)
                + bytes([self.codec_id]) + encode_uvarint(len(self.image_bytes))
                + bytes(self.image_bytes) + encode_uvarint(len(self.info)) + bytes(self.info))


@dataclass(frozen=True)
class MotionPacket:
    """One frame's range-coded motion (see codec.motion_coding)."""

    seq: int
    timestamp: int
    intra: bool
    payload: bytes

    def pack(self) -> bytes:
        """Serialise; OversizedError above MAX_MOTION_PAYLOAD_BYTES."""
        if len(self.payload) > MAX_MOTION_PAYLOAD_BYTES:
            raise OversizedError(f"motion payload of {len(self.payload)} bytes exceeds "
                                 f"{MAX_MOTION_PAYLOAD_BYTES}")
        packet_type = PacketType.MOTION_INTRA if self.intra else PacketType.MOTION_INTER
        return (_packet_prefix(packet_type, self.seq, self.timestamp)
                + encode_uvarint(len(self.payload)) + bytes(self.payload))


_PATCH_PLACE = struct.Struct("<BBHHB")  # region, slot, x0, y0, image codec id


@dataclass(frozen=True)
class PatchPacket:
    """One coded reference patch (see the module docstring)."""

    seq: int
    timestamp: int
    region: int
    slot: int
    x0: int
    y0: int
    codec_id: int
    image_bytes: bytes
    info: bytes = b""

    def pack(self) -> bytes:
        """Serialise; OversizedError above MAX_PATCH_IMAGE_BYTES, ValueError on bad fields."""
        _check_uint("region", self.region, 0, MAX_PATCH_REGIONS - 1)
        _check_uint("slot", self.slot, 0, MAX_PATCH_SLOTS - 1)
        _check_uint("x0", self.x0, 0, MAX_DIMENSION)
        _check_uint("y0", self.y0, 0, MAX_DIMENSION)
        _check_image("patch", self.codec_id, self.image_bytes, MAX_PATCH_IMAGE_BYTES, self.info)
        return (_packet_prefix(PacketType.PATCH, self.seq, self.timestamp)
                + _PATCH_PLACE.pack(self.region, self.slot, self.x0, self.y0, self.codec_id)
                + encode_uvarint(len(self.image_bytes)) + bytes(self.image_bytes)
                + encode_uvarint(len(self.info)) + bytes(self.info))


FramePacket = KeyframePacket | MotionPacket | PatchPacket


def _parse_patch(reader: ByteReader, seq: int, timestamp: int) -> PatchPacket:
    region, slot, x0, y0, codec_id = reader.read_struct(_PATCH_PLACE, "patch placement")
    if region >= MAX_PATCH_REGIONS:
        raise BitstreamError(f"unknown patch region {region}")
    if slot >= MAX_PATCH_SLOTS:
        raise BitstreamError(f"patch slot {slot} out of range")
    if x0 > MAX_DIMENSION or y0 > MAX_DIMENSION:
        raise BitstreamError(f"patch position ({x0}, {y0}) out of range")
    image, info = _read_image(reader, "patch", codec_id, MAX_PATCH_IMAGE_BYTES)
    return PatchPacket(seq, timestamp, region, slot, x0, y0, codec_id, image, info)


def _read_image(reader: ByteReader, what: str, codec_id: int, limit: int) -> tuple[bytes, bytes]:
    """(image, info) of a keyframe or patch packet, after its codec id, to the packet's end."""
    if codec_id not in KNOWN_KEYFRAME_CODECS:
        raise BitstreamError(f"unknown {what} codec id {codec_id}")
    length = reader.read_length(limit, f"{what} image length")
    if length == 0:
        raise BitstreamError(f"{what} image is empty")
    image = reader.read_bytes(length, f"{what} image")
    info_length = reader.read_length(MAX_KEYFRAME_INFO_BYTES, f"{what} info length")
    info = reader.read_bytes(info_length, f"{what} info")
    reader.expect_end(f"{what} packet")
    return image, info


def parse_packet(data: bytes | bytearray | memoryview) -> FramePacket:
    """Parse exactly one frame packet.

    Errors: OversizedError (packet or payload over its limit), TruncatedError (ends
    early), BitstreamError (empty input, unknown or control type, unknown keyframe
    codec, empty keyframe image, trailing bytes).
    """
    if len(data) > MAX_PACKET_BYTES:
        raise OversizedError(f"packet of {len(data)} bytes exceeds {MAX_PACKET_BYTES}")
    if len(data) == 0:
        raise TruncatedError("empty packet")
    reader = ByteReader(data)
    type_byte = reader.read_u8("packet type")
    if type_byte in CONTROL_TYPE_RANGE:
        raise BitstreamError(f"packet type {type_byte:#04x} is a control message, not a frame")
    try:
        packet_type = PacketType(type_byte)
    except ValueError:
        raise BitstreamError(f"unknown packet type {type_byte:#04x}") from None
    seq = reader.read_uvarint("sequence number")
    timestamp = reader.read_uvarint("timestamp")
    if packet_type == PacketType.PATCH:
        return _parse_patch(reader, seq, timestamp)
    if packet_type == PacketType.KEYFRAME:
        codec_id = reader.read_u8("keyframe codec")
        image, info = _read_image(reader, "keyframe", codec_id, MAX_KEYFRAME_BYTES)
        return KeyframePacket(seq, timestamp, codec_id, image, info)
    length = reader.read_length(MAX_MOTION_PAYLOAD_BYTES, "motion payload length")
    payload = reader.read_bytes(length, "motion payload")
    reader.expect_end("motion packet")
    return MotionPacket(seq, timestamp, packet_type == PacketType.MOTION_INTRA, payload)


__all__ = [
    "CONTROL_TYPE_RANGE", "KNOWN_KEYFRAME_CODECS", "KNOWN_HEADER_FLAGS", "MAX_DIMENSION",
    "MAX_HEADER_BYTES", "MAX_KEYFRAME_BYTES", "MAX_KEYFRAME_INFO_BYTES",
    "MAX_MODEL_NAME_BYTES", "MAX_MOTION_PAYLOAD_BYTES",
    "MAX_PACKET_BYTES", "MAX_PATCH_IMAGE_BYTES", "MAX_PATCH_REGIONS", "MAX_PATCH_SLOTS",
    "READABLE_FORMAT_VERSIONS",
    "STREAM_FORMAT_VERSION", "STREAM_MAGIC", "WEIGHTS_PREFIX_BYTES", "FramePacket",
    "HeaderFlags", "KeyframeCodec", "KeyframePacket", "MotionPacket", "PacketType",
    "PatchPacket", "StreamHeader", "parse_packet",
]
