"""WebRTC media tracks for the sender: the low-rate H.264 video track and PCM audio.

- :class:`H264Track` — an aiortc video track that encodes pushed RGB frames itself (with
  :class:`~codec.media.h264.H264Encoder`) and hands aiortc ready :class:`av.Packet` s.
  aiortc's own H.264 encoder clamps its bitrate to 500 kbit/s – 3 Mbit/s, far above a
  talking-head call's budget; when ``recv()`` returns a Packet, ``RTCRtpSender`` only
  packetizes it (``H264Encoder.pack``: RTP timestamp = packet.pts converted from
  packet.time_base to 90 kHz).
- :func:`follow_receiver_feedback` — aiortc turns an RTCP PLI/FIR into a "force keyframe"
  flag that only its own encoder path reads; a packet track never hears of it. This hooks
  the sender so a PLI reaches :meth:`H264Track.request_keyframe`, and the receiver's
  bandwidth estimate (RTCP REMB, which aiortc's receiver sends from the packets' arrival
  times) reaches :meth:`H264Track.follow_link`: the H.264 fallback fits the link it is on.
- :class:`PcmAudioTrack` — mono 48 kHz PCM played as 20 ms s16 frames in real time
  (aiortc codes them to Opus).

The microphone is :func:`sender.microphone.microphone_track`. Every failure a user can
cause (no audio in a file, an encoder that will not open) is a
:class:`~codec.errors.MediaError`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCRtpSender
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, unpack_remb_fci

from codec.errors import MediaError
from codec.media import AUDIO_SAMPLE_RATE, decode_pcm_mono48k
from codec.media.h264 import VIDEO_CLOCK_RATE, VIDEO_TIME_BASE, H264AccessUnit, H264Encoder

__all__ = [
    "AUDIO_FRAME_SAMPLES",
    "H264Track",
    "H264TrackStats",
    "PcmAudioTrack",
    "follow_receiver_feedback",
]

logger = logging.getLogger(__name__)
events = logging.getLogger("facecodec.call")

AUDIO_FRAME_SAMPLES = 960  # 20 ms at 48 kHz, aiortc's (and WebRTC's) audio ptime
_AUDIO_TIME_BASE = Fraction(1, AUDIO_SAMPLE_RATE)


# ---------------------------------------------------------------------------- video

# Following the receiver's estimate (H264Track.follow_link). aiortc's receiver estimates from
# the video packets' arrival times (abs-send-time) how much payload the link carries, and says
# so in RTCP REMB: the payload it saw, 0.85 of it when the packets queue (the link is full),
# up to 1.5 of it plus 10 kbit/s while they do not. Every frame also costs an RTP packet's
# headers (IPv4 20, UDP 8, RTP 12, abs-send-time and its extension header 8, SRTP's tag 10,
# the FU-A/STAP header 2): at 25 fps that alone is 12 kbit/s, so a 20 kbit/s link cannot carry
# 25 frames a second of anything. The link is taken as the estimate plus the headers sent with
# what it measured; the video takes LINK_SHARE of it, headers included, and sends fewer frames
# (every 2nd, 3rd or 5th, each still coded at the call's size) when a frame would get less
# than MIN_FRAME_BYTES of coded picture.
RTP_PACKET_OVERHEAD_BYTES = 62
LINK_SHARE = 0.9
MIN_FRAME_BYTES = 80
FRAME_STEPS = (1, 2, 3, 5)
RATE_CHANGE = 0.2  # the encoder is reopened (an IDR) only for a change of more than this
RAISE_INTERVAL_S = 3.0  # and raised at most this often after a change (each raise costs an IDR)
RAISE_FACTOR = 1.25
# Loss says the link is full above this share (random loss on a fast link is mostly below:
# GCC's loss-based controller uses the same 10 %, and takes off half the loss).
LOSS_CONGESTED = 0.10
SETTLE_S = 1.0  # after a fall, the receiver's reports describe the old rate for about this long
CONGESTED = 0.9  # an estimate below this share of the payload sent says the link is full
SENT_WINDOW_S = 2.0  # the payload rate sent is measured over this long
# NACKed packets resent a second at most: this share of the frames sent in the last second,
# and at least RETRANSMIT_MIN. aiortc resends every packet a receiver NACKs; on a link that
# audio alone fills, the resends of packets the shaper dropped were 50 of the 51 kbit/s of
# video the sender put on the wire (the 20 kbit/s cell with audio), taking the audio down too.
RETRANSMIT_SHARE = 0.5
KEYFRAME_SHARE = 0.25  # IDRs answering requests, of the rate (see H264Track._keyframe_allowed)
RETRANSMIT_MIN = 2
ESTIMATES_KEPT = 600  # the receiver's estimates kept in the stats (about 10 min of them)


def header_kbps(fps: float) -> float:
    """What the RTP packets' headers cost at ``fps`` frames a second (one packet a frame)."""
    return 8.0 * RTP_PACKET_OVERHEAD_BYTES * fps / 1000.0


