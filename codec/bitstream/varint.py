"""Unsigned LEB128 varints and a bounds-checked byte reader.

A varint holds 7 bits per byte, least significant group first; the high bit of each
byte says another byte follows. At most 10 bytes / 64 bits. Encodings are canonical:
the last byte of a multi-byte varint is never zero, so each value has exactly one
encoding (golden bytes stay stable and corrupt input is caught early).
"""

from __future__ import annotations

import struct

from codec.errors import BitstreamError, OversizedError, TruncatedError

MAX_VARINT_BYTES = 10
MAX_VARINT_VALUE = (1 << 64) - 1


def encode_uvarint(value: int) -> bytes:
    """LEB128 bytes of ``value`` in [0, 2^64); ValueError otherwise (a caller bug)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_VARINT_VALUE:
        raise ValueError(f"varint value must be an int in [0, 2^64), got {value!r}")
    out = bytearray()
    while True:
        low_bits = value & 0x7F
        value >>= 7
        if value:
            out.append(low_bits | 0x80)
        else:
            out.append(low_bits)
            return bytes(out)


def decode_uvarint(data: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int]:
    """Read one varint at ``offset``; returns (value, offset just past it).

    TruncatedError if the data end inside it; BitstreamError if it is longer than
    10 bytes, exceeds 64 bits or is not canonical (a trailing zero byte).
    """
    value = 0
    for index in range(MAX_VARINT_BYTES):
        position = offset + index
        if position >= len(data):
            raise TruncatedError(f"varint at offset {offset} is truncated")
        byte = data[position]
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            if index > 0 and byte == 0:
                raise BitstreamError(f"varint at offset {offset} is not canonical")
            if value > MAX_VARINT_VALUE:
                raise BitstreamError(f"varint at offset {offset} exceeds 64 bits")
            return value, position + 1
    raise BitstreamError(f"varint at offset {offset} is longer than {MAX_VARINT_BYTES} bytes")


class ByteReader:
    """Sequential reads from an in-memory buffer; every overrun raises TruncatedError.

    Reads never allocate more than the input holds, so a hostile length field cannot
    make the parser allocate without bound.
    """

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._data = memoryview(data).cast("B")
        self.offset = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self.offset

    def read_bytes(self, count: int, what: str = "field") -> bytes:
        if count < 0 or count > self.remaining:
            raise TruncatedError(f"{what} needs {count} bytes at offset {self.offset}, "
                                 f"{self.remaining} left")
        chunk = bytes(self._data[self.offset:self.offset + count])
        self.offset += count
        return chunk

    def read_u8(self, what: str = "byte") -> int:
        return self.read_bytes(1, what)[0]

    def read_struct(self, layout: struct.Struct, what: str = "field") -> tuple:
        return layout.unpack(self.read_bytes(layout.size, what))

    def read_uvarint(self, what: str = "varint") -> int:
        try:
            value, self.offset = decode_uvarint(self._data, self.offset)
        except TruncatedError as error:
            raise TruncatedError(f"{what}: {error}") from error
        except BitstreamError as error:
            raise BitstreamError(f"{what}: {error}") from error
        return value

    def read_length(self, limit: int, what: str = "length") -> int:
        """A varint length ≤ ``limit`` (else OversizedError), checked before any read."""
        length = self.read_uvarint(what)
        if length > limit:
            raise OversizedError(f"{what} {length} exceeds the limit of {limit}")
        return length

    def read_rest(self) -> bytes:
        return self.read_bytes(self.remaining)

    def expect_end(self, what: str = "input") -> None:
        """BitstreamError if unread bytes remain."""
        if self.remaining:
            raise BitstreamError(f"{self.remaining} trailing bytes after {what}")
