"""The frame packets: explicit little-endian layouts, never pickle (the stream header they
follow: :mod:`codec.bitstream.header`).

Frame packets, format version 4. Each is one data-channel message, one container record or
one RTP header-extension element, so none carries its own length: the last field runs to
the end of the record. "slot" fields are reference slots, 0 … K-1 (else
ReferenceSlotError).

Compact motion packet (first byte 0x80 … 0xFF; almost every frame)::

    1 byte   1 I ssssss: I = intra, s = sequence number mod 64
    varint   H = sequence number >> 6                       (intra only)
    rest     range-coded motion payload (may be empty)

Extended motion packet (the sender's exceptions: see below)::

    1 byte   type (MOTION_INTRA 0x02 / MOTION_INTER 0x03)
    varint   sequence number
    varint   timestamp (ticks of the header's timebase)
    1 byte   slot: the reference to warp from
    rest     range-coded motion payload

How a receiver recovers what a compact packet leaves out (codec.bitstream.sequencing):

- sequence: an intra packet carries all of it (H·64 + s). An inter packet can only be
  decoded after its predecessor, so it is taken as the last motion packet's sequence + 1
  when s matches that (mod 64), and dropped otherwise (counted as stale or as a lost
  reference; no number is guessed). 64·k lost packets since the last numbered one would
  make the next inter packet look contiguous: a receiver that has numbered nothing for 32
  frame intervals forgets its last sequence (Decoder.parse's arrival time), so after an
  outage of any length or shape only an intra packet resynchronises;
- timestamp: the grid timestamp round(seq · timebase / frame rate) plus the chain's
  departure, the extended packet's timestamp minus its grid timestamp (0 after a compact
  intra packet): a compact inter packet inherits its predecessor's;
- reference: a compact intra packet warps from the slot the newest keyframe filled; a
  compact inter packet from the slot its predecessor used (or a newer keyframe's slot);
  an extended packet from the slot it names.

So the sender writes the compact form unless the packet's timestamp departs from that,
an inter packet does not follow its predecessor, or the reference differs from the one the
compact form implies (codec.bitstream.sequencing.MotionFramer); the header's frame rate
must be known (not 0) for compact packets.

Keyframe packet::

    1 byte   type (KEYFRAME 0x01)
    varint   sequence number
    varint   timestamp
    1 byte   slot it fills (it becomes the current reference)                     (v4)
    1 byte   keyframe image codec id
    varint   image length L (≤ MAX_KEYFRAME_BYTES)
    L bytes  image
    varint   info length I (≤ 4096)
    I bytes  keyframe info: what the family's receiver needs beside the pixels (the
             landmark family: the keyframe's 68 landmarks; vid2vid: nothing)
    nothing may follow.

Patch packet: real pixels of one face region the keyframe lacks
(:mod:`codec.reference_patches`); it applies to its reference from its sequence number on,
until that slot's next keyframe::

    1 byte   type (PATCH 0x04)
    varint   sequence number
    varint   timestamp
    1 byte   slot: the reference (keyframe) it belongs to                         (v4)
    1 byte   region id (0 mouth, 1 right eye, 2 left eye)
    1 byte   patch slot (0 … MAX_PATCH_SLOTS-1): the patch it replaces
    2+2      x0, y0 uint16: where the patch sat in its frame (crop pixels)
    1 byte   image codec id (KeyframeCodec)
    varint   image length L (1 … MAX_PATCH_IMAGE_BYTES)
    L bytes  image
    varint   info length I (≤ MAX_KEYFRAME_INFO_BYTES)
    I bytes  placement info: what the family needs to move the patch with the face (the
             landmark family: its frame's decoded motion vector, float16)
    nothing may follow.

Predicted keyframe packet (v4, type 0x05): a refresh coded against the receiver's warp of a
reference it holds (codec.predicted_keyframe); it fills its slot as a keyframe does::

    1 byte   type (PREDICTED_KEYFRAME 0x05)
    varint   sequence number
    varint   timestamp
    1 byte   slot it fills (it becomes the current reference)
    1 byte   base slot: the reference it is predicted from
    varint   base sequence number: the frame of the reference the sender predicted from (a
             receiver holding another one in that slot must not build from it)
    1 byte   method (1: an H.264 inter frame over the intra frame x264 makes of the warp)
    1 byte   quality (method 1: the x264 CRF of both frames, 0 … 51)
    4 bytes  check: sha256 prefix of the reference the sender built (S×S×3 RGB bytes): a
             receiver that builds another one must not use it
    varint   data length L (1 … MAX_KEYFRAME_BYTES)
    L bytes  data (method 1: the inter frame's H.264 access unit)
    varint   info length I (≤ MAX_KEYFRAME_INFO_BYTES)
    I bytes  keyframe info of the new frame (the landmark family: its 68 landmarks)
    varint   motion length M (≤ MAX_KEYFRAME_INFO_BYTES)
    M bytes  the motion vector the base reference is warped with (float16; the family
             checks its length)
    nothing may follow.

Versions 2 and 3 (read, never written): no compact packets (a first byte ≥ 0x80 is an
unknown type) and no slot fields (one reference); every motion packet is type, varint
sequence, varint timestamp, varint payload length, payload; version 2 has no patches.
"""