def h264_plan(link_kbps: float, ceiling_kbps: float, fps: float) -> tuple[float, int]:
    """(encoder kbit/s, send every N-th frame) for a link carrying ``link_kbps`` (headers
    included): the most frames a second whose coded pictures still get MIN_FRAME_BYTES each
    once their headers are paid, at most ``ceiling_kbps`` (the call's H.264 rate)."""
    budget = LINK_SHARE * max(0.0, link_kbps)
    for every in FRAME_STEPS:
        frames = fps / every
        content = budget - header_kbps(frames)
        if content >= 8.0 * MIN_FRAME_BYTES * frames / 1000.0:
            return min(ceiling_kbps, content), every
    frames = fps / FRAME_STEPS[-1]
    return min(ceiling_kbps, 8.0 * MIN_FRAME_BYTES * frames / 1000.0), FRAME_STEPS[-1]


@dataclass
class H264TrackStats:
    """Counters of an :class:`H264Track`.

    Attributes:
        frames_in: frames given to :meth:`H264Track.push`.
        frames_encoded: frames encoded (and handed to aiortc).
        frames_dropped: raw frames dropped because the queue was full (slow consumer).
        bytes: Annex-B bytes handed to aiortc (before RTP/SRTP overhead).
        keyframes: IDR frames among them.
        frames_thinned: frames not sent because the link carries fewer a second.
        rate_changes: (s since the track started, encoder kbit/s, every N-th frame) per change.
        estimates: (s since the track started, the receiver's estimate in kbit/s), the first
            ESTIMATES_KEPT.
        retransmitted: NACKed packets resent; retransmits_refused: those not resent (over
            the budget, see RETRANSMIT_SHARE).
    """

    frames_in: int = 0
    frames_encoded: int = 0
    frames_dropped: int = 0
    bytes: int = 0
    keyframes: int = 0
    frames_thinned: int = 0
    rate_changes: list[tuple[float, float, int]] = field(default_factory=list)
    estimates: list[tuple[float, float]] = field(default_factory=list)
    retransmitted: int = 0
    retransmits_refused: int = 0


