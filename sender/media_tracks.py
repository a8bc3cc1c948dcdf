"""WebRTC media tracks for the sender: low-rate H.264 video, PCM audio, the microphone.

- :class:`H264Encoder` / :class:`H264Decoder` — libx264 (through PyAV) tuned for a call at
  tens of kbit/s, and its decoder, usable without WebRTC (e.g. a side-by-side comparison
  with the neural codec at the same bitrate).
- :class:`H264Track` — an aiortc video track that encodes pushed RGB frames itself and
  hands aiortc ready :class:`av.Packet` s. aiortc's own H.264 encoder clamps its bitrate
  to 500 kbit/s – 3 Mbit/s, far above a talking-head call's budget; when ``recv()``
  returns a Packet, ``RTCRtpSender`` only packetizes it (``H264Encoder.pack``: RTP
  timestamp = packet.pts converted from packet.time_base to 90 kHz).
- :func:`forward_keyframe_requests` — aiortc turns an RTCP PLI/FIR into a "force keyframe"
  flag that only its own encoder path reads; a packet track never hears of it. This hooks
  the sender so a PLI reaches :meth:`H264Track.request_keyframe`.
- :class:`PcmAudioTrack` — mono 48 kHz PCM played as 20 ms s16 frames in real time
  (aiortc codes them to Opus).
- :func:`microphone_track` — the default microphone through PulseAudio or ALSA.

Every failure a user can cause (no microphone, no audio in a file, an encoder that will
not open) is a :class:`~codec.errors.MediaError`.
"""

from __future__ import annotations

import asyncio
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
from codec.media import AUDIO_SAMPLE_RATE, _decode_pcm_mono48k

__all__ = [
    "AUDIO_FRAME_SAMPLES",
    "VIDEO_CLOCK_RATE",
    "VIDEO_TIME_BASE",
    "H264AccessUnit",
    "H264Decoder",
    "H264Encoder",
    "H264Track",
    "H264TrackStats",
    "PcmAudioTrack",
    "forward_keyframe_requests",
    "microphone_track",
    "split_annexb",
]

logger = logging.getLogger(__name__)

VIDEO_CLOCK_RATE = 90_000  # RTP clock of every video payload format (RFC 6184 for H.264)
VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK_RATE)
AUDIO_FRAME_SAMPLES = 960  # 20 ms at 48 kHz, aiortc's (and WebRTC's) audio ptime
_AUDIO_TIME_BASE = Fraction(1, AUDIO_SAMPLE_RATE)
_NAL_SEI = 6


# ---------------------------------------------------------------------------- H.264


def split_annexb(data: bytes) -> list[bytes]:
    """The NAL units (without start codes) of an Annex-B byte stream."""
    starts: list[tuple[int, int]] = []  # (start code position, payload position)
    pos = data.find(b"\x00\x00\x01")
    while pos != -1:
        code_at = pos - 1 if pos > 0 and data[pos - 1] == 0 else pos
        starts.append((code_at, pos + 3))
        pos = data.find(b"\x00\x00\x01", pos + 3)
    units = []
    for i, (_, begin) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else len(data)
        if end > begin:
            units.append(data[begin:end])
    return units


@dataclass(frozen=True)
class H264AccessUnit:
    """One coded frame from :class:`H264Encoder`.

    Attributes:
        data: Annex-B bytes (start codes included); an IDR carries SPS + PPS before it.
        pts: presentation time in the encoder's 90 kHz time base.
        keyframe: True for an IDR picture (decodable on its own).
    """

    data: bytes
    pts: int
    keyframe: bool


