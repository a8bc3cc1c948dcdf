"""A file container for offline use: the stream header, frame packets and optional audio.

Layout, container version 1::

    4 bytes   file magic b"FVVF"
    1 byte    container version (1)
    varint    stream header length H (≤ MAX_HEADER_BYTES)
    H bytes   StreamHeader.pack()
    records, each: 1 byte kind | varint body length (≤ the kind's limit) | body
      0x01 VIDEO_PACKET   a frame packet (codec.bitstream.packets; its length is the record's)
      0x02 AUDIO_HEADER   1 byte n, n bytes codec name ([a-z0-9_-], e.g. "opus"),
                          uint32 sample rate, uint8 channels, uint16 pre-skip
                          (decoder delay in samples to drop), uint32 sample count
                          of the source audio (trims the coder's padding); at most
                          once, before any audio packet
      0x03 AUDIO_PACKET   varint pts (in 1/sample_rate units, counted from the coded
                          stream's first sample, so never negative), then the bytes
      0x7F END            varint video packet count, varint audio packet count,
                          uint32 CRC32 of every file byte before this record
    nothing after END.

Stream format version 4 changed only the packets inside the records (which the records
already delimit), so the container stays at version 1: a reader of version 3 streams sees a
version 4 file's stream header and refuses it with UnsupportedVersionError.

The END record makes truncation detectable (a file that stops early raises
TruncatedError) and its CRC catches corruption. Records are bounded per kind, so a
reader never allocates more than the biggest legal record.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum
from types import TracebackType
from typing import BinaryIO

from codec.bitstream.packets import (
    MAX_HEADER_BYTES,
    MAX_PACKET_BYTES,
    FramePacket,
    StreamHeader,
    parse_packet,
)
from codec.bitstream.varint import MAX_VARINT_BYTES, ByteReader, encode_uvarint
from codec.errors import BitstreamError, OversizedError, TruncatedError, UnsupportedVersionError

CONTAINER_MAGIC = b"FVVF"
CONTAINER_VERSION = 1

MAX_AUDIO_CODEC_NAME_BYTES = 16
AUDIO_CODEC_NAME_PATTERN = re.compile(r"[a-z0-9_-]{1,%d}" % MAX_AUDIO_CODEC_NAME_BYTES)
MAX_SAMPLE_RATE = 768_000
MAX_AUDIO_CHANNELS = 8
MAX_AUDIO_PACKET_BYTES = 64 * 1024


class RecordKind(IntEnum):
    VIDEO_PACKET = 0x01
    AUDIO_HEADER = 0x02
    AUDIO_PACKET = 0x03
    END = 0x7F


_AUDIO_HEADER_TAIL = struct.Struct("<IBHI")  # sample rate, channels, pre-skip, sample count
_CRC = struct.Struct("<I")

# Largest legal body per record kind (checked before the body is read).
MAX_RECORD_BODY_BYTES = {
    RecordKind.VIDEO_PACKET: MAX_PACKET_BYTES,
    RecordKind.AUDIO_HEADER: 1 + MAX_AUDIO_CODEC_NAME_BYTES + _AUDIO_HEADER_TAIL.size,
    RecordKind.AUDIO_PACKET: MAX_VARINT_BYTES + MAX_AUDIO_PACKET_BYTES,
    RecordKind.END: 2 * MAX_VARINT_BYTES + _CRC.size,
}


@dataclass(frozen=True)
class AudioHeader:
    """The audio track's codec and format; pts of its packets count 1/sample_rate seconds."""

    codec: str
    sample_rate: int
    channels: int
    pre_skip: int = 0
    num_samples: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.codec, str) or not AUDIO_CODEC_NAME_PATTERN.fullmatch(self.codec):
            raise ValueError(f"audio codec name must match {AUDIO_CODEC_NAME_PATTERN.pattern}, "
                             f"got {self.codec!r}")
        for name, value, high in (("sample_rate", self.sample_rate, MAX_SAMPLE_RATE),
                                  ("channels", self.channels, MAX_AUDIO_CHANNELS)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
                raise ValueError(f"{name} must be an int in [1, {high}], got {value!r}")
        for name, value, high in (("pre_skip", self.pre_skip, 0xFFFF),
                                  ("num_samples", self.num_samples, 0xFFFFFFFF)):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
                raise ValueError(f"{name} must be an int in [0, {high}], got {value!r}")

    def pack(self) -> bytes:
        name = self.codec.encode("ascii")
        return bytes([len(name)]) + name + _AUDIO_HEADER_TAIL.pack(
            self.sample_rate, self.channels, self.pre_skip, self.num_samples)

    @classmethod
    def parse(cls, data: bytes) -> AudioHeader:
        reader = ByteReader(data)
        name_length = reader.read_u8("audio codec name length")
        name = reader.read_bytes(name_length, "audio codec name")
        sample_rate, channels, pre_skip, num_samples = reader.read_struct(
            _AUDIO_HEADER_TAIL, "audio format")
        reader.expect_end("audio header")
        try:
            return cls(name.decode("ascii"), sample_rate, channels, pre_skip, num_samples)
        except (ValueError, UnicodeDecodeError) as error:
            raise BitstreamError(f"invalid audio header: {error}") from error


@dataclass(frozen=True)
class AudioPacket:
    """One coded audio packet; pts in 1/sample_rate units."""

    pts: int
    data: bytes


@dataclass
class Container:
    """Everything a container file holds. Video packets are raw frame-packet bytes
    (already validated with parse_packet), in file order."""

    header: StreamHeader
    video_packets: list[bytes] = field(default_factory=list)
    audio_header: AudioHeader | None = None
    audio_packets: list[AudioPacket] = field(default_factory=list)


def _record(kind: RecordKind, body: bytes) -> bytes:
    return bytes([kind]) + encode_uvarint(len(body)) + body


class ContainerWriter:
    """Writes a container to a binary file object (which it does not close).

    The preamble and stream header are written on construction; call :meth:`close`
    (or leave a ``with`` block normally) to write the END record. If the ``with``
    block raises, END is not written, so readers see the file as truncated.
    """

    def __init__(self, fileobj: BinaryIO, header: StreamHeader) -> None:
        self._file = fileobj
        self._crc = 0
        self._video_count = 0
        self._audio_count = 0
        self._audio_header: AudioHeader | None = None
        self._closed = False
        self._header = StreamHeader.parse(header.pack())  # as a reader will see it
        header_bytes = header.pack()
        self._write(CONTAINER_MAGIC + bytes([CONTAINER_VERSION])
                    + encode_uvarint(len(header_bytes)) + header_bytes)

    def _write(self, data: bytes) -> None:
        if self._closed:
            raise ValueError("container writer is closed")
        self._file.write(data)
        self._crc = zlib.crc32(data, self._crc)

    def write_video_packet(self, packet: bytes | FramePacket) -> None:
        """Append one frame packet (bytes are validated with parse_packet first)."""
        data = packet.pack() if isinstance(packet, FramePacket) else bytes(packet)
        parse_packet(data, self._header)  # never write a record the reader would reject
        self._write(_record(RecordKind.VIDEO_PACKET, data))
        self._video_count += 1

    def write_audio_header(self, audio_header: AudioHeader) -> None:
        """Declare the audio track; once, before any audio packet."""
        if self._audio_header is not None:
            raise ValueError("audio header already written")
        self._write(_record(RecordKind.AUDIO_HEADER, audio_header.pack()))
        self._audio_header = audio_header

    def write_audio_packet(self, pts: int, data: bytes) -> None:
        """Append one audio packet (pts in 1/sample_rate units)."""
        if self._audio_header is None:
            raise ValueError("write_audio_header must come before audio packets")
        if not data:
            raise ValueError("audio packet is empty")
        if len(data) > MAX_AUDIO_PACKET_BYTES:
            raise OversizedError(f"audio packet of {len(data)} bytes exceeds "
                                 f"{MAX_AUDIO_PACKET_BYTES}")
        self._write(_record(RecordKind.AUDIO_PACKET, encode_uvarint(pts) + bytes(data)))
        self._audio_count += 1

    def close(self) -> None:
        """Write the END record; further writes raise ValueError. Idempotent."""
        if self._closed:
            return
        crc = self._crc  # CRC of everything before the END record
        body = (encode_uvarint(self._video_count) + encode_uvarint(self._audio_count)
                + _CRC.pack(crc))
        self._write(_record(RecordKind.END, body))
        self._closed = True

    def __enter__(self) -> ContainerWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if exc_type is None:
            self.close()


class _CrcStream:
    """Reads exact byte counts from a file object, keeping a running CRC32."""

    def __init__(self, fileobj: BinaryIO) -> None:
        self._file = fileobj
        self.crc = 0

    def read_exact(self, count: int, what: str) -> bytes:
        data = self._file.read(count)
        if data is None or len(data) != count:
            raise TruncatedError(f"container ends inside {what}")
        self.crc = zlib.crc32(data, self.crc)
        return data

    def read_uvarint(self, what: str) -> int:
        """Read a varint byte by byte (a stream cannot be peeked), then validate it."""
        raw = bytearray()
        while True:
            byte = self.read_exact(1, what)[0]
            raw.append(byte)
            if not byte & 0x80 or len(raw) == MAX_VARINT_BYTES:
                break
        return ByteReader(raw).read_uvarint(what)

    def at_end(self) -> bool:
        return self._file.read(1) == b""


def read_container(source: BinaryIO | bytes | bytearray | memoryview) -> Container:
    """Read and validate a whole container from a binary file object or bytes.

    Errors: TruncatedError if it ends early (including a missing END record),
    UnsupportedVersionError for an unknown container or stream version,
    OversizedError for a record over its kind's limit, BitstreamError for anything
    else malformed (wrong magic, bad record order, CRC or count mismatch, trailing data).
    """
    fileobj = io.BytesIO(bytes(source)) if isinstance(source, bytes | bytearray | memoryview) \
        else source
    stream = _CrcStream(fileobj)
    magic = stream.read_exact(len(CONTAINER_MAGIC), "file magic")
    if magic != CONTAINER_MAGIC:
        raise BitstreamError(f"not a container file (magic {magic!r})")
    version = stream.read_exact(1, "container version")[0]
    if version != CONTAINER_VERSION:
        raise UnsupportedVersionError(f"container version {version} is not supported "
                                      f"(this build reads {CONTAINER_VERSION})")
    header_length = stream.read_uvarint("stream header length")
    if header_length > MAX_HEADER_BYTES:
        raise OversizedError(f"stream header length {header_length} exceeds {MAX_HEADER_BYTES}")
    container = Container(StreamHeader.parse(stream.read_exact(header_length, "stream header")))

    while True:
        crc_before_record = stream.crc
        kind_byte = stream.read_exact(1, "record kind")[0]
        try:
            kind = RecordKind(kind_byte)
        except ValueError:
            raise BitstreamError(f"unknown container record kind {kind_byte:#04x}") from None
        body_length = stream.read_uvarint("record length")
        if body_length > MAX_RECORD_BODY_BYTES[kind]:
            raise OversizedError(f"{kind.name} record of {body_length} bytes exceeds "
                                 f"{MAX_RECORD_BODY_BYTES[kind]}")
        body = stream.read_exact(body_length, f"{kind.name} record")
        if kind == RecordKind.VIDEO_PACKET:
            parse_packet(body, container.header)
            container.video_packets.append(body)
        elif kind == RecordKind.AUDIO_HEADER:
            if container.audio_header is not None:
                raise BitstreamError("second audio header record")
            container.audio_header = AudioHeader.parse(body)
        elif kind == RecordKind.AUDIO_PACKET:
            if container.audio_header is None:
                raise BitstreamError("audio packet before the audio header")
            reader = ByteReader(body)
            pts = reader.read_uvarint("audio pts")
            data = reader.read_rest()
            if not data:
                raise BitstreamError("empty audio packet")
            container.audio_packets.append(AudioPacket(pts, data))
        else:
            _check_end_record(body, crc_before_record, container)
            if not stream.at_end():
                raise BitstreamError("data after the container's END record")
            return container


def _check_end_record(body: bytes, crc_before_record: int, container: Container) -> None:
    """Validate END: packet counts and the CRC of every byte before it."""
    reader = ByteReader(body)
    video_count = reader.read_uvarint("END video count")
    audio_count = reader.read_uvarint("END audio count")
    (crc,) = reader.read_struct(_CRC, "END CRC")
    reader.expect_end("END record")
    if (video_count, audio_count) != (len(container.video_packets), len(container.audio_packets)):
        raise BitstreamError(
            f"END record counts ({video_count}, {audio_count}) do not match the file "
            f"({len(container.video_packets)}, {len(container.audio_packets)})")
    if crc != crc_before_record:
        raise BitstreamError("container CRC mismatch")