from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from codec.bitstream.header import (
    KNOWN_HEADER_FLAGS,
    KNOWN_KEYFRAME_CODECS,
    MAX_DIMENSION,
    MAX_HEADER_BYTES,
    MAX_MODEL_NAME_BYTES,
    MAX_REFERENCE_SLOTS,
    READABLE_FORMAT_VERSIONS,
    STREAM_FORMAT_VERSION,
    STREAM_MAGIC,
    WEIGHTS_PREFIX_BYTES,
    HeaderFlags,
    KeyframeCodec,
    StreamHeader,
    check_uint,
)
from codec.bitstream.varint import MAX_VARINT_BYTES, MAX_VARINT_VALUE, ByteReader, encode_uvarint
from codec.errors import (
    BitstreamError,
    OversizedError,
    ReferenceSlotError,
    TruncatedError,
)

MAX_KEYFRAME_BYTES = 4 * 1024 * 1024
MAX_MOTION_PAYLOAD_BYTES = 4 * 1024
MAX_KEYFRAME_INFO_BYTES = 4 * 1024
MAX_PATCH_IMAGE_BYTES = 64 * 1024
MAX_PATCH_SLOTS = 8
MAX_PATCH_REGIONS = 3
# The largest packet, a predicted keyframe: type + seq + timestamp + slot + base + base seq + method
# + quality + check + data length + data + info length + info + motion length + motion.
MAX_PACKET_BYTES = 1 + 6 * MAX_VARINT_BYTES + 4 + 4 + MAX_KEYFRAME_BYTES + 2 * MAX_KEYFRAME_INFO_BYTES
COMPACT_MOTION_FLAG = 0x80  # first byte 1 I ssssss: a compact motion packet (version 4)
COMPACT_INTRA_FLAG = 0x40
COMPACT_SEQ_BITS = 6
COMPACT_SEQ_MASK = (1 << COMPACT_SEQ_BITS) - 1


class PacketType(IntEnum):
    """First byte of every frame packet."""

    KEYFRAME = 0x01
    MOTION_INTRA = 0x02
    MOTION_INTER = 0x03
    PATCH = 0x04
    PREDICTED_KEYFRAME = 0x05  # version 4 only
    # 0x40–0x7F are reserved for control messages defined by the transport layer;
    # parse_packet rejects them. 0x80 and up: compact motion packets (version 4).
    KEYFRAME_REQUEST = 0x40


CONTROL_TYPE_RANGE = range(0x40, 0x80)

def _check_image(what: str, codec_id: int, image: bytes, limit: int, info: bytes) -> None:
    """ValueError for an unknown codec or an empty image; OversizedError above the limits."""
    check_uint("codec_id", codec_id, 0, 0xFF)
    if codec_id not in KNOWN_KEYFRAME_CODECS:
        raise ValueError(f"unknown {what} image codec id {codec_id!r}")
    if not image:
        raise ValueError(f"{what} image is empty")
    if len(image) > limit:
        raise OversizedError(f"{what} image of {len(image)} bytes exceeds {limit}")
    if len(info) > MAX_KEYFRAME_INFO_BYTES:
        raise OversizedError(f"{what} info of {len(info)} bytes exceeds {MAX_KEYFRAME_INFO_BYTES}")


