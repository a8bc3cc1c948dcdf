"""Writing video: RGB frames to a file (libx264 by default), with the call's audio muxed in.

:class:`VideoWriter` / :func:`frames_to_video` decode an :class:`AudioTrack`'s Opus
packets and re-encode them to AAC for .mp4/.mov/.m4v (plays everywhere) or to Opus for
.mkv/.webm. PyAV is imported lazily inside the methods, so ``codec`` imports without it
(the training machine has no PyAV). Every failure a user can cause is a :class:`MediaError`
naming the path and the reason.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from fractions import Fraction
from types import TracebackType
from typing import Any, Self

import numpy as np

from codec.errors import MediaError
from codec.media.audio import AUDIO_SAMPLE_RATE, AudioTrack, decode_audio_packets

__all__ = ["VideoWriter", "frames_to_video"]

_AAC_CONTAINERS = (".mp4", ".mov", ".m4v")
_OPUS_CONTAINERS = (".mkv", ".webm")


class VideoWriter:
    """Write RGB frames to a video file, optionally with an audio track.

    Use as a context manager::

        with VideoWriter("out.mp4", fps=25, size=(256, 256), audio=track) as w:
            for frame in frames:   # H×W×3 uint8 RGB
                w.write(frame)

    The audio (decoded from the track's Opus packets) is re-encoded to AAC for
    .mp4/.mov/.m4v or to Opus for .mkv/.webm, interleaved with the video as frames
    arrive, and fitted to the video's length on close (trimmed, or padded with
    silence) so both streams end together.

    Args:
        path: output file; the extension picks the container.
        fps: frame rate (29.97 etc. are kept as exact fractions).
        size: (width, height); must be even for yuv420p.
        audio: optional :class:`AudioTrack`.
        codec: PyAV video encoder name (libx264, libx265, libvpx-vp9, ...).
        crf: constant rate factor for x264/x265/vpx (lower = better).
        pix_fmt: encoder pixel format.
        options: extra encoder options (override the defaults).
        audio_bitrate: bit rate of the re-encoded audio.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float,
        size: tuple[int, int],
        audio: AudioTrack | None = None,
        codec: str = "libx264",
        crf: int = 20,
        pix_fmt: str = "yuv420p",
        options: dict[str, str] | None = None,
        audio_bitrate: int = 64_000,
    ) -> None:
        self.path = os.fspath(path)
        self.fps = float(fps)
        self.width, self.height = int(size[0]), int(size[1])
        if not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if self.width < 2 or self.height < 2:
            raise ValueError(f"size too small: {size}")
        if pix_fmt in ("yuv420p", "nv12") and (self.width % 2 or self.height % 2):
            raise ValueError(f"{pix_fmt} needs an even width and height, got {size}")
        self.audio = audio
        self.codec = codec
        self.crf = crf
        self.pix_fmt = pix_fmt
        self.options = dict(options or {})
        self.audio_bitrate = audio_bitrate
        self.frames_written = 0
        self._container: Any = None
        self._video: Any = None
        self._audio_stream: Any = None
        self._pcm: np.ndarray | None = None  # (channels, samples) float32
        self._audio_pos = 0  # samples of self._pcm already sent to the encoder
        self._open()

    def _open(self) -> None:
        import av

        ext = os.path.splitext(self.path)[1].lower()
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise MediaError(f"{self.path}: directory does not exist")
        try:
            self._container = av.open(self.path, mode="w")
            rate = Fraction(self.fps).limit_denominator(1001)
            video = self._container.add_stream(self.codec, rate=rate)
            video.width, video.height, video.pix_fmt = self.width, self.height, self.pix_fmt
            opts: dict[str, str] = {}
            if self.codec in ("libx264", "libx265", "libvpx", "libvpx-vp9"):
                opts["crf"] = str(self.crf)
            if self.codec.startswith("libvpx"):
                opts["b"] = "0"  # constant quality: crf alone
            opts.update(self.options)
            video.options = opts
            self._video = video
            if self.audio is not None:
                if ext in _AAC_CONTAINERS:
                    audio_codec = "aac"
                elif ext in _OPUS_CONTAINERS:
                    audio_codec = "libopus"
                else:
                    raise MediaError(f"{self.path}: no audio codec chosen for {ext!r} files")
                self._pcm = decode_audio_packets(self.audio)
                layout = "mono" if self.audio.channels == 1 else "stereo"
                stream = self._container.add_stream(audio_codec, rate=self.audio.sample_rate)
                stream.layout = layout
                stream.bit_rate = self.audio_bitrate
                self._audio_stream = stream
        except av.FFmpegError as exc:
            self._abort()
            raise MediaError(f"{self.path}: cannot open for writing: {exc}") from exc
        except MediaError:
            self._abort()
            raise

    def _abort(self) -> None:
        if self._container is not None:
            with contextlib.suppress(Exception):  # already failing; keep the first error
                self._container.close()
            self._container = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abort()

    def write(self, frame_rgb: np.ndarray) -> None:
        """Append one H×W×3 uint8 RGB frame (H, W = size)."""
        import av

        if self._container is None:
            raise MediaError(f"{self.path}: writer is closed")
        if frame_rgb.shape != (self.height, self.width, 3) or frame_rgb.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 frame of shape {(self.height, self.width, 3)}, "
                f"got {frame_rgb.dtype} {frame_rgb.shape}"
            )
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_rgb), format="rgb24")
        frame.pts = self.frames_written
        try:
            self._container.mux(self._video.encode(frame))
            self.frames_written += 1
            # keep audio up to the end of this frame, so the muxer can interleave
            self._write_audio_until(round(self.frames_written / self.fps * self._audio_rate()))
        except av.FFmpegError as exc:
            raise MediaError(f"{self.path}: encoding failed: {exc}") from exc

    def _audio_rate(self) -> int:
        return self.audio.sample_rate if self.audio is not None else AUDIO_SAMPLE_RATE

    def _write_audio_until(self, end_sample: int) -> None:
        """Encode PCM samples [written, end_sample), padding with silence past the track."""
        import av

        if self._audio_stream is None or self._pcm is None or end_sample <= self._audio_pos:
            return
        chunk = self._pcm[:, self._audio_pos : end_sample]
        missing = end_sample - self._audio_pos - chunk.shape[1]
        if missing > 0:
            chunk = np.pad(chunk, ((0, 0), (0, missing)))
        layout = "mono" if chunk.shape[0] == 1 else "stereo"
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(chunk.astype(np.float32)), format="fltp", layout=layout
        )
        frame.sample_rate = self._audio_rate()
        frame.pts = self._audio_pos
        frame.time_base = Fraction(1, self._audio_rate())
        self._container.mux(self._audio_stream.encode(frame))
        self._audio_pos = end_sample

    def close(self) -> None:
        """Flush the encoders and finish the file (idempotent)."""
        import av

        if self._container is None:
            return
        try:
            self._container.mux(self._video.encode(None))
            if self._audio_stream is not None:
                end = round(self.frames_written / self.fps * self._audio_rate())
                self._write_audio_until(end)
                self._container.mux(self._audio_stream.encode(None))
            self._container.close()
        except av.FFmpegError as exc:
            self._abort()
            raise MediaError(f"{self.path}: finishing the file failed: {exc}") from exc
        self._container = None


def frames_to_video(
    path: str | os.PathLike[str],
    frames: Iterable[np.ndarray],
    fps: float = 25.0,
    audio: AudioTrack | None = None,
    **writer_kwargs: Any,
) -> int:
    """Write H×W×3 uint8 RGB frames (size from the first) to ``path``; returns the count."""
    iterator = iter(frames)
    try:
        first = next(iterator)
    except StopIteration:
        raise MediaError(f"{os.fspath(path)}: no frames to write") from None
    height, width = first.shape[:2]
    count = 0
    with VideoWriter(path, fps, (width, height), audio=audio, **writer_kwargs) as writer:
        writer.write(first)
        count += 1
        for frame in iterator:
            writer.write(frame)
            count += 1
    return count