class H264Track(MediaStreamTrack):
    """A WebRTC video track that sends H.264 it encodes itself at a low bitrate.

    The sender loop calls :meth:`push` with RGB frames (never blocks); aiortc's
    ``RTCRtpSender`` calls :meth:`recv`, which encodes the oldest queued frame (in a
    worker thread) and returns an :class:`av.Packet` with ``pts`` in 90 kHz ticks and
    ``time_base`` 1/90000, which aiortc packetizes as is. Raw frames wait in a queue of
    ``queue_size``; when it is full the oldest is dropped and counted, so a slow network
    or a stalled peer never buffers frames without limit. Dropping a raw frame breaks no
    prediction chain (nothing was coded yet).

    Use :func:`follow_receiver_feedback` after ``addTrack`` so a receiver's PLI gives
    an IDR and its bandwidth estimate reaches :meth:`follow_link`: aiortc tells a
    packet-returning track about neither.

    Args:
        size: (width, height) of the pushed frames.
        fps: nominal frame rate (for the rate control).
        bitrate_kbps: target rate in kbit/s.
        queue_size: raw frames held before the oldest is dropped (≥ 1).
        **encoder_options: passed to :class:`H264Encoder` (preset, profile, ...).
    """

    kind = "video"

    def __init__(
        self,
        size: tuple[int, int],
        fps: float = 25.0,
        bitrate_kbps: float = 30.0,
        *,
        queue_size: int = 2,
        **encoder_options: Any,
    ) -> None:
        super().__init__()
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.fps = float(fps)
        self.ceiling_kbps = float(bitrate_kbps)  # the rate asked for: never exceeded
        self._encoder_options = encoder_options
        # Send every N-th pushed frame (follow_link); from the start, as few frames as give
        # each MIN_FRAME_BYTES of the rate asked for. x264 spends its rate per frame at the
        # frame rate it was opened with, so it is opened at the frames actually sent.
        self._every = next((every for every in FRAME_STEPS
                            if self.ceiling_kbps * 1000.0 / 8.0 / (self.fps / every) >= MIN_FRAME_BYTES),
                           FRAME_STEPS[-1])
        self.encoder = H264Encoder(size, self.fps / self._every, bitrate_kbps, **encoder_options)
        self.size = (self.encoder.width, self.encoder.height)
        self._pushed = 0
        self._reopen_kbps: float | None = None  # a new encoder rate, taken at the next encode
        self._changed_at: float | None = None
        self._congested_at: float | None = None
        self._lowered_at: float | None = None
        self._estimate_kbps: float | None = None  # the receiver's latest (REMB)
        self._link_kbps: float | None = None  # what the link carries, headers included; None: not known to limit
        self._sent: deque[tuple[float, int]] = deque()  # (time.monotonic(), bytes) handed to aiortc
        self._last_requested: tuple[float, int] | None = None  # (time.monotonic(), bytes): the newest IDR asked for
        self._resent: deque[float] = deque()  # time.monotonic() of each retransmission in the last second
        self._started = time.monotonic()
        self.queue_size = int(queue_size)
        self.stats = H264TrackStats()
        self._queue: deque[tuple[np.ndarray, float]] = deque()
        self._lock = threading.Lock()  # push may come from another thread than recv
        self._wakeup = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._encode_lock = asyncio.Lock()
        self._pending: deque[av.Packet] = deque()
        self._keyframe_requested = False
        self._first_timestamp: float | None = None
        self._last_pts: int | None = None

    def push(self, frame_rgb: np.ndarray, timestamp: float) -> None:
        """Queue one H×W×3 uint8 RGB frame captured at ``timestamp`` seconds (any clock,
        increasing). Never blocks; drops the oldest queued frame when the queue is full."""
        width, height = self.size
        if frame_rgb.shape != (height, width, 3) or frame_rgb.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 frame of shape {(height, width, 3)}, got {frame_rgb.dtype} {frame_rgb.shape}"
            )
        if self.readyState != "live":
            return
        self._pushed += 1
        if (self._pushed - 1) % self._every:
            self.stats.frames_thinned += 1
            return
        frame = np.array(frame_rgb, copy=True)  # the caller may reuse its buffer
        with self._lock:
            if len(self._queue) >= self.queue_size:
                self._queue.popleft()
                self.stats.frames_dropped += 1
            if self._first_timestamp is None:
                self._first_timestamp = float(timestamp)  # pts 0 = the first pushed frame
            self._queue.append((frame, float(timestamp)))
            self.stats.frames_in += 1
        self._wake()

    def _wake(self) -> None:
        loop = self._loop
        if loop is None:  # recv has not run yet; it checks the queue before waiting
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wakeup.set()
        else:
            try:
                loop.call_soon_threadsafe(self._wakeup.set)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def request_keyframe(self) -> None:
        """Make the next encoded frame an IDR (e.g. after a receiver's PLI)."""
        self._keyframe_requested = True

    def _keyframe_allowed(self) -> bool:
        """Whether a requested IDR may go now: the first request after a quiet while at once,
        and from then on IDRs answering requests take at most KEYFRAME_SHARE of the rate. On a
        slow link every lost picture makes the receiver ask again, and one IDR a second
        answering them was the loss behind the next request (the impairment matrix's 10 kbit/s
        cell: 13 IDRs in 30 s)."""
        if self._last_requested is None:
            return True
        at, nbytes = self._last_requested
        return time.monotonic() - at >= 8.0 * nbytes / (KEYFRAME_SHARE * self.bitrate_kbps * 1000.0)

    @property
    def bitrate_kbps(self) -> float:
        """The encoder's rate now (kbit/s)."""
        return self._reopen_kbps if self._reopen_kbps is not None else self.encoder.bitrate_kbps

    def sent_kbps(self) -> float | None:
        """The payload sent over the last SENT_WINDOW_S (kbit/s); None before that long."""
        now = time.monotonic()
        while self._sent and self._sent[0][0] < now - SENT_WINDOW_S:
            self._sent.popleft()
        if now - self._started < SENT_WINDOW_S:
            return None
        return 8.0 * sum(n for _, n in self._sent) / SENT_WINDOW_S / 1000.0

    def may_retransmit(self) -> bool:
        """Whether a NACKed packet may be resent now (RETRANSMIT_SHARE); counts the answer."""
        now = time.monotonic()
        while self._resent and self._resent[0] < now - 1.0:
            self._resent.popleft()
        sent = sum(1 for t, _ in self._sent if t >= now - 1.0)
        if len(self._resent) >= max(RETRANSMIT_MIN, RETRANSMIT_SHARE * sent):
            self.stats.retransmits_refused += 1
            return False
        self._resent.append(now)
        self.stats.retransmitted += 1
        return True

    @property
    def link_kbps(self) -> float | None:
        """What the link carries for this track, headers included, as its rate control last
        read it (REMB, loss); None while nothing has said the link limits it."""
        return self._link_kbps

    def follow_link(self, estimate_bps: float) -> None:
        """The receiver's bandwidth estimate (RTCP REMB, bit/s of payload). It starts at what
        was sent and rises while packets do not queue, so only an estimate under CONGESTED of
        the payload sent says the link is full: the link is then the estimate plus the
        headers of the frames sent now."""
        if not (isinstance(estimate_bps, (int, float)) and math.isfinite(estimate_bps) and estimate_bps >= 0):
            return
        estimate = estimate_bps / 1000.0
        if len(self.stats.estimates) < ESTIMATES_KEPT:
            self.stats.estimates.append((round(time.monotonic() - self._started, 3), round(estimate, 2)))
        self._estimate_kbps = estimate
        sent = self.sent_kbps()
        if sent is not None and estimate < CONGESTED * sent:
            self._congested(estimate + header_kbps(self.fps / self._every),
                            f"the receiver estimates {estimate:.0f} kbit/s of payload, {sent:.0f} sent")

    def follow_loss(self, fraction_lost: float) -> None:
        """The receiver lost ``fraction_lost`` of the video packets since its last report
        (RTCP): over LOSS_CONGESTED the link is full (a shaper's queue drops), and the link is
        taken as what was sent, headers included, less half the share lost."""
        if not (isinstance(fraction_lost, (int, float)) and 0.0 <= fraction_lost <= 1.0):
            return
        sent = self.sent_kbps()
        if sent is not None and fraction_lost > LOSS_CONGESTED:
            self._congested((sent + header_kbps(self.fps / self._every)) * (1.0 - 0.5 * fraction_lost),
                            f"{100 * fraction_lost:.0f} % of the video lost")

    def _congested(self, link_kbps: float, why: str) -> None:
        now = time.monotonic()
        if self._lowered_at is not None and now - self._lowered_at < SETTLE_S:
            return  # what the receiver reports now still describes the rate before the fall
        self._congested_at = now
        self._link_kbps = link_kbps if self._link_kbps is None else min(self._link_kbps, link_kbps)
        self._apply(why)

    def _probe_up(self) -> None:
        """Below the call's rate, and no congestion for RAISE_INTERVAL_S: try RAISE_FACTOR more
        (each raise costs an IDR, so not more often; a full link answers within a second)."""
        if self._link_kbps is None or (self.bitrate_kbps >= self.ceiling_kbps and self._every == 1):
            return
        now = time.monotonic()
        if now - max(self._congested_at or 0.0, self._changed_at or 0.0) < RAISE_INTERVAL_S:
            return
        # The receiver's estimate, where it is higher, is what it saw cross without queueing.
        estimate = (self._estimate_kbps or 0.0) + header_kbps(self.fps / self._every)
        self._link_kbps = max(self._link_kbps * RAISE_FACTOR, estimate)
        self._apply("no congestion for {:.0f} s".format(RAISE_INTERVAL_S), probing=True)

    def _apply(self, why: str, probing: bool = False) -> None:
        kbps, every = h264_plan(self._link_kbps, self.ceiling_kbps, self.fps)
        current = self.bitrate_kbps
        if abs(kbps - current) <= RATE_CHANGE * current and every == self._every:
            if probing:
                self._changed_at = time.monotonic()  # no change worth an IDR: wait another interval
            return
        now = self._changed_at = time.monotonic()
        if kbps < current or every > self._every:
            self._lowered_at = now
        self._every = every
        # A new rate, or the same one over another frame rate: x264 is reopened either way.
        self._reopen_kbps = kbps if abs(kbps - current) > RATE_CHANGE * current else current
        self.stats.rate_changes.append((round(now - self._started, 3), round(self.bitrate_kbps, 2), every))
        events.info("H.264 follows the link: %.1f kbit/s, %s (%s)", self.bitrate_kbps,
                    "every frame" if every == 1 else f"one frame in {every}", why)

    @property
    def queued(self) -> int:
        """Raw frames waiting to be encoded."""
        with self._lock:
            return len(self._queue)

    def _next_pts(self, timestamp: float) -> int:
        pts = round((timestamp - (self._first_timestamp or 0.0)) * VIDEO_CLOCK_RATE)
        if self._last_pts is not None and pts <= self._last_pts:
            pts = self._last_pts + 1  # equal or backward timestamps: keep pts increasing
        self._last_pts = pts
        return pts

    async def recv(self) -> av.Packet:
        """The next encoded frame as an :class:`av.Packet` (pts in 1/90000 s).

        Raises:
            MediaStreamError: the track was stopped.
        """
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        async with self._encode_lock:
            while True:
                if self.readyState != "live":
                    raise MediaStreamError
                if self._pending:
                    return self._pending.popleft()
                with self._lock:
                    item = self._queue.popleft() if self._queue else None
                    if item is None:
                        self._wakeup.clear()
                if item is None:
                    await self._wakeup.wait()
                    continue
                frame, timestamp = item
                self._probe_up()
                if self._reopen_kbps is not None:  # follow_link changed the rate
                    self.encoder = H264Encoder(self.size, self.fps / self._every, self._reopen_kbps,
                                               **self._encoder_options)
                    self._reopen_kbps = None
                pts = self._next_pts(timestamp)
                keyframe = self._keyframe_requested and self._keyframe_allowed()
                self._keyframe_requested &= not keyframe  # a deferred request stays
                encode = functools.partial(self.encoder.encode_units, frame, pts, keyframe=keyframe)
                units = await asyncio.get_running_loop().run_in_executor(None, encode)
                if keyframe and not any(unit.keyframe for unit in units):
                    self._keyframe_requested = True  # nothing came out: force the next one
                elif keyframe:
                    self._last_requested = (time.monotonic(), sum(len(u.data) for u in units if u.keyframe))
                for unit in units:
                    self._pending.append(self._to_packet(unit))

    def _to_packet(self, unit: H264AccessUnit) -> av.Packet:
        packet = av.Packet(unit.data)
        packet.pts = unit.pts
        packet.dts = unit.pts
        packet.time_base = VIDEO_TIME_BASE
        packet.is_keyframe = unit.keyframe
        self.stats.frames_encoded += 1
        self.stats.bytes += len(unit.data)
        self._sent.append((time.monotonic(), len(unit.data)))
        self.stats.keyframes += int(unit.keyframe)
        return packet

    def stop(self) -> None:
        """End the track: a waiting or later :meth:`recv` raises MediaStreamError."""
        super().stop()
        with self._lock:
            self._queue.clear()
        if self._loop is not None:
            self._wake()
        else:
            self._wakeup.set()