def _packet_prefix(packet_type: PacketType, seq: int, timestamp: int, slot: int) -> bytes:
    """Type, varint sequence, varint timestamp and the reference slot (version 4)."""
    check_uint("slot", slot, 0, MAX_REFERENCE_SLOTS - 1)
    return bytes([packet_type]) + encode_uvarint(seq) + encode_uvarint(timestamp) + bytes([slot])


def _check_motion_payload(payload: bytes) -> None:
    if len(payload) > MAX_MOTION_PAYLOAD_BYTES:
        raise OversizedError(f"motion payload of {len(payload)} bytes exceeds "
                             f"{MAX_MOTION_PAYLOAD_BYTES}")


@dataclass(frozen=True)
class KeyframePacket:
    """One coded keyframe image. codec_id is a KeyframeCodec value; it fills reference ``slot``."""

    seq: int
    timestamp: int
    codec_id: int
    image_bytes: bytes
    info: bytes = b""  # the family's keyframe info (see the module docstring)
    slot: int = 0

    def pack(self) -> bytes:
        """Serialise; OversizedError above MAX_KEYFRAME_BYTES, ValueError on bad fields."""
        _check_image("keyframe", self.codec_id, self.image_bytes, MAX_KEYFRAME_BYTES, self.info)
        return (_packet_prefix(PacketType.KEYFRAME, self.seq, self.timestamp, self.slot)
                + bytes([self.codec_id]) + encode_uvarint(len(self.image_bytes))
                + bytes(self.image_bytes) + encode_uvarint(len(self.info)) + bytes(self.info))


@dataclass(frozen=True)
class MotionPacket:
    """One frame's range-coded motion (see codec.motion_coding), every field known.

    ``reference`` is the slot to warp from: named by an extended packet (and 0 in version 2
    and 3 streams); None for a packet a receiver recovered from the compact form, whose
    reference is implied (codec.bitstream.sequencing). pack() writes the extended form."""

    seq: int
    timestamp: int
    intra: bool
    payload: bytes
    reference: int | None = 0

    def pack(self) -> bytes:
        """Serialise (extended form); OversizedError above MAX_MOTION_PAYLOAD_BYTES."""
        _check_motion_payload(self.payload)
        if self.reference is None:
            raise ValueError("an implied reference has no extended form: name the slot")
        packet_type = PacketType.MOTION_INTRA if self.intra else PacketType.MOTION_INTER
        return _packet_prefix(packet_type, self.seq, self.timestamp, self.reference) + bytes(self.payload)


@dataclass(frozen=True)
class CompactMotionPacket:
    """A version 4 compact motion packet as it is on the wire: the sequence number's low 6
    bits (and, in an intra packet, the rest of it); timestamp and reference are implied."""

    intra: bool
    seq_low: int  # sequence number mod 64
    payload: bytes
    seq_high: int = 0  # intra packets: sequence number >> 6 (inter packets carry none: 0)

    @property
    def seq(self) -> int | None:
        """The whole sequence number of an intra packet; None for an inter packet."""
        return (self.seq_high << COMPACT_SEQ_BITS) | self.seq_low if self.intra else None

    @classmethod
    def of(cls, seq: int, intra: bool, payload: bytes) -> CompactMotionPacket:
        check_uint("seq", seq, 0, MAX_VARINT_VALUE)
        return cls(intra, seq & COMPACT_SEQ_MASK, payload, seq >> COMPACT_SEQ_BITS if intra else 0)

    def pack(self) -> bytes:
        check_uint("seq_low", self.seq_low, 0, COMPACT_SEQ_MASK)
        check_uint("seq_high", self.seq_high, 0, MAX_VARINT_VALUE >> COMPACT_SEQ_BITS)
        if not self.intra and self.seq_high:
            raise ValueError("a compact inter packet carries no high sequence bits")
        _check_motion_payload(self.payload)
        first = COMPACT_MOTION_FLAG | (COMPACT_INTRA_FLAG if self.intra else 0) | self.seq_low
        high = encode_uvarint(self.seq_high) if self.intra else b""
        return bytes([first]) + high + bytes(self.payload)


