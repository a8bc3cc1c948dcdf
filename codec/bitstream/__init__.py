"""The codec's binary formats: varints, the stream header, frame packets and the file container.

Every layout is explicit and versioned (see the module docstrings of
:mod:`codec.bitstream.packets` and :mod:`codec.bitstream.container`); nothing is pickled.
Every parser raises only :class:`codec.errors.CodecError` subclasses on bad input.
This package imports neither torch nor constriction.
"""

from codec.bitstream.container import (
    CONTAINER_MAGIC,
    CONTAINER_VERSION,
    MAX_AUDIO_PACKET_BYTES,
    AudioHeader,
    AudioPacket,
    Container,
    ContainerWriter,
    RecordKind,
    read_container,
)
from codec.bitstream.packets import (
    MAX_HEADER_BYTES,
    MAX_KEYFRAME_BYTES,
    MAX_KEYFRAME_INFO_BYTES,
    MAX_MOTION_PAYLOAD_BYTES,
    MAX_PACKET_BYTES,
    MAX_PATCH_SLOTS,
    MAX_REFERENCE_SLOTS,
    STREAM_FORMAT_VERSION,
    STREAM_MAGIC,
    CompactMotionPacket,
    FramePacket,
    HeaderFlags,
    KeyframeCodec,
    KeyframePacket,
    MotionPacket,
    PacketType,
    PatchPacket,
    PredictedKeyframePacket,
    StreamHeader,
    is_motion_packet,
    parse_packet,
)
from codec.bitstream.sequencing import MotionFramer, MotionSequencer
from codec.bitstream.varint import ByteReader, decode_uvarint, encode_uvarint

__all__ = [
    "CONTAINER_MAGIC", "CONTAINER_VERSION", "MAX_AUDIO_PACKET_BYTES", "MAX_HEADER_BYTES",
    "MAX_KEYFRAME_BYTES", "MAX_KEYFRAME_INFO_BYTES", "MAX_MOTION_PAYLOAD_BYTES", "MAX_PACKET_BYTES",
    "MAX_PATCH_SLOTS", "MAX_REFERENCE_SLOTS", "STREAM_FORMAT_VERSION",
    "STREAM_MAGIC", "AudioHeader", "AudioPacket", "ByteReader", "CompactMotionPacket", "Container",
    "ContainerWriter", "FramePacket", "HeaderFlags", "KeyframeCodec", "KeyframePacket", "MotionFramer",
    "MotionPacket", "MotionSequencer", "PacketType", "PatchPacket", "PredictedKeyframePacket", "RecordKind",
    "StreamHeader",
    "decode_uvarint", "encode_uvarint", "is_motion_packet", "parse_packet", "read_container",
]