def follow_receiver_feedback(sender: RTCRtpSender, track: H264Track) -> None:
    """Route what the receiver says in RTCP about ``track``'s video to the track, which aiortc
    only tells its own encoder about (a track whose ``recv`` returns Packets hears nothing):

    - a PLI/FIR (aiortc 1.16 sets a flag that only the Frame path of
      ``RTCRtpSender._next_encoded_frame`` reads): :meth:`H264Track.request_keyframe`;
    - a REMB bandwidth estimate: :meth:`H264Track.follow_link`;
    - the loss in its receiver reports: :meth:`H264Track.follow_loss`;
    - and its NACKs are resent only within :meth:`H264Track.may_retransmit`'s budget.

    It wraps the sender's ``_send_keyframe``, ``_handle_rtcp_packet`` and ``_retransmit``
    (aiortc has no public hook for any of them); aiortc still handles every packet itself.
    """
    original = sender._send_keyframe

    def send_keyframe() -> None:
        original()
        track.request_keyframe()

    sender._send_keyframe = send_keyframe  # type: ignore[method-assign]
    # A REMB goes to aiortc's own encoder only (``target_bitrate``); the track reads it here.
    handle_rtcp = sender._handle_rtcp_packet

    async def handle_rtcp_packet(packet: Any) -> None:
        for report in getattr(packet, "reports", None) or ():  # receiver reports (RR, or in an SR)
            if getattr(report, "ssrc", None) == sender._ssrc:
                track.follow_loss(report.fraction_lost / 256.0)
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                pass  # not a REMB (another application message), or a malformed one
            else:
                if sender._ssrc in ssrcs:
                    track.follow_link(float(bitrate))
        await handle_rtcp(packet)

    sender._handle_rtcp_packet = handle_rtcp_packet  # type: ignore[method-assign]
    retransmit = sender._retransmit

    async def retransmit_within_budget(sequence_number: int) -> None:
        if track.may_retransmit():
            await retransmit(sequence_number)

    sender._retransmit = retransmit_within_budget  # type: ignore[method-assign]