_PATCH_PLACE = struct.Struct("<BBHHB")  # region, slot, x0, y0, image codec id


@dataclass(frozen=True)
class PatchPacket:
    """One coded reference patch (see the module docstring); ``reference`` is the slot of the
    keyframe it belongs to, ``slot`` the patch slot it replaces there."""

    seq: int
    timestamp: int
    region: int
    slot: int
    x0: int
    y0: int
    codec_id: int
    image_bytes: bytes
    info: bytes = b""
    reference: int = 0

    def pack(self) -> bytes:
        """Serialise; OversizedError above MAX_PATCH_IMAGE_BYTES, ValueError on bad fields."""
        check_uint("region", self.region, 0, MAX_PATCH_REGIONS - 1)
        check_uint("slot", self.slot, 0, MAX_PATCH_SLOTS - 1)
        check_uint("x0", self.x0, 0, MAX_DIMENSION)
        check_uint("y0", self.y0, 0, MAX_DIMENSION)
        _check_image("patch", self.codec_id, self.image_bytes, MAX_PATCH_IMAGE_BYTES, self.info)
        return (_packet_prefix(PacketType.PATCH, self.seq, self.timestamp, self.reference)
                + _PATCH_PLACE.pack(self.region, self.slot, self.x0, self.y0, self.codec_id)
                + encode_uvarint(len(self.image_bytes)) + bytes(self.image_bytes)
                + encode_uvarint(len(self.info)) + bytes(self.info))


PREDICTION_METHODS = frozenset({1})  # 1: an H.264 inter frame over the warp (codec.predicted_keyframe)
PREDICTION_CHECK_BYTES = 4


@dataclass(frozen=True)
class PredictedKeyframePacket:
    """A refresh predicted from reference ``base``, the keyframe of frame ``base_seq`` (see
    the module docstring): how (``method``, ``quality``, ``check``), its ``data``, the new
    frame's keyframe info and the motion the base is warped with; it fills reference ``slot``."""

    seq: int
    timestamp: int
    base: int
    base_seq: int
    method: int
    quality: int
    check: bytes
    data: bytes
    info: bytes
    motion: bytes
    slot: int = 0

    def pack(self) -> bytes:
        """Serialise; OversizedError above the limits, ValueError on bad fields."""
        check_uint("base", self.base, 0, MAX_REFERENCE_SLOTS - 1)
        check_uint("method", self.method, 0, 0xFF)
        if self.method not in PREDICTION_METHODS:
            raise ValueError(f"unknown prediction method {self.method!r}")
        check_uint("quality", self.quality, 0, 0xFF)
        if len(self.check) != PREDICTION_CHECK_BYTES:
            raise ValueError(f"the check is {PREDICTION_CHECK_BYTES} bytes, not {len(self.check)}")
        if not self.data:
            raise ValueError("predicted keyframe data is empty")
        if len(self.data) > MAX_KEYFRAME_BYTES:
            raise OversizedError(f"predicted keyframe data of {len(self.data)} bytes exceeds {MAX_KEYFRAME_BYTES}")
        for what, field in (("info", self.info), ("motion", self.motion)):
            if len(field) > MAX_KEYFRAME_INFO_BYTES:
                raise OversizedError(f"predicted keyframe {what} of {len(field)} bytes exceeds "
                                     f"{MAX_KEYFRAME_INFO_BYTES}")
        return (_packet_prefix(PacketType.PREDICTED_KEYFRAME, self.seq, self.timestamp, self.slot)
                + bytes([self.base]) + encode_uvarint(self.base_seq) + bytes([self.method, self.quality])
                + bytes(self.check) + encode_uvarint(len(self.data)) + bytes(self.data)
                + encode_uvarint(len(self.info)) + bytes(self.info)
                + encode_uvarint(len(self.motion)) + bytes(self.motion))


