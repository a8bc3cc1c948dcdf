"""WebRTC media tracks for the sender: the low-rate H.264 video track and PCM audio.

- :class:`H264Track` — an aiortc video track that encodes pushed RGB frames itself (with
  :class:`~codec.media.h264.H264Encoder`) and hands aiortc ready :class:`av.Packet` s.
  aiortc's own H.264 encoder clamps its bitrate to 500 kbit/s – 3 Mbit/s, far above a
  talking-head call's budget; when ``recv()`` returns a Packet, ``RTCRtpSender`` only
  packetizes it (``H264Encoder.pack``: RTP timestamp = packet.pts converted from
  packet.time_base to 90 kHz).
- :func:`forward_keyframe_requests` — aiortc turns an RTCP PLI/FIR into a "force keyframe"
  flag that only its own encoder path reads; a packet track never hears of it. This hooks
  the sender so a PLI reaches :meth:`H264Track.request_keyframe`.
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
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCRtpSender
from aiortc.mediastreams import MediaStreamError

from codec.errors import MediaError
from codec.media import AUDIO_SAMPLE_RATE, decode_pcm_mono48k
from codec.media.h264 import VIDEO_CLOCK_RATE, VIDEO_TIME_BASE, H264AccessUnit, H264Encoder

__all__ = [
    "AUDIO_FRAME_SAMPLES",
    "H264Track",
    "H264TrackStats",
    "PcmAudioTrack",
    "forward_keyframe_requests",
]

logger = logging.getLogger(__name__)

AUDIO_FRAME_SAMPLES = 960  # 20 ms at 48 kHz, aiortc's (and WebRTC's) audio ptime
_AUDIO_TIME_BASE = Fraction(1, AUDIO_SAMPLE_RATE)


# ---------------------------------------------------------------------------- video


@dataclass
class H264TrackStats:
    """Counters of an :class:`H264Track`.

    Attributes:
        frames_in: frames given to :meth:`H264Track.push`.
        frames_encoded: frames encoded (and handed to aiortc).
        frames_dropped: raw frames dropped because the queue was full (slow consumer).
        bytes: Annex-B bytes handed to aiortc (before RTP/SRTP overhead).
        keyframes: IDR frames among them.
    """

    frames_in: int = 0
    frames_encoded: int = 0
    frames_dropped: int = 0
    bytes: int = 0
    keyframes: int = 0


class H264Track(MediaStreamTrack):
    """A WebRTC video track that sends H.264 it encodes itself at a low bitrate.

    The sender loop calls :meth:`push` with RGB frames (never blocks); aiortc's
    ``RTCRtpSender`` calls :meth:`recv`, which encodes the oldest queued frame (in a
    worker thread) and returns an :class:`av.Packet` with ``pts`` in 90 kHz ticks and
    ``time_base`` 1/90000, which aiortc packetizes as is. Raw frames wait in a queue of
    ``queue_size``; when it is full the oldest is dropped and counted, so a slow network
    or a stalled peer never buffers frames without limit. Dropping a raw frame breaks no
    prediction chain (nothing was coded yet).

    Use :func:`forward_keyframe_requests` after ``addTrack`` so a receiver's PLI gives
    an IDR: aiortc does not tell a packet-returning track about it.

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
        self.encoder = H264Encoder(size, fps, bitrate_kbps, **encoder_options)
        self.size = (self.encoder.width, self.encoder.height)
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
                pts = self._next_pts(timestamp)
                keyframe, self._keyframe_requested = self._keyframe_requested, False
                encode = functools.partial(self.encoder.encode_units, frame, pts, keyframe=keyframe)
                units = await asyncio.get_running_loop().run_in_executor(None, encode)
                if keyframe and not any(unit.keyframe for unit in units):
                    self._keyframe_requested = True  # nothing came out: force the next one
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


def forward_keyframe_requests(sender: RTCRtpSender, track: H264Track) -> None:
    """Route the RTCP PLI/FIR that ``sender`` receives to ``track.request_keyframe()``.

    aiortc 1.16 handles a PLI by setting a flag that only its own encoder reads (the
    Frame path of ``RTCRtpSender._next_encoded_frame``); for a track whose ``recv``
    returns Packets the request is lost. This wraps the sender's ``_send_keyframe``
    (called from its RTCP handler) so the track hears it too.
    """
    original = sender._send_keyframe

    def send_keyframe() -> None:
        original()
        track.request_keyframe()

    sender._send_keyframe = send_keyframe  # type: ignore[method-assign]


# ---------------------------------------------------------------------------- audio


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
