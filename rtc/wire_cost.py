"""What the codec's packets cost on the wire of a WebRTC call, beyond their own bytes.

In a call, keyframes and patches travel as data-channel messages
(:func:`data_channel_message_wire_bytes`) and motion packets ride on the audio RTP packets
(:func:`motion_on_audio_wire_bytes`), or, without audio, as one data-channel message each.
Plain arithmetic on the overheads stated here as constants, used for on-wire estimates (the
rd benchmark, ``facecodec compress``'s report); :mod:`rtc.wire_meter` measures the real
thing. This module imports nothing, so a benchmark on a machine without aiortc can use it.
"""

from __future__ import annotations

__all__ = ["AUDIO_PACKET_ELEMENT_BYTES", "DATA_CHANNEL_CHUNK_BYTES", "DATA_CHANNEL_OVERHEAD_BYTES",
           "data_channel_message_wire_bytes", "data_channel_wire_kbps", "motion_on_audio_wire_bytes"]

# Bytes a WebRTC data-channel message costs on the wire beyond its payload:
# IPv4 20 + UDP 8 + DTLS record 13 + AES-GCM nonce/tag 24 + SCTP common header 12
# + DATA chunk 16 = 93, before padding to 4 bytes. Used for on-wire estimates only.
DATA_CHANNEL_OVERHEAD_BYTES = 93
# SCTP splits a longer message into DATA chunks of at most this much user data, one datagram
# each (aiortc's USERDATA_MAX_LENGTH: a 1189-byte SCTP packet fits the IPv6 minimum MTU).
DATA_CHANNEL_CHUNK_BYTES = 1160
# The header extension elements aiortc already puts in every Opus packet: mid "0" (1 + 1 bytes)
# and the audio level (1 + 1), 4 bytes, a multiple of 4 so no padding.
AUDIO_PACKET_ELEMENT_BYTES = 4


def data_channel_wire_kbps(payload_bytes: int, messages: int, seconds: float) -> float:
    """kbit/s on the wire of ``messages`` data-channel messages carrying ``payload_bytes`` in
    all over ``seconds``: the payload plus DATA_CHANNEL_OVERHEAD_BYTES per message."""
    return 8.0 * (payload_bytes + messages * DATA_CHANNEL_OVERHEAD_BYTES) / max(seconds, 1e-9) / 1000.0


def data_channel_message_wire_bytes(payload_bytes: int) -> int:
    """On-wire bytes of one data-channel message: its payload plus the per-datagram overhead
    of every SCTP chunk it is split into (a keyframe of 7 KB takes 7 datagrams)."""
    datagrams = max(1, -(-payload_bytes // DATA_CHANNEL_CHUNK_BYTES))
    return payload_bytes + datagrams * DATA_CHANNEL_OVERHEAD_BYTES


def motion_on_audio_wire_bytes(packet_bytes: int) -> int:
    """What one motion packet of ``packet_bytes`` adds to the Opus RTP packet it rides on as a
    header extension element (rtc.motion_over_audio): the element and its header, and the
    padding of the extension block to 4 bytes. Up to 16 bytes every element keeps the one-byte
    header; a longer one moves them all to the two-byte form (RFC 8285). The packet carries no
    length of its own (stream format 4): the element's length delimits it."""
    if packet_bytes <= 16:
        block = AUDIO_PACKET_ELEMENT_BYTES + 1 + packet_bytes
    else:
        block = AUDIO_PACKET_ELEMENT_BYTES + 2 + 2 + packet_bytes  # mid and level gain a byte each
    return -(-block // 4) * 4 - AUDIO_PACKET_ELEMENT_BYTES
