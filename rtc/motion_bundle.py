"""Several motion packets in one data-channel message, for a slow link without audio.

Without audio, motion travels as one message per frame on the unreliable ``motion`` data
channel, and each message costs ~93 bytes of headers (IPv4, UDP, DTLS, SCTP): ~19 kbit/s at
25 fps, the whole of a 20 kbit/s link. Two frames per message halve that. A bundle is::

    0x7E, then per packet: uvarint length, the packet's bytes

0x7E lies in the range the frame-packet format reserves for the transport (0x40–0x7F), so a
bundle is never mistaken for a packet. A sender bundles only for a peer that announced
``BUNDLE_CAPABILITY`` among its codecs. The audio carrier (:mod:`rtc.motion_over_audio`) sends
one too, when several motion packets waited for the same audio packet. The receiver shows the
packets of a bundle one frame interval apart, and a later message queues behind them
(:meth:`receiver.session.ReceiverSession.on_motion`).
"""

from __future__ import annotations

from codec.bitstream.varint import encode_uvarint
from codec.errors import BitstreamError

BUNDLE_MARKER = 0x7E
BUNDLE_CAPABILITY = "motion-bundle"
MAX_BUNDLE_PACKETS = 8


def pack_bundle(packets: list[bytes]) -> bytes:
    if not 1 <= len(packets) <= MAX_BUNDLE_PACKETS:
        raise ValueError(f"a bundle holds 1 to {MAX_BUNDLE_PACKETS} packets")
    return bytes([BUNDLE_MARKER]) + b"".join(encode_uvarint(len(p)) + p for p in packets)


def is_bundle(data: bytes) -> bool:
    return len(data) > 0 and data[0] == BUNDLE_MARKER


def split_bundle(data: bytes) -> list[bytes]:
    """The packets of a bundle; BitstreamError for anything malformed (bad marker, a length
    past the end, an empty packet, more than MAX_BUNDLE_PACKETS)."""
    if not is_bundle(data):
        raise BitstreamError("not a motion bundle")
    packets, position = [], 1
    while position < len(data):
        length, shift = 0, 0
        while True:
            if position >= len(data) or shift > 14:
                raise BitstreamError("truncated or oversized bundle length")
            byte = data[position]
            position += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if length == 0 or position + length > len(data):
            raise BitstreamError("bundle packet length out of range")
        packets.append(bytes(data[position:position + length]))
        position += length
        if len(packets) > MAX_BUNDLE_PACKETS:
            raise BitstreamError(f"more than {MAX_BUNDLE_PACKETS} packets in a bundle")
    if not packets:
        raise BitstreamError("empty bundle")
    return packets
