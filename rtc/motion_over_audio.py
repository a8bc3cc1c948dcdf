"""Motion packets riding on the audio RTP packets, as an RTP header extension (RFC 8285).

Why: a data-channel message costs about 93 bytes on the wire beyond its payload (IPv4, UDP,
DTLS record, AES-GCM, SCTP common header and DATA chunk), and the receiver SACKs it. At 25
messages a second that is ~19 kbit/s for ~1-2 kbit/s of motion. An audio call already sends an
SRTP packet every 20 ms; an extension element of a motion packet costs its length plus one or
two bytes and the padding to 4 bytes, and nothing else: the packet, its SRTP tag and its
UDP/IP headers are paid for by the audio.

How:
- **Negotiated.** :func:`register_motion_extension` adds :data:`MOTION_EXTENSION_URI` to the
  header extensions aiortc offers for audio. A peer that does not know the URI (a browser, an
  older build) leaves it out of its answer, so nothing is sent to it, and would ignore the
  element anyway (RFC 8285 §4.1: unknown IDs are skipped).
- **Sender** (:class:`AudioMotionCarrier`): motion packets wait in a short queue and the next
  outgoing audio RTP packet of this peer takes one (audio is 50 packets/s, motion 25/s, so the
  queue drains). On a slow link audio goes in 40 ms packets (:mod:`rtc.opus_encoder`), as many
  as motion packets; then a packet that finds more than one waiting takes them all as one
  bundle (:mod:`rtc.motion_bundle`) where the peer reads bundles, so a late frame does not
  leave one waiting behind every later one. A packet waits at most :data:`MAX_WAIT_S`; while no audio flows (no track,
  muted, stalled) or when it is too long for an element, it goes on the data channel instead.
- **Receiver** (:func:`attach_motion_reader`): every incoming RTP packet of the peer's audio
  SSRC is searched for the element; its value goes to the same ``on_motion`` as a data-channel
  message, then the packet goes on to aiortc unchanged.

The element's value is one motion packet exactly as on the data channel: since stream format 4
usually the compact form, one framing byte (two in an intra packet) and the range-coded payload,
its length given by the element (about 7 bytes on dev, so the one-byte element header form).
Loss semantics are those of the unreliable ``motion`` channel: a lost audio packet loses the
motion it carried; the receiver drops the inter packets after it unnumbered and asks for an
intra packet, or for a keyframe after a longer gap. It tells the decoder when each packet
arrived, so after an outage of any length the 6 sequence bits of a compact packet never
misnumber a frame (:mod:`codec.bitstream.sequencing`). The extension's header is authenticated by SRTP but not
encrypted (as every RTP header extension in aiortc, and in WebRTC without RFC 6904/cryptex):
motion parameters are visible on the path, but cannot be altered.

aiortc has no API for a custom extension, so this wraps two methods of the peer's
``RTCDtlsTransport`` instance (``_send_rtp``, ``_handle_rtp_data``); :meth:`detach` undoes it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiortc import RTCPeerConnection
from aiortc.codecs import HEADER_EXTENSIONS
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters
from aiortc.rtp import is_rtcp, pack_header_extensions, unpack_header_extensions
from aiortc.sdp import SessionDescription

from codec.bitstream.varint import encode_uvarint
from codec.errors import BitstreamError
from rtc.motion_bundle import MAX_BUNDLE_PACKETS, is_bundle, pack_bundle, split_bundle

log = logging.getLogger(__name__)

MOTION_EXTENSION_URI = "urn:facecodec:rtp-hdrext:motion:1"
# aiortc offers ids 1 (mid) and 2 (audio level) for audio, 3 (abs-send-time) for video. 10 is free
# in both, and ≤ 14 keeps motion packets of ≤ 16 bytes in the one-byte header form.
MOTION_EXTENSION_ID = 10
MAX_WAIT_S = 0.06  # a queued packet older than this goes on the data channel instead
# ... or than this many audio packet intervals, where audio packets are longer (40 or 60 ms on a
# slow link, rtc.opus_encoder): the next audio packet is then the fastest way still.
MAX_WAIT_PACKETS = 1.5
# asyncio runs a timer up to one clock resolution early: the stale check allows for it.
TIMER_SLACK_S = 1e-3
# No audio packet for this long: audio is not flowing, use the data channel. Over twice the
# longest audio packet (120 ms, rtc.opus_encoder), or motion would leave the audio between two.
AUDIO_GAP_S = 0.25
MAX_ELEMENT_BYTES = 255  # the two-byte header form's limit
_RTP_FIXED_HEADER = 12


def register_motion_extension() -> None:
    """Offer (and accept) the motion extension on every audio m-line this process negotiates.

    Process-wide and idempotent, like :func:`rtc.peer.allow_loopback_candidates`: aiortc reads
    its module list ``HEADER_EXTENSIONS`` when it builds an offer or an answer (an answer keeps
    only what both sides list)."""
    audio = HEADER_EXTENSIONS["audio"]
    if not any(ext.uri == MOTION_EXTENSION_URI for ext in audio):
        audio.append(RTCRtpHeaderExtensionParameters(id=MOTION_EXTENSION_ID, uri=MOTION_EXTENSION_URI))


@dataclass(frozen=True)
class AudioExtension:
    """The negotiated extension on one connection: its id and the audio SSRCs of both sides."""

    extension_id: int
    local_ssrc: int | None  # None: this side sends no audio
    remote_ssrc: int | None  # None: the peer sends no audio


def negotiated_extension(pc: RTCPeerConnection) -> AudioExtension | None:
    """The motion extension if both descriptions list it on the audio m-line, else None."""
    if pc.localDescription is None or pc.remoteDescription is None:
        return None
    ids, ssrcs = [], []
    for description in (pc.localDescription, pc.remoteDescription):
        audio = [m for m in SessionDescription.parse(description.sdp).media if m.kind == "audio"]
        if not audio:
            return None
        found = [ext.id for ext in audio[0].rtp.headerExtensions if ext.uri == MOTION_EXTENSION_URI]
        if not found:
            return None
        ids.append(found[0])
        sends = audio[0].direction in ("sendrecv", "sendonly") and audio[0].ssrc
        ssrcs.append(audio[0].ssrc[0].ssrc if sends else None)
    if ids[0] != ids[1]:  # the answer echoes the offer's id; anything else is not ours
        log.warning("motion extension ids differ (%d, %d): not used", ids[0], ids[1])
        return None
    return AudioExtension(ids[0], ssrcs[0], ssrcs[1])


# ---------------------------------------------------------------------------- RTP bytes


def _split(rtp: bytes) -> tuple[int, list[tuple[int, bytes]], int]:
    """(end of the CSRC list, header extension elements, start of the payload)."""
    if len(rtp) < _RTP_FIXED_HEADER or rtp[0] >> 6 != 2:
        raise ValueError("not an RTP version 2 packet")
    pos = _RTP_FIXED_HEADER + 4 * (rtp[0] & 0x0F)
    if len(rtp) < pos:
        raise ValueError("RTP packet truncated in its CSRC list")
    if not rtp[0] & 0x10:
        return pos, [], pos
    if len(rtp) < pos + 4:
        raise ValueError("RTP header extension truncated")
    profile, words = struct.unpack_from("!HH", rtp, pos)
    end = pos + 4 + 4 * words
    if len(rtp) < end:
        raise ValueError("RTP header extension longer than the packet")
    return pos, unpack_header_extensions(profile, rtp[pos + 4:end]), end


def rtp_ssrc(rtp: bytes) -> int | None:
    """The SSRC of an RTP packet; None if it is too short to have one."""
    return struct.unpack_from("!I", rtp, 8)[0] if len(rtp) >= _RTP_FIXED_HEADER else None


def dtls_transport(pc: RTCPeerConnection):
    """The connection's one RTCDtlsTransport (BUNDLE: data channels and every RTP stream share it)."""
    if pc.sctp is not None:
        return pc.sctp.transport
    return next(t.sender.transport for t in pc.getTransceivers())