FramePacket = KeyframePacket | MotionPacket | CompactMotionPacket | PatchPacket | PredictedKeyframePacket


def is_motion_packet(data: bytes | bytearray | memoryview) -> bool:
    """Whether packet bytes are a motion packet, by the first byte alone (any version)."""
    return bool(data) and (data[0] in (PacketType.MOTION_INTRA, PacketType.MOTION_INTER)
                           or data[0] & COMPACT_MOTION_FLAG != 0)


def _parse_patch(reader: ByteReader, seq: int, timestamp: int, reference: int) -> PatchPacket:
    region, slot, x0, y0, codec_id = reader.read_struct(_PATCH_PLACE, "patch placement")
    if region >= MAX_PATCH_REGIONS:
        raise BitstreamError(f"unknown patch region {region}")
    if slot >= MAX_PATCH_SLOTS:
        raise BitstreamError(f"patch slot {slot} out of range")
    if x0 > MAX_DIMENSION or y0 > MAX_DIMENSION:
        raise BitstreamError(f"patch position ({x0}, {y0}) out of range")
    image, info = _read_image(reader, "patch", codec_id, MAX_PATCH_IMAGE_BYTES)
    return PatchPacket(seq, timestamp, region, slot, x0, y0, codec_id, image, info, reference)


def _parse_predicted(reader: ByteReader, seq: int, timestamp: int, slot: int, slots: int) -> PredictedKeyframePacket:
    base = _read_slot(reader, slots, "base reference slot")
    base_seq = reader.read_uvarint("base sequence number")
    method = reader.read_u8("prediction method")
    if method not in PREDICTION_METHODS:
        raise BitstreamError(f"unknown prediction method {method}")
    quality = reader.read_u8("prediction quality")
    check = reader.read_bytes(PREDICTION_CHECK_BYTES, "prediction check")
    length = reader.read_length(MAX_KEYFRAME_BYTES, "predicted keyframe data length")
    if length == 0:
        raise BitstreamError("predicted keyframe data is empty")
    data = reader.read_bytes(length, "predicted keyframe data")
    info_length = reader.read_length(MAX_KEYFRAME_INFO_BYTES, "predicted keyframe info length")
    info = reader.read_bytes(info_length, "predicted keyframe info")
    motion_length = reader.read_length(MAX_KEYFRAME_INFO_BYTES, "predicted keyframe motion length")
    motion = reader.read_bytes(motion_length, "predicted keyframe motion")
    reader.expect_end("predicted keyframe packet")
    return PredictedKeyframePacket(seq, timestamp, base, base_seq, method, quality, check, data, info, motion, slot)


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


def _read_slot(reader: ByteReader, slots: int, what: str) -> int:
    slot = reader.read_u8(what)
    if slot >= slots:
        raise ReferenceSlotError(f"{what} {slot} out of range: the stream has {slots} reference slots")
    return slot


def _read_motion_payload(reader: ByteReader) -> bytes:
    """A version 4 motion payload: the rest of the record."""
    if reader.remaining > MAX_MOTION_PAYLOAD_BYTES:
        raise OversizedError(f"motion payload of {reader.remaining} bytes exceeds "
                             f"{MAX_MOTION_PAYLOAD_BYTES}")
    return reader.read_rest()


def _parse_compact(reader: ByteReader, first: int, header: StreamHeader | None) -> CompactMotionPacket:
    if header is not None and header.frame_rate_millihz == 0:
        raise BitstreamError("compact motion packet in a stream without a frame rate (its "
                             "timestamps cannot be implied)")
    intra = bool(first & COMPACT_INTRA_FLAG)
    high = 0
    if intra:
        high = reader.read_uvarint("compact sequence number")
        if high > MAX_VARINT_VALUE >> COMPACT_SEQ_BITS:
            raise BitstreamError("compact sequence number exceeds 64 bits")
    return CompactMotionPacket(intra, first & COMPACT_SEQ_MASK, _read_motion_payload(reader), high)