class H264Encoder:
    """libx264 for a video call at a few tens of kbit/s, one frame in → one frame out.

    Settings (why):

    - ``tune=zerolatency``, no B-frames: every frame leaves the encoder at once.
    - one slice, one thread: with zerolatency every extra thread adds a slice and costs
      rate (see DESIGN.md, "Measuring").
    - average bitrate + VBV (maxrate = target, buffer = ``vbv_buffer_s`` of it): the rate
      stays at the target over about a second instead of drifting; without VBV the rate
      control overshoots for seconds after the keyframe.
    - one IDR every ``keyframe_interval_s`` (10 s), no scene-cut I frames; extra IDRs come
      on request (:meth:`request_keyframe`, e.g. after a PLI). SPS/PPS are repeated before
      every IDR, so a receiver that joins late or lost packets can start there.
    - ``preset=veryfast``: measured at 256×256, 25 fps on the default clip, "medium" gave
      +0.3 dB at 30 kbit/s but overshot 10 kbit/s by 35% (13.6 kbit/s, 14 dB PSNR);
      veryfast held 9.9 kbit/s at 16.6 dB and is ~30% faster.
    - ``profile=baseline`` (constrained baseline, what WebRTC peers offer: 42e01f).
    - x264's version SEI (~675 bytes in the first frame, useless to a decoder) is removed
      when ``strip_sei`` is set; the byte counts then exclude it.

    Args:
        size: (width, height) of the frames, both even.
        fps: nominal frame rate (the rate control spends bitrate / fps per frame).
        bitrate_kbps: target rate in kbit/s.
        preset: x264 preset.
        profile: H.264 profile ("baseline", "main", "high").
        keyframe_interval_s: seconds between periodic IDRs.
        vbv_buffer_s: VBV buffer size in seconds of the target rate.
        strip_sei: drop SEI NAL units from the output.

    Raises:
        ValueError: bad size, fps or bitrate.
        MediaError: libx264 refused the settings.
    """

    def __init__(
        self,
        size: tuple[int, int],
        fps: float = 25.0,
        bitrate_kbps: float = 30.0,
        *,
        preset: str = "veryfast",
        profile: str = "baseline",
        keyframe_interval_s: float = 10.0,
        vbv_buffer_s: float = 1.0,
        strip_sei: bool = True,
    ) -> None:
        self.width, self.height = int(size[0]), int(size[1])
        if self.width < 16 or self.height < 16 or self.width % 2 or self.height % 2:
            raise ValueError(f"size must be even and at least 16×16, got {size}")
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if not bitrate_kbps > 0:
            raise ValueError(f"bitrate_kbps must be > 0, got {bitrate_kbps}")
        self.fps = float(fps)
        self.bitrate_kbps = float(bitrate_kbps)
        self.preset = preset
        self.profile = profile
        self.keyframe_interval_s = float(keyframe_interval_s)
        self.vbv_buffer_s = float(vbv_buffer_s)
        self.strip_sei = strip_sei
        self._keyframe_requested = False
        self._last_pts: int | None = None
        self._context = self._open()

    def _open(self) -> Any:
        context = av.CodecContext.create("libx264", "w")
        context.width, context.height = self.width, self.height
        context.pix_fmt = "yuv420p"
        context.time_base = VIDEO_TIME_BASE
        context.framerate = Fraction(self.fps).limit_denominator(1001)
        context.bit_rate = round(self.bitrate_kbps * 1000)
        context.thread_count = 1
        rate = max(1, round(self.bitrate_kbps))
        keyint = max(1, round(self.keyframe_interval_s * self.fps))
        params = {
            "keyint": keyint,
            "min-keyint": keyint,
            "scenecut": 0,
            "bframes": 0,
            "threads": 1,
            "sliced-threads": 0,
            "repeat-headers": 1,
            "vbv-maxrate": rate,
            "vbv-bufsize": max(1, round(rate * self.vbv_buffer_s)),
        }
        context.options = {
            "preset": self.preset,
            "tune": "zerolatency",
            "profile": self.profile,
            "forced-idr": "1",  # a forced I frame is an IDR, not a recovery point
            "x264-params": ":".join(f"{k}={v}" for k, v in params.items()),
        }
        try:
            context.open()
        except (av.FFmpegError, ValueError) as exc:
            raise MediaError(f"libx264 refused the settings {context.options}: {exc}") from exc
        return context

    def request_keyframe(self) -> None:
        """Make the next encoded frame an IDR."""
        self._keyframe_requested = True

    def encode_units(
        self, frame_rgb: np.ndarray, pts: int | None = None, *, keyframe: bool = False
    ) -> list[H264AccessUnit]:
        """Encode one H×W×3 uint8 RGB frame.

        Args:
            frame_rgb: the frame; H, W = size.
            pts: presentation time in 90 kHz ticks, strictly increasing; None = the
                previous pts + one frame at ``fps`` (0 for the first frame).
            keyframe: force an IDR (as does a pending :meth:`request_keyframe`).

        Returns:
            The coded frames that came out (one per input with zerolatency).
        """
        if frame_rgb.shape != (self.height, self.width, 3) or frame_rgb.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 frame of shape {(self.height, self.width, 3)}, "
                f"got {frame_rgb.dtype} {frame_rgb.shape}"
            )
        if pts is None:
            pts = 0 if self._last_pts is None else self._last_pts + round(VIDEO_CLOCK_RATE / self.fps)
        elif self._last_pts is not None and pts <= self._last_pts:
            raise ValueError(f"pts must increase: {pts} after {self._last_pts}")
        self._last_pts = int(pts)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_rgb), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = int(pts)
        frame.time_base = VIDEO_TIME_BASE
        force = keyframe or self._keyframe_requested
        self._keyframe_requested = False
        # NONE lets x264 decide; I (with forced-idr) makes an IDR
        frame.pict_type = av.video.frame.PictureType.I if force else av.video.frame.PictureType.NONE
        return self._collect(frame)

    def encode(self, frame_rgb: np.ndarray, pts: int | None = None, *, keyframe: bool = False) -> list[bytes]:
        """Like :meth:`encode_units`, returning only the Annex-B bytes of each frame."""
        return [unit.data for unit in self.encode_units(frame_rgb, pts, keyframe=keyframe)]

    def flush(self) -> list[H264AccessUnit]:
        """Drain the encoder (nothing is pending with zerolatency; kept for completeness)."""
        return self._collect(None)

    def _collect(self, frame: Any) -> list[H264AccessUnit]:
        try:
            packets = self._context.encode(frame)
        except av.FFmpegError as exc:
            raise MediaError(f"libx264 encoding failed: {exc}") from exc
        units = []
        for packet in packets:
            data = bytes(packet)
            if self.strip_sei:
                data = b"".join(
                    b"\x00\x00\x00\x01" + unit for unit in split_annexb(data) if unit[0] & 0x1F != _NAL_SEI
                )
            if data:
                pts = int(packet.pts) if packet.pts is not None else (self._last_pts or 0)
                units.append(H264AccessUnit(data, pts, bool(packet.is_keyframe)))
        return units


