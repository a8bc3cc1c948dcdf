"""Record the receiver's rebuilt frames and the peer's audio to an MP4 file.

- :class:`Mp4Recorder` — records frames arriving at irregular times onto a constant
  frame-rate timeline, plus the call's received audio, into one MP4. The file appears
  under its final name only when complete.
- :func:`consume_audio` — feeds an aiortc remote audio track into a recorder.

The window sink is :class:`receiver.window.WindowSink`. Every failure a user can cause
is a :class:`~codec.errors.MediaError`; :class:`SinkUnavailableError` (one of them) says
a sink cannot work on this machine, and :func:`check_frame` is the frame check every
sink shares.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from codec.errors import MediaError
from codec.media import AUDIO_SAMPLE_RATE, VideoWriter

__all__ = [
    "Mp4Recorder",
    "RecordingStats",
    "SinkUnavailableError",
    "check_frame",
    "consume_audio",
]

logger = logging.getLogger(__name__)


class SinkUnavailableError(MediaError):
    """A sink cannot work on this machine (no display, no tkinter, ...)."""


def check_frame(frame_rgb: np.ndarray, size: tuple[int, int] | None = None) -> None:
    """Raise ValueError unless ``frame_rgb`` is H×W×3 uint8 (and ``size`` = (W, H) when given)."""
    if frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3 or frame_rgb.dtype != np.uint8:
        raise ValueError(f"expected H×W×3 uint8 RGB, got {frame_rgb.dtype} {frame_rgb.shape}")
    if size is not None and frame_rgb.shape[:2] != (size[1], size[0]):
        height, width = frame_rgb.shape[:2]
        raise ValueError(f"expected a frame of {size[0]}×{size[1]}, got {width}×{height}")


# ---------------------------------------------------------------------------- recording


@dataclass(frozen=True)
class RecordingStats:
    """What an :class:`Mp4Recorder` wrote.

    Attributes:
        frames_written: video frames in the file (slots on the fps timeline).
        frames_duplicated: of those, repeats of the previous frame filling gaps.
        frames_blank: of those, black frames before the first received frame.
        frames_ignored: frames given to ``write`` whose slot was already written.
        audio_seconds: received audio kept (before fitting it to the video's length).
        audio_truncated: audio stopped at ``max_audio_seconds``.
    """

    frames_written: int
    frames_duplicated: int
    frames_blank: int
    frames_ignored: int
    audio_seconds: float
    audio_truncated: bool


class Mp4Recorder:
    """Record a call to an MP4: frames at irregular times, plus the received audio.

    Video: a frame with ``timestamp`` t goes to slot round((t - start_time) · fps) of a
    constant-rate timeline. Gaps are filled by repeating the previous frame (black before
    the first one); a frame whose slot is already written is ignored, so the timeline
    never goes backwards. Frames are encoded as they come (libx264 through
    :class:`codec.media.VideoWriter`), so memory does not grow with the call's length.

    Audio: frames from aiortc's Opus decoder (s16, 48 kHz, mono or stereo, with pts) are
    mixed to mono and kept as 16-bit PCM, placed by pts (lost packets become silence),
    at most ``max_audio_seconds`` (then a warning and no more audio). On :meth:`close`
    the audio is fitted to the video's length and muxed in as AAC: the video stream is
    copied packet by packet from the video-only file, not re-encoded. (VideoWriter's own
    audio path needs the whole track when the file is opened; a call's audio is only
    complete at the end, and holding every raw frame until then would not be bounded.)

    The file is written under a hidden temporary name beside ``path`` and renamed at the
    end, so a crash or a failed close never leaves a half-written file under ``path``.

    :meth:`write` encodes at once (a few ms per frame at 256×256); from an event loop
    that must not stall, call it through ``run_in_executor``.

    Args:
        path: the .mp4 (or .mov/.m4v) to write.
        fps: frame rate of the recording.
        size: (width, height) of the frames, both even; None: the first frame's (a call's
            receiver learns the picture's size from the stream).
        start_time: the time (on the clock of the timestamps) of the recording's start.
        max_audio_seconds: audio kept at most (15 min of mono s16 = 86 MB).
        max_gap_s: a timestamp further than this past the last written slot is taken
            for a clock mistake and raises ValueError instead of writing that many frames.
        crf: libx264 quality of the recording.
        audio_bitrate: AAC bits per second.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float,
        size: tuple[int, int] | None = None,
        *,
        start_time: float = 0.0,
        max_audio_seconds: float = 15 * 60.0,
        max_gap_s: float = 600.0,
        crf: int = 23,
        audio_bitrate: int = 64_000,
    ) -> None:
        self.path = os.fspath(path)
        self.fps = float(fps)
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self._crf = crf
        self.start_time = float(start_time)
        self.max_audio_samples = max(0, round(max_audio_seconds * AUDIO_SAMPLE_RATE))
        self.max_gap_s = float(max_gap_s)
        self.audio_bitrate = int(audio_bitrate)
        directory, name = os.path.split(os.path.abspath(self.path))
        stem, ext = os.path.splitext(name)
        # the extension stays last: it picks the container
        self._video_path = os.path.join(directory, f".{stem}.video-partial{ext}")
        self._partial_path = os.path.join(directory, f".{stem}.partial{ext}")
        self._writer: VideoWriter | None = (None if self.size is None else
                                            VideoWriter(self._video_path, self.fps, self.size, crf=crf))
        self._last_frame: np.ndarray | None = None
        self._frames_written = 0
        self._frames_duplicated = 0
        self._frames_blank = 0
        self._frames_ignored = 0
        self._audio_chunks: list[np.ndarray] = []  # int16 mono pieces, back to back
        self._audio_samples = 0
        self._audio_anchor: tuple[int, int, Fraction] | None = None  # (sample, pts, time_base)
        self._audio_truncated = False
        self._resampler: Any = None
        self._closed = False

    # -------------------------------------------------------------- video

    def write(self, frame_rgb: np.ndarray, timestamp: float) -> bool:
        """Place one H×W×3 uint8 RGB frame shown at ``timestamp`` seconds.

        Returns:
            False if the frame was ignored (its slot was already written or is before
            the start), True otherwise.

        Raises:
            ValueError: wrong frame shape, a non-finite timestamp, or one more than
                ``max_gap_s`` past the last written frame.
            MediaError: the recorder is closed, or encoding failed.
        """
        if self._closed or (self._writer is None and self.size is not None):
            raise MediaError(f"{self.path}: recorder is closed")
        check_frame(frame_rgb, self.size)
        if self._writer is None:  # the first frame sets the size
            self.size = (frame_rgb.shape[1], frame_rgb.shape[0])
            self._writer = VideoWriter(self._video_path, self.fps, self.size, crf=self._crf)
        if not math.isfinite(timestamp):
            raise ValueError(f"timestamp must be finite, got {timestamp}")
        slot = round((timestamp - self.start_time) * self.fps)
        if slot < self._frames_written:
            self._frames_ignored += 1
            return False
        gap = slot - self._frames_written
        if gap > self.max_gap_s * self.fps:
            raise ValueError(
                f"timestamp {timestamp} is {gap / self.fps:.1f} s past the recording's last frame "
                f"(more than max_gap_s={self.max_gap_s}); timestamps count from start_time={self.start_time}"
            )
        try:
            filler = self._last_frame
            if filler is None and gap:
                filler = np.zeros_like(frame_rgb)
                self._frames_blank += gap
            elif gap:
                self._frames_duplicated += gap
            for _ in range(gap):
                self._writer.write(filler)
            self._writer.write(frame_rgb)
        except MediaError:
            self._abort()
            raise
        self._frames_written = slot + 1
        self._last_frame = np.array(frame_rgb, copy=True)
        return True

    # -------------------------------------------------------------- audio

    def add_audio(self, frame: Any, timestamp: float | None = None) -> None:
        """Keep one received :class:`av.AudioFrame` (any format, rate and layout).

        Args:
            frame: the frame; its pts (in its time_base) places it after the first one.
            timestamp: when the frame's first sample plays, on the clock of
                :meth:`write`'s timestamps; used for the first frame only, to line the
                audio up with the video (None: the first frame plays at ``start_time``).
        """
        import av

        if self._closed:
            raise MediaError(f"{self.path}: recorder is closed")
        if self._audio_truncated:
            return
        if self._resampler is None:
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_SAMPLE_RATE)
        pts, time_base = frame.pts, frame.time_base or Fraction(1, frame.sample_rate)
        pcm = np.concatenate(
            [out.to_ndarray().reshape(-1) for out in self._resampler.resample(frame)] or [np.zeros(0, np.int16)]
        ).astype(np.int16)
        if self._audio_anchor is None:
            start = 0.0 if timestamp is None else timestamp - self.start_time
            self._audio_anchor = (round(start * AUDIO_SAMPLE_RATE), int(pts or 0), Fraction(time_base))
        if pts is None:
            position = self._audio_samples  # no timing: play it right after the last one
        else:
            anchor_sample, anchor_pts, anchor_base = self._audio_anchor
            position = anchor_sample + round((pts - anchor_pts) * anchor_base * AUDIO_SAMPLE_RATE)
        if position < self._audio_samples:  # overlaps what we have: keep the first copy
            pcm = pcm[self._audio_samples - position :]
            position = self._audio_samples
        gap = position - self._audio_samples
        room = self.max_audio_samples - self._audio_samples
        if gap + len(pcm) > room:
            logger.warning(
                "%s: audio longer than %.0f s; recording the rest of the call without audio",
                self.path,
                self.max_audio_samples / AUDIO_SAMPLE_RATE,
            )
            self._audio_truncated = True
            gap = min(gap, room)
            pcm = pcm[: max(0, room - gap)]
        if gap > 0:
            self._audio_chunks.append(np.zeros(gap, np.int16))
        if len(pcm):
            self._audio_chunks.append(pcm)
        self._audio_samples += gap + len(pcm)

    # -------------------------------------------------------------- finishing

    @property
    def stats(self) -> RecordingStats:
        """Counters so far (final after :meth:`close`)."""
        return RecordingStats(
            frames_written=self._frames_written,
            frames_duplicated=self._frames_duplicated,
            frames_blank=self._frames_blank,
            frames_ignored=self._frames_ignored,
            audio_seconds=self._audio_samples / AUDIO_SAMPLE_RATE,
            audio_truncated=self._audio_truncated,
        )

    def close(self) -> RecordingStats:
        """Finish the file under its final name and return the counters (idempotent).

        Raises:
            MediaError: nothing was recorded, or writing failed; then no file is left
                under the final name (nor any temporary file).
        """
        if self._closed:
            return self.stats
        try:
            if self._frames_written == 0:
                raise MediaError(f"{self.path}: no video frames were recorded")
            assert self._writer is not None
            self._writer.close()
            self._writer = None
            if self._audio_samples:
                self._mux_audio(self._video_path, self._partial_path)
                os.replace(self._partial_path, self.path)
                os.remove(self._video_path)
            else:
                os.replace(self._video_path, self.path)
        except BaseException:
            self._abort()
            raise
        self._closed = True
        self._audio_chunks = []
        return self.stats

    def _abort(self) -> None:
        """Drop everything written so far; remove the temporary files."""
        self._closed = True
        if self._writer is not None:
            self._writer._abort()  # closes the container without finishing the file
            self._writer = None
        self._audio_chunks = []
        for temporary in (self._video_path, self._partial_path):
            try:
                os.remove(temporary)
            except FileNotFoundError:
                pass

    def _pcm(self) -> np.ndarray:
        """The audio fitted to the video's length: mono float32, shape (1, samples)."""
        total = round(self._frames_written / self.fps * AUDIO_SAMPLE_RATE)
        pcm = np.concatenate(self._audio_chunks) if self._audio_chunks else np.zeros(0, np.int16)
        pcm = pcm[:total]
        if len(pcm) < total:
            pcm = np.pad(pcm, (0, total - len(pcm)))
        return (pcm.astype(np.float32) / 32768.0)[None, :]

    def _mux_audio(self, video_path: str, out_path: str) -> None:
        """Copy the video stream of ``video_path`` and add the audio as AAC."""
        import av

        pcm = self._pcm()
        try:
            with av.open(video_path) as source, av.open(out_path, mode="w") as target:
                video_in = source.streams.video[0]
                video_out = target.add_stream_from_template(video_in)
                audio_out = target.add_stream("aac", rate=AUDIO_SAMPLE_RATE)
                audio_out.layout = "mono"
                audio_out.bit_rate = self.audio_bitrate
                written = 0

                def audio_until(end: int) -> None:
                    nonlocal written
                    # 1 s pieces keep the interleaving close without many tiny frames
                    while written < end:
                        stop = min(end, written + AUDIO_SAMPLE_RATE)
                        chunk = av.AudioFrame.from_ndarray(
                            np.ascontiguousarray(pcm[:, written:stop]), format="fltp", layout="mono"
                        )
                        chunk.sample_rate = AUDIO_SAMPLE_RATE
                        chunk.pts = written
                        chunk.time_base = Fraction(1, AUDIO_SAMPLE_RATE)
                        target.mux(audio_out.encode(chunk))
                        written = stop

                for packet in source.demux(video_in):
                    if packet.dts is None:  # the demuxer's empty end-of-stream packet
                        continue
                    if packet.pts is not None and packet.time_base is not None:
                        audio_until(min(pcm.shape[1], round(packet.pts * packet.time_base * AUDIO_SAMPLE_RATE)))
                    packet.stream = video_out
                    target.mux(packet)
                audio_until(pcm.shape[1])
                target.mux(audio_out.encode(None))
        except av.FFmpegError as exc:
            raise MediaError(f"{self.path}: muxing the audio failed: {exc}") from exc

    def __enter__(self) -> Mp4Recorder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abort()


async def consume_audio(
    track: Any, recorder: Mp4Recorder, clock: Callable[[], float] | None = None
) -> int:
    """Feed an aiortc (remote) audio track into ``recorder`` until the track ends.

    Args:
        track: an aiortc ``MediaStreamTrack`` of kind "audio".
        recorder: where the frames go (:meth:`Mp4Recorder.add_audio`).
        clock: the clock of the recorder's timestamps (e.g. ``time.monotonic``); the
            first frame is placed at ``clock()`` on arrival. None: the audio starts
            with the recording.

    Returns:
        The number of frames consumed.
    """
    from aiortc.mediastreams import MediaStreamError

    count = 0
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return count
        recorder.add_audio(frame, timestamp=clock() if clock is not None and count == 0 else None)
        count += 1