# ---------------------------------------------------------------------------- audio


class HeldTrack(MediaStreamTrack):
    """``track``'s frames from when ``ready`` is set; those before are read and dropped.

    Why: aiortc starts the audio RTP sender as soon as DTLS is up, before SCTP has opened the
    call's data channels. On a slow link (10 kbit/s) 12 kbit/s of Opus at ~39 kbit/s on the
    wire then starves the SCTP handshake and the call never connects: the benchmark's 10
    kbit/s cell failed that way. Frames read and dropped meanwhile keep a live source (a
    microphone) from queueing seconds of audio that would play late for the rest of the call.
    """

    def __init__(self, track: MediaStreamTrack, ready: asyncio.Event) -> None:
        super().__init__()
        self.kind = track.kind
        self._track = track
        self._ready = ready
        self.dropped = 0  # frames read before ``ready``

    async def recv(self):
        while True:
            frame = await self._track.recv()
            if self._ready.is_set():
                return frame
            self.dropped += 1

    def stop(self) -> None:
        super().stop()
        self._track.stop()


class PcmAudioTrack(MediaStreamTrack):
    """A WebRTC audio track playing mono 48 kHz PCM in real time.

    Each :meth:`recv` returns a 20 ms :class:`av.AudioFrame` (960 samples, s16, mono,
    pts in 1/48000 s, increasing by 960), paced to the wall clock like aiortc's
    ``AudioStreamTrack``. After the end it plays silence, or starts again with ``loop``.
    aiortc codes the frames to Opus.

    Args:
        pcm: float32 samples in [-1, 1], shape (num_samples,), at 48 kHz.
        loop: repeat the PCM forever.
        paced: wait for the wall clock between frames (False: as fast as asked, for
            offline use and tests).
    """

    kind = "audio"

    def __init__(self, pcm: np.ndarray, loop: bool = False, *, paced: bool = True) -> None:
        super().__init__()
        samples = np.asarray(pcm, dtype=np.float32).reshape(-1)
        self._pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype(np.int16)
        self.loop = loop
        self.paced = paced
        self._pos = 0  # next sample of self._pcm to play
        self._pts = 0
        self._start: float | None = None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], loop: bool = False) -> PcmAudioTrack:
        """Play a file's first audio stream (down-mixed to mono, resampled to 48 kHz).

        Raises:
            MediaError: the file is missing, unreadable, or has no audio stream.
        """
        path = os.fspath(path)
        if not os.path.exists(path):
            raise MediaError(f"{path}: no such file")
        if os.path.isdir(path):
            raise MediaError(f"{path}: is a directory, not a file with audio")
        pcm = decode_pcm_mono48k(path, 0.0, None)
        if pcm is None:
            raise MediaError(f"{path}: no audio stream to play")
        return cls(pcm, loop=loop)

    @property
    def duration(self) -> float:
        """Length of the PCM in seconds (one pass)."""
        return len(self._pcm) / AUDIO_SAMPLE_RATE

    @property
    def finished(self) -> bool:
        """True once every sample was played (never when looping)."""
        return not self.loop and self._pos >= len(self._pcm)

    def _next_chunk(self) -> np.ndarray:
        total = len(self._pcm)
        if total == 0:
            return np.zeros(AUDIO_FRAME_SAMPLES, np.int16)
        parts = []
        needed = AUDIO_FRAME_SAMPLES
        while needed > 0:
            if self._pos >= total:
                if not self.loop:
                    parts.append(np.zeros(needed, np.int16))
                    break
                self._pos = 0
            part = self._pcm[self._pos : self._pos + needed]
            parts.append(part)
            self._pos += len(part)
            needed -= len(part)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    async def recv(self) -> av.AudioFrame:
        """The next 20 ms frame.

        Raises:
            MediaStreamError: the track was stopped.
        """
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.time()
        elif self.paced:
            wait = self._start + self._pts / AUDIO_SAMPLE_RATE - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        chunk = self._next_chunk()
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="s16", layout="mono")
        frame.sample_rate = AUDIO_SAMPLE_RATE
        frame.pts = self._pts
        frame.time_base = _AUDIO_TIME_BASE
        self._pts += AUDIO_FRAME_SAMPLES
        return frame