class H264Decoder:
    """FFmpeg's H.264 decoder: Annex-B access units in, H×W×3 uint8 RGB frames out."""

    def __init__(self) -> None:
        self._context = av.CodecContext.create("h264", "r")
        self._context.thread_count = 1  # frame threads would delay output by a frame each
        self.frames_decoded = 0

    def decode(self, data: bytes) -> list[np.ndarray]:
        """Decode one access unit; returns the frames it completed (usually one).

        Raises:
            MediaError: the data is not decodable H.264.
        """
        return self._decode(av.Packet(data))

    def flush(self) -> list[np.ndarray]:
        """Frames still held by the decoder at the end of the stream."""
        return self._decode(None)

    def _decode(self, packet: Any) -> list[np.ndarray]:
        try:
            frames = self._context.decode(packet)
        except av.FFmpegError as exc:
            raise MediaError(f"H.264 decoding failed: {exc}") from exc
        images = [frame.to_ndarray(format="rgb24") for frame in frames]
        self.frames_decoded += len(images)
        return images


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
                units = await asyncio.get_running_loop().run_in_executor(
                    None, lambda: self.encoder.encode_units(frame, pts, keyframe=keyframe)
                )
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
        pcm = _decode_pcm_mono48k(path, 0.0, None)
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


def microphone_track(device: str | None = None) -> MediaStreamTrack:
    """The microphone as an aiortc audio track (aiortc's ``MediaPlayer``).

    Args:
        device: None tries PulseAudio's "default" source, then ALSA's "default" device.
            "pulse:NAME" or "alsa:NAME" picks the backend; a bare name (e.g. "hw:1,0")
            is tried with PulseAudio, then ALSA.

    Raises:
        MediaError: no backend in this FFmpeg build, or no device could be opened
            (the message lists every attempt).
    """
    from aiortc.contrib.media import MediaPlayer

    if device is not None and device.split(":", 1)[0] in ("pulse", "alsa") and ":" in device:
        backend, name = device.split(":", 1)
        attempts = [(backend, name)]
    else:
        name = device or "default"
        attempts = [("pulse", name), ("alsa", name)]
    failures = []
    for backend, name in attempts:
        if backend not in av.formats_available:
            failures.append(f"{backend}: not in this FFmpeg build")
            continue
        try:
            player = MediaPlayer(name, format=backend, options={"channels": "1", "sample_rate": "48000"})
        except (av.FFmpegError, OSError, ValueError) as exc:
            failures.append(f"{backend} {name!r}: {exc}")
            continue
        if player.audio is None:
            failures.append(f"{backend} {name!r}: opened, but it has no audio stream")
            continue
        return player.audio
    raise MediaError("no microphone available (" + "; ".join(failures) + ")")
