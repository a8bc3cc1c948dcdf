"""Low-rate H.264 through libx264 and FFmpeg's decoder: Annex-B access units in and out.

- :func:`split_annexb` — the NAL units of an Annex-B byte stream (the one parser of it).
- :class:`H264Encoder` — libx264 (through PyAV) tuned for a call at tens of kbit/s, one
  frame in, one access unit out; the sender's H.264 track and the demo's side-by-side
  comparison with the neural codec at the same bitrate both use it.
- :class:`H264Decoder` — Annex-B access units back to RGB frames.

Timestamps are in the 90 kHz RTP video clock. PyAV is imported lazily inside the
methods, so ``codec`` imports without it (the training machine has no PyAV). Every
failure a user can cause (an encoder that will not open, undecodable data) is a
:class:`~codec.errors.MediaError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from codec.errors import MediaError

__all__ = [
    "VIDEO_CLOCK_RATE",
    "VIDEO_TIME_BASE",
    "H264AccessUnit",
    "H264Decoder",
    "H264Encoder",
    "split_annexb",
]

VIDEO_CLOCK_RATE = 90_000  # RTP clock of every video payload format (RFC 6184 for H.264)
VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK_RATE)
_NAL_SEI = 6  # nal_unit_type of supplemental enhancement information


def annexb_units(data: bytes) -> list[tuple[int, int, int]]:
    """(start, payload, end) of each NAL unit of an Annex-B byte stream: ``data[start:end]``
    is the unit with its 3- or 4-byte start code (so sizes add up to what was sent),
    ``data[payload:end]`` the unit alone (its first byte holds the NAL type)."""
    starts: list[tuple[int, int]] = []  # (start code position, payload position)
    pos = data.find(b"\x00\x00\x01")
    while pos != -1:
        code_at = pos - 1 if pos > 0 and data[pos - 1] == 0 else pos
        starts.append((code_at, pos + 3))
        pos = data.find(b"\x00\x00\x01", pos + 3)
    units = []
    for i, (code_at, begin) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else len(data)
        if end > begin:
            units.append((code_at, begin, end))
    return units


def split_annexb(data: bytes) -> list[bytes]:
    """The NAL units (without start codes) of an Annex-B byte stream."""
    return [data[begin:end] for _, begin, end in annexb_units(data)]


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
    - one slice, one thread: with zerolatency x264 threads by slices, one per thread, and
      every extra slice adds a header and cuts prediction at its edge, which costs rate
      that a call at tens of kbit/s cannot spare.
    - average bitrate + VBV (maxrate = target, buffer = ``vbv_buffer_s`` of it): the rate
      stays at the target over about a second instead of drifting; without VBV the rate
      control overshoots for seconds after the keyframe.
    - one IDR every ``keyframe_interval_s`` (10 s), no scene-cut I frames; extra IDRs come
      on request (:meth:`request_keyframe`, e.g. after a PLI). SPS/PPS are repeated before
      every IDR, so a receiver that joins late or lost packets can start there.
    - ``preset=veryfast``: the slower presets gain little quality at these rates, hold a
      low target less well (their rate control overshoots it) and cost the sender more
      CPU per frame.
    - ``profile=baseline`` (constrained baseline, what WebRTC peers offer: 42e01f).
    - x264's version SEI (a text banner of hundreds of bytes in the first frame, useless
      to a decoder) is removed when ``strip_sei`` is set; the byte counts then exclude it.

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
        import av  # lazy: no PyAV on the training machine

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
        import av

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
        import av

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
        import av  # lazy: no PyAV on the training machine

        self._context = av.CodecContext.create("h264", "r")
        self._context.thread_count = 1  # frame threads would delay output by a frame each
        self.frames_decoded = 0

    def decode(self, data: bytes) -> list[np.ndarray]:
        """Decode one access unit; returns the frames it completed (usually one).

        Raises:
            MediaError: the data is not decodable H.264.
        """
        import av

        return self._decode(av.Packet(data))

    def flush(self) -> list[np.ndarray]:
        """Frames still held by the decoder at the end of the stream."""
        return self._decode(None)

    def _decode(self, packet: Any) -> list[np.ndarray]:
        import av

        try:
            frames = self._context.decode(packet)
        except av.FFmpegError as exc:
            raise MediaError(f"H.264 decoding failed: {exc}") from exc
        images = [frame.to_ndarray(format="rgb24") for frame in frames]
        self.frames_decoded += len(images)
        return images