def parse_packet(data: bytes | bytearray | memoryview, header: StreamHeader | None = None) -> FramePacket:
    """Parse exactly one frame packet of the stream ``header`` introduced (its format
    version and reference slot count; None: the current version with 16 slots).

    Compact motion packets come back as :class:`CompactMotionPacket`: recovering their
    sequence number, timestamp and reference takes the stream's state
    (:class:`codec.bitstream.sequencing.MotionSequencer`, which codec.api.Decoder runs).

    Errors: OversizedError (packet or payload over its limit), TruncatedError (ends
    early), ReferenceSlotError (a slot ≥ K), BitstreamError (empty input, unknown or
    control type, unknown keyframe codec, empty keyframe image, trailing bytes).
    """
    version = STREAM_FORMAT_VERSION if header is None else header.format_version
    slots = MAX_REFERENCE_SLOTS if header is None else header.reference_slots
    if len(data) > MAX_PACKET_BYTES:
        raise OversizedError(f"packet of {len(data)} bytes exceeds {MAX_PACKET_BYTES}")
    if len(data) == 0:
        raise TruncatedError("empty packet")
    reader = ByteReader(data)
    type_byte = reader.read_u8("packet type")
    if version >= 4 and type_byte & COMPACT_MOTION_FLAG:
        return _parse_compact(reader, type_byte, header)
    if type_byte in CONTROL_TYPE_RANGE:
        raise BitstreamError(f"packet type {type_byte:#04x} is a control message, not a frame")
    try:
        packet_type = PacketType(type_byte)
    except ValueError:
        raise BitstreamError(f"unknown packet type {type_byte:#04x}") from None
    seq = reader.read_uvarint("sequence number")
    timestamp = reader.read_uvarint("timestamp")
    slot = _read_slot(reader, slots, "reference slot") if version >= 4 else 0
    if packet_type == PacketType.PATCH:
        return _parse_patch(reader, seq, timestamp, slot)
    if packet_type == PacketType.PREDICTED_KEYFRAME:
        if version < 4:
            raise BitstreamError("predicted keyframe packet in a version 3 or older stream")
        return _parse_predicted(reader, seq, timestamp, slot, slots)
    if packet_type == PacketType.KEYFRAME:
        codec_id = reader.read_u8("keyframe codec")
        image, info = _read_image(reader, "keyframe", codec_id, MAX_KEYFRAME_BYTES)
        return KeyframePacket(seq, timestamp, codec_id, image, info, slot)
    intra = packet_type == PacketType.MOTION_INTRA
    if version >= 4:
        return MotionPacket(seq, timestamp, intra, _read_motion_payload(reader), slot)
    length = reader.read_length(MAX_MOTION_PAYLOAD_BYTES, "motion payload length")
    payload = reader.read_bytes(length, "motion payload")
    reader.expect_end("motion packet")
    return MotionPacket(seq, timestamp, intra, payload, 0)


__all__ = [
    "COMPACT_SEQ_BITS", "CONTROL_TYPE_RANGE", "KNOWN_KEYFRAME_CODECS", "KNOWN_HEADER_FLAGS", "MAX_DIMENSION",
    "MAX_HEADER_BYTES", "MAX_KEYFRAME_BYTES", "MAX_KEYFRAME_INFO_BYTES",
    "MAX_MODEL_NAME_BYTES", "MAX_MOTION_PAYLOAD_BYTES",
    "MAX_PACKET_BYTES", "MAX_PATCH_IMAGE_BYTES", "MAX_PATCH_REGIONS", "MAX_PATCH_SLOTS",
    "MAX_REFERENCE_SLOTS", "READABLE_FORMAT_VERSIONS",
    "STREAM_FORMAT_VERSION", "STREAM_MAGIC", "WEIGHTS_PREFIX_BYTES", "CompactMotionPacket", "FramePacket",
    "HeaderFlags", "KeyframeCodec", "KeyframePacket", "MotionPacket", "PacketType",
    "PREDICTION_METHODS", "PatchPacket", "PredictedKeyframePacket", "StreamHeader", "is_motion_packet", "parse_packet",
]