def add_extension_element(rtp: bytes, extension_id: int, value: bytes) -> bytes:
    """``rtp`` (unprotected) with one more header extension element. The one-byte form is kept
    while every element fits it (id ≤ 14, 1-16 bytes); otherwise all go to the two-byte form."""
    if not 0 < len(value) <= MAX_ELEMENT_BYTES:
        raise ValueError(f"an extension element holds 1-{MAX_ELEMENT_BYTES} bytes, not {len(value)}")
    pos, elements, payload = _split(rtp)
    profile, packed = pack_header_extensions([*elements, (extension_id, value)])
    return bytes([rtp[0] | 0x10]) + rtp[1:pos] + struct.pack("!HH", profile, len(packed) // 4) + packed \
        + rtp[payload:]


def read_extension_element(rtp: bytes, extension_id: int) -> bytes | None:
    """The value of element ``extension_id`` in ``rtp``, or None. Raises ValueError if malformed."""
    for x_id, value in _split(rtp)[1]:
        if x_id == extension_id:
            return value
    return None


# ---------------------------------------------------------------------------- sender


@dataclass
class CarrierStats:
    carried: int = 0  # motion packets sent inside audio packets
    bundles: int = 0  # audio packets that carried several motion packets as one bundle
    bytes_added: int = 0  # what they added to those packets (element, header, padding)
    to_data_channel: int = 0  # handed back: no audio flowing, too long, or waited too long
    audio_packets: int = 0  # audio packets seen


class AudioMotionCarrier:
    """Puts motion packets into this peer's outgoing audio RTP packets.

    Args:
        pc: a connected peer connection on which :func:`negotiated_extension` found the
            extension and this side sends audio (use :meth:`attach`).
        fallback: sends one motion packet on the data channel (a packet that cannot ride).
    """

    def __init__(self, pc: RTCPeerConnection, extension: AudioExtension,
                 fallback: Callable[[bytes], None]) -> None:
        self.extension = extension
        self.fallback = fallback
        self.stats = CarrierStats()
        self.bundles = False  # the peer reads motion bundles (the call sets it from its codecs)
        self._queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self._last_audio = -1e9
        self._audio_interval = 0.02  # the latest gap between two audio packets (s)
        self._transport = dtls_transport(pc)
        self._original = self._transport._send_rtp
        self._transport._send_rtp = self._send_rtp
        self._attached = True

    @classmethod
    def attach(cls, pc: RTCPeerConnection, fallback: Callable[[bytes], None]) -> AudioMotionCarrier | None:
        """A carrier on ``pc``, or None when the peer did not accept the extension or this side
        sends no audio (then motion stays on the data channel)."""
        extension = negotiated_extension(pc)
        if extension is None or extension.local_ssrc is None:
            return None
        return cls(pc, extension, fallback)

    @property
    def audio_flowing(self) -> bool:
        return time.monotonic() - self._last_audio < AUDIO_GAP_S

    def send(self, packet: bytes) -> bool:
        """Queue ``packet`` for the next audio packet. False: it was not taken (no audio is
        flowing, or it is too long); the caller sends it on the data channel."""
        if not self.audio_flowing or not 0 < len(packet) <= MAX_ELEMENT_BYTES:
            return False
        self._queue.append((time.monotonic(), packet))
        asyncio.get_running_loop().call_later(self.max_wait_s, self._flush_stale)
        return True

    @property
    def max_wait_s(self) -> float:
        """How long a motion packet may wait for an audio packet."""
        return max(MAX_WAIT_S, MAX_WAIT_PACKETS * self._audio_interval)

    async def flush(self) -> None:
        """Return once every queued packet has left in an audio packet (or, after
        :data:`MAX_WAIT_S`, on the data channel): the sender's last frame is on the wire."""
        deadline = time.monotonic() + self.max_wait_s
        while self._queue and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        self._flush_stale(force=True)

    def _flush_stale(self, force: bool = False) -> None:
        now = time.monotonic()
        wait = self.max_wait_s
        while self._queue and (force or now - self._queue[0][0] >= wait - TIMER_SLACK_S):
            self.stats.to_data_channel += 1
            self.fallback(self._queue.popleft()[1])

    async def _send_rtp(self, data: bytes) -> None:
        if self._attached and not is_rtcp(data) and rtp_ssrc(data) == self.extension.local_ssrc:
            now = time.monotonic()
            if now - self._last_audio < AUDIO_GAP_S:
                self._audio_interval = now - self._last_audio
            self._last_audio = now
            self.stats.audio_packets += 1
            if self._queue:
                packet, taken = self._take()
                try:
                    carried = add_extension_element(data, self.extension.extension_id, packet)
                except ValueError as exc:  # aiortc's own packet: should not happen; never lose motion
                    log.warning("cannot extend an audio packet (%s): motion goes on the data channel", exc)
                    for one in taken:  # the data channel bundles by its own plan
                        self.stats.to_data_channel += 1
                        self.fallback(one)
                else:
                    self.stats.carried += len(taken)
                    self.stats.bundles += len(taken) > 1
                    self.stats.bytes_added += len(carried) - len(data)
                    data = carried
        await self._original(data)

    def _take(self) -> tuple[bytes, list[bytes]]:
        """What the next audio packet carries: the oldest waiting motion packet, or, where the
        peer reads bundles, every waiting one that fits an element, as one bundle."""
        first = self._queue.popleft()[1]
        if not self.bundles or not self._queue:
            return first, [first]
        taken, size = [first], len(pack_bundle([first]))
        while self._queue and len(taken) < MAX_BUNDLE_PACKETS:
            following = self._queue[0][1]
            grown = size + len(encode_uvarint(len(following))) + len(following)
            if grown > MAX_ELEMENT_BYTES:
                break
            taken.append(self._queue.popleft()[1])
            size = grown
        return (first, taken) if len(taken) == 1 else (pack_bundle(taken), taken)

    def detach(self) -> None:
        """Stop carrying; queued packets go on the data channel. (If another hook wrapped the
        method over ours, ours stays in its chain and only passes through.)"""
        self._attached = False
        if self._transport.__dict__.get("_send_rtp") == self._send_rtp:
            del self._transport._send_rtp
        self._flush_stale(force=True)


# ---------------------------------------------------------------------------- receiver


@dataclass
class ReaderStats:
    audio_packets: int = 0  # the peer's audio packets seen
    carried: int = 0  # motion packets found in the peer's audio packets (bundled ones each)
    malformed: int = 0  # audio packets whose header extension could not be parsed


class MotionReader:
    """Takes motion packets out of the peer's audio RTP packets (use :func:`attach_motion_reader`)."""

    def __init__(self, pc: RTCPeerConnection, extension: AudioExtension,
                 on_motion: Callable[[bytes], None]) -> None:
        self.extension = extension
        self.on_motion = on_motion
        self.stats = ReaderStats()
        self._transport = dtls_transport(pc)
        self._original = self._transport._handle_rtp_data
        self._transport._handle_rtp_data = self._handle_rtp_data
        self._attached = True

    async def _handle_rtp_data(self, data: bytes, arrival_time_ms: int) -> None:
        if self._attached and rtp_ssrc(data) == self.extension.remote_ssrc:
            self.stats.audio_packets += 1
            if data[0] & 0x10:  # the packet has header extensions
                self._read_motion(data)
        await self._original(data, arrival_time_ms)

    def _read_motion(self, data: bytes) -> None:
        try:
            value = read_extension_element(data, self.extension.extension_id)
        except ValueError as exc:
            self.stats.malformed += 1
            log.debug("unreadable RTP header extension: %s", exc)
            return
        if value is not None:
            self.stats.carried += self._packets_in(value)
            self.on_motion(value)

    @staticmethod
    def _packets_in(value: bytes) -> int:
        """Motion packets in an element (a bundle holds several; a malformed one is counted
        once here and refused by the receiver)."""
        if not is_bundle(value):
            return 1
        try:
            return len(split_bundle(value))
        except BitstreamError:
            return 1

    def detach(self) -> None:
        self._attached = False
        if self._transport.__dict__.get("_handle_rtp_data") == self._handle_rtp_data:
            del self._transport._handle_rtp_data


def attach_motion_reader(pc: RTCPeerConnection, on_motion: Callable[[bytes], None]) -> MotionReader | None:
    """Deliver motion packets found in the peer's audio to ``on_motion``; None when the
    extension was not negotiated or the peer sends no audio."""
    extension = negotiated_extension(pc)
    if extension is None or extension.remote_ssrc is None:
        return None
    return MotionReader(pc, extension, on_motion)
