"""Opus for the call's audio, at a set rate and with a packet length the sender may change
mid-call.

Why: on a slow link an audio call's cost is mostly packet headers. Speech at 12 kbit/s of
Opus in 20 ms packets is 30 bytes a packet; IPv4, UDP, RTP with its header extensions and
the SRTP tag add about 66 more, 50 times a second: the impairment matrix measured audio at
39.5 kbit/s on the wire in its 50 kbit/s cell, which left ~10 kbit/s for keyframes and
control. 40 ms packets halve the headers (~26 kbit/s for the same speech), for 20 ms more
audio latency; libwebrtc lengthens its packets on slow links for the same reason ("adaptive
ptime"). Motion rides the audio packets (:mod:`rtc.motion_over_audio`): at 25 fps a 40 ms
packet still carries one frame's motion.

aiortc's own ``OpusEncoder`` is fixed at 20 ms and 96 kbit/s. This one codes mono (what the
call's tracks give; a stereo decoder plays it on both channels) at ``kbps``, and keeps its own
sample clock, so the RTP timestamps run on unbroken when the packet length changes: PyAV
cannot change libopus's ``frame_duration`` on an open context, so a change opens a new one
at the next packet boundary, where no sample waits for a packet (the old context's
look-ahead, 6.5 ms, is not flushed: one short glitch a change).

:func:`install_opus_encoder` puts one in an audio ``RTCRtpSender`` before it sends.
"""

from __future__ import annotations

import fractions
import threading

import av
import numpy as np
from aiortc.codecs.base import Encoder
from av import AudioResampler, CodecContext

SAMPLE_RATE = 48_000
PACKET_MS = (20, 40, 60, 120)  # libopus frame durations a packet may have here
# 120 ms packets are for a link the audio itself overfills (sender.link_adapt): they code at
# most this rate, ~12 kbit/s on the wire with their headers; narrower speech, but it gets through.
SLOWEST_PACKET_KBPS = 8.0
_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
MAX_SWITCH_WAIT = 8  # calls a new packet length waits for an empty buffer before it starts anyway


class LinkOpusEncoder(Encoder):
    """An aiortc audio encoder: Opus at ``kbps`` in packets of ``packet_ms`` (see the module
    docstring). :meth:`set_packet_ms` may be called from any thread while it codes."""

    def __init__(self, kbps: float, packet_ms: int = 20) -> None:
        if not 6 <= kbps <= 510:
            raise ValueError(f"Opus codes 6 to 510 kbit/s, not {kbps}")
        self.kbps = float(kbps)
        self._packet_ms = self._checked(packet_ms)
        self._wanted_ms = self._packet_ms
        self._lock = threading.Lock()
        self._resampler = AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        self._waiting = np.zeros(0, np.int16)  # samples not yet in a packet
        self._coded = 0  # samples coded so far: the RTP timestamp of the next packet's start
        self.reopened = 0  # packet-length changes made
        self._calls_waiting = 0  # calls a wanted change has waited for a packet boundary
        self._open()

    @staticmethod
    def _checked(packet_ms: int) -> int:
        if packet_ms not in PACKET_MS:
            raise ValueError(f"an Opus packet here lasts one of {PACKET_MS} ms, not {packet_ms!r}")
        return int(packet_ms)

    @property
    def packet_ms(self) -> int:
        """The packet length asked for last (it applies from the next packet)."""
        return self._wanted_ms

    def set_packet_ms(self, packet_ms: int) -> None:
        with self._lock:
            self._wanted_ms = self._checked(packet_ms)

    def _open(self) -> None:
        codec = CodecContext.create("libopus", "w")
        kbps = min(self.kbps, SLOWEST_PACKET_KBPS) if self._packet_ms == max(PACKET_MS) else self.kbps
        codec.bit_rate = int(kbps * 1000)
        codec.format = "s16"
        codec.layout = "mono"
        codec.sample_rate = SAMPLE_RATE
        codec.time_base = _TIME_BASE
        codec.options = {"application": "voip", "frame_duration": str(self._packet_ms)}
        codec.open()
        self.codec = codec
        self._opened_at = self._coded  # the sample clock where this context's pts 0 sits
        self._first_pts: int | None = None  # libopus's first packet pts (its look-ahead, negative)

    def encode(self, frame: av.AudioFrame, force_keyframe: bool = False) -> tuple[list[bytes], int | None]:
        """Code ``frame`` (any format, layout or rate): at most one packet, and its RTP
        timestamp (48 kHz samples); ``([], None)`` while a packet fills. One packet a call,
        because aiortc gives every payload of a call the same timestamp."""
        with self._lock:
            wanted = self._wanted_ms
        # A new length starts on a packet boundary, with nothing waiting: 20 ms frames in, so
        # at most a packet (120 ms) late (or a few calls more for frames of other lengths).
        if wanted != self._packet_ms and (not len(self._waiting) or self._calls_waiting >= MAX_SWITCH_WAIT):
            self._packet_ms = wanted
            self.reopened += 1
            self._open()
        self._calls_waiting = self._calls_waiting + 1 if wanted != self._packet_ms else 0
        try:
            parts = self._resampler.resample(frame)
        except ValueError:  # the track's format changed (another microphone): start a new resampler
            self._resampler = AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            parts = self._resampler.resample(frame)
        for part in parts:
            self._waiting = np.concatenate([self._waiting, part.to_ndarray().reshape(-1)])
        size = SAMPLE_RATE * self._packet_ms // 1000
        if len(self._waiting) < size:
            return [], None
        chunk, self._waiting = self._waiting[:size], self._waiting[size:]
        piece = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk[None, :]), format="s16", layout="mono")
        piece.sample_rate = SAMPLE_RATE
        piece.time_base = _TIME_BASE
        piece.pts = self._coded - self._opened_at
        self._coded += size
        payloads: list[bytes] = []
        timestamp = None
        for packet in self.codec.encode(piece):
            if self._first_pts is None:
                self._first_pts = packet.pts
            if timestamp is None:
                timestamp = self._opened_at + packet.pts - self._first_pts
            payloads.append(bytes(packet))
        return payloads, timestamp

    def pack(self, packet: av.Packet) -> tuple[list[bytes], int]:
        raise NotImplementedError("LinkOpusEncoder codes PCM frames; it does not pack coded packets")


def install_opus_encoder(rtp_sender, kbps: float, packet_ms: int = 20) -> LinkOpusEncoder:
    """Make ``rtp_sender`` (an audio RTCRtpSender, before it sends) code with a
    :class:`LinkOpusEncoder`; returns it, so the caller can change its packet length. aiortc
    makes its encoder on the first frame only when it has none, and has no public hook for
    this."""
    encoder = LinkOpusEncoder(kbps, packet_ms)
    rtp_sender._RTCRtpSender__encoder = encoder
    return encoder
