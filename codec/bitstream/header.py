"""The stream header: explicit little-endian layout, never pickle (frame packets:
:mod:`codec.bitstream.packets`).

Stream header (sent once per call and at the start of a file), format version 4::

    offset   size  field
    0        4     magic b"FVVS"
    4        1     format version (4; 2 and 3 are also read, see below)
    5        2     flags, uint16 (bit 0 = UNTRAINED model; bit 1 = WHOLE_FRAME, v4: the
                   pictures are whole camera frames, not square face crops; other bits
                   reserved, must be 0)
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
    35+n     1     K = reference slots the receiver keeps, uint8 (1 … 16)          (v4)
    36+n     48    QuantTable: angles, translation, expression × (step, bound, intra
                   scale, inter scale), float32
    84+n     4     CRC32 (zlib) of bytes 0 … 83+n
    total 88+n bytes (87+n in versions 2 and 3, which have no K: one reference)

The motion layout is family + N: every frame's motion vector is 3 angles (degrees), 3
translation values and N expression values, quantized by the table's three groups;
the family fixes what the translation and expression values mean
(:class:`codec.families.ModelFamily`). Version 1 streams (a fixed 6 + 3K vid2vid
layout, no family) are refused with UnsupportedVersionError.
"""


from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag

from codec.bitstream.varint import ByteReader
from codec.errors import (
    BitstreamError,
    OversizedError,
    UnsupportedVersionError,
)
from codec.families.base import ModelFamily
from codec.motion_coding import MAX_EXPRESSION_VALUES, QuantTable

STREAM_MAGIC = b"FVVS"
STREAM_FORMAT_VERSION = 4
# 2: before patch packets; 3: before compact motion packets and reference slots.
READABLE_FORMAT_VERSIONS = (2, 3, 4)
MAX_MODEL_NAME_BYTES = 32
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,%d}" % MAX_MODEL_NAME_BYTES)
WEIGHTS_PREFIX_BYTES = 8
MAX_DIMENSION = 16384
MAX_REFERENCE_SLOTS = 16
MAX_HEADER_BYTES = 88 + MAX_MODEL_NAME_BYTES


class HeaderFlags(IntFlag):
    """Stream-header flag bits; unknown bits are rejected (a new meaning needs a version)."""

    UNTRAINED = 1 << 0  # weights are a placeholder: frames are not meaningful
    # The pictures are the camera's whole frame (width × height, any aspect), not a square
    # face crop: the receiver meshes each keyframe where its face is (v4; unset in v2/v3).
    WHOLE_FRAME = 1 << 1


KNOWN_HEADER_FLAGS = int(HeaderFlags.UNTRAINED | HeaderFlags.WHOLE_FRAME)


class KeyframeCodec(IntEnum):
    """How a keyframe image is coded."""

    WEBP = 1
    JPEG = 2
    # Ids 3 (PNG) and 4 (one H.264 intra frame) are reserved; add them only with a decoder.
    AV1 = 5  # one SVT-AV1 intra frame as low-overhead OBUs (AVIF's image data, no container)


KNOWN_FAMILIES = frozenset(int(family) for family in ModelFamily)
KNOWN_KEYFRAME_CODECS = frozenset(int(codec) for codec in KeyframeCodec)

_HEADER_FIXED_AFTER_NAME = struct.Struct("<8sHHBHIIBHB")  # prefix … keyframe codec (27 bytes)
_HEADER_PREAMBLE = struct.Struct("<4sBHB")  # magic, version, flags, name length (8 bytes)
_FLAGS = struct.Struct("<H")
_CRC = struct.Struct("<I")


def check_uint(name: str, value: int, low: int, high: int) -> None:
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
    reference_slots: int = 1  # K: keyframe references the receiver keeps (1 … 16)
    # The version the header was read as (pack() always writes STREAM_FORMAT_VERSION); the
    # packets that follow use that version's layouts. Not part of equality: same stream.
    format_version: int = field(default=STREAM_FORMAT_VERSION, compare=False)

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
        check_uint("width", self.width, 1, MAX_DIMENSION)
        check_uint("height", self.height, 1, MAX_DIMENSION)
        check_uint("family", self.family, 0, 0xFF)
        if self.family not in KNOWN_FAMILIES:
            raise ValueError(f"unknown model family {self.family!r}")
        check_uint("expression_count", self.expression_count, 1, MAX_EXPRESSION_VALUES)
        check_uint("timebase", self.timebase, 1, 0xFFFFFFFF)
        check_uint("frame_rate_millihz", self.frame_rate_millihz, 0, 1_000_000)
        check_uint("quality", self.quality, 0, 0xFF)
        check_uint("intra_period", self.intra_period, 1, 0xFFFF)
        if not isinstance(self.quant_table, QuantTable):
            raise ValueError("quant_table must be a QuantTable")
        check_uint("keyframe_codec", self.keyframe_codec, 0, 0xFF)
        if self.keyframe_codec not in KNOWN_KEYFRAME_CODECS:
            raise ValueError(f"unknown keyframe codec id {self.keyframe_codec!r}")
        check_uint("flags", self.flags, 0, 0xFFFF)
        if self.flags & ~KNOWN_HEADER_FLAGS:
            raise ValueError(f"unknown header flag bits {self.flags & ~KNOWN_HEADER_FLAGS:#x}")
        check_uint("reference_slots", self.reference_slots, 1, MAX_REFERENCE_SLOTS)
        if self.format_version not in READABLE_FORMAT_VERSIONS:
            raise ValueError(f"format version {self.format_version!r} is not one this build reads")
        if self.format_version < 4 and self.reference_slots != 1:
            raise ValueError("format versions before 4 have one reference slot")
        if self.format_version < 4 and self.flags & HeaderFlags.WHOLE_FRAME:
            raise ValueError("format versions before 4 carry face crops only")

    @property
    def untrained(self) -> bool:
        return bool(self.flags & HeaderFlags.UNTRAINED)

    @property
    def whole_frame(self) -> bool:
        """The pictures are whole camera frames (width × height), not square face crops."""
        return bool(self.flags & HeaderFlags.WHOLE_FRAME)

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
            + bytes([self.reference_slots])
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
        reference_slots = reader.read_u8("reference slots") if version >= 4 else 1
        if not 1 <= reference_slots <= MAX_REFERENCE_SLOTS:
            raise BitstreamError(f"reference slot count {reference_slots} out of range "
                                 f"(1 … {MAX_REFERENCE_SLOTS})")
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
                flags=flags, frame_rate_millihz=frame_rate, reference_slots=reference_slots,
                format_version=version)
        except (ValueError, UnicodeDecodeError) as error:
            raise BitstreamError(f"invalid stream header: {error}") from error


