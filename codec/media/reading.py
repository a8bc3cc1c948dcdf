"""Reading video: what a file holds (:func:`probe`) and its RGB frames at a constant rate
(:func:`read_frames`).

A directory of numbered images reads as a 25 fps sequence. PyAV is imported lazily inside
the functions, so ``codec`` imports without it (the training machine has no PyAV). Every
failure a user can cause is a :class:`MediaError` naming the path and the reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from codec.errors import MediaError
from codec.media.inputs import check_path, open_input

__all__ = ["IMAGE_SEQUENCE_FPS", "MediaInfo", "VideoFrameAt", "probe", "read_frames"]

# A directory of numbered images (some MANIFEST entries) plays at this nominal rate.
IMAGE_SEQUENCE_FPS = 25.0
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# Image-header sanity limit, so a hostile file cannot make us allocate gigabytes.
_MAX_SIDE = 8192


@dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe` found in a file.

    ``num_frames`` is the container's frame count (None if it does not store one, e.g.
    MPEG-PS); ``duration`` is the video stream's (or container's) duration in seconds.
    """

    path: str
    width: int
    height: int
    fps: float
    num_frames: int | None
    duration: float | None
    video_codec: str
    has_audio: bool
    audio_codec: str | None = None
    audio_sample_rate: int | None = None
    audio_channels: int | None = None
    audio_duration: float | None = None


@dataclass(frozen=True)
class VideoFrameAt:
    """One output frame of :func:`read_frames`.

    Attributes:
        index: output frame number (0, 1, 2, ... at the requested rate).
        time: presentation time in seconds from the first frame (index / fps when
            resampling; the source timestamp otherwise).
        image: H×W×3 uint8 RGB.
    """

    index: int
    time: float
    image: np.ndarray


def _image_files(path: str) -> list[str]:
    names = sorted(n for n in os.listdir(path) if n.lower().endswith(_IMAGE_EXTS))
    if not names:
        raise MediaError(f"{path}: directory holds no images")
    return [os.path.join(path, n) for n in names]


def _read_image_rgb(path: str) -> np.ndarray:
    import cv2

    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise MediaError(f"{path}: unreadable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def probe(path: str | os.PathLike[str]) -> MediaInfo:
    """Describe a video file (or a directory of images, read as a 25 fps sequence).

    Raises:
        MediaError: missing, unreadable, or no video stream.
    """
    path = check_path(path)
    if os.path.isdir(path):
        files = _image_files(path)
        first = _read_image_rgb(files[0])
        return MediaInfo(
            path=path,
            width=first.shape[1],
            height=first.shape[0],
            fps=IMAGE_SEQUENCE_FPS,
            num_frames=len(files),
            duration=len(files) / IMAGE_SEQUENCE_FPS,
            video_codec="images",
            has_audio=False,
        )
    import av

    with open_input(path) as container:
        if not container.streams.video:
            raise MediaError(f"{path}: no video stream")
        video = container.streams.video[0]
        rate = video.average_rate or video.guessed_rate or video.base_rate
        fps = float(rate) if rate else 0.0
        duration = _stream_duration(video)
        if duration is None and container.duration is not None:
            duration = container.duration / av.time_base
        audio = container.streams.audio[0] if container.streams.audio else None
        return MediaInfo(
            path=path,
            width=video.codec_context.width,
            height=video.codec_context.height,
            fps=fps,
            num_frames=video.frames or None,
            duration=duration,
            video_codec=video.codec_context.name,
            has_audio=audio is not None,
            audio_codec=audio.codec_context.name if audio is not None else None,
            audio_sample_rate=audio.codec_context.sample_rate if audio is not None else None,
            audio_channels=audio.codec_context.channels if audio is not None else None,
            audio_duration=_stream_duration(audio) if audio is not None else None,
        )


def _stream_duration(stream: Any) -> float | None:
    if stream.duration is None or stream.time_base is None:
        return None
    return float(stream.duration * stream.time_base)


def _to_rgb(frame: Any) -> np.ndarray:
    """Decoded av.VideoFrame → H×W×3 uint8 RGB, upright per its display matrix."""
    image = frame.to_ndarray(format="rgb24")
    rotation = frame.rotation  # counter-clockwise degrees (phone videos store ±90)
    if rotation:
        image = np.ascontiguousarray(np.rot90(image, k=round(rotation / 90)))
    return image


def _decoded_frames(path: str) -> Iterator[tuple[float, np.ndarray]]:
    """(source time in s, RGB image) for every decoded frame, in presentation order."""
    if os.path.isdir(path):
        for i, file in enumerate(_image_files(path)):
            yield i / IMAGE_SEQUENCE_FPS, _read_image_rgb(file)
        return
    import av

    with open_input(path) as container:
        if not container.streams.video:
            raise MediaError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if stream.codec_context.width > _MAX_SIDE or stream.codec_context.height > _MAX_SIDE:
            raise MediaError(f"{path}: video larger than {_MAX_SIDE} px")
        rate = stream.average_rate or stream.guessed_rate
        nominal = float(rate) if rate else 25.0
        count = 0
        try:
            for frame in container.decode(stream):
                # raw streams (.264) have no timestamps: fall back to the nominal rate
                t = float(frame.time) if frame.time is not None else count / nominal
                count += 1
                yield t, _to_rgb(frame)
        except av.FFmpegError as exc:
            raise MediaError(f"{path}: decoding failed after {count} frames: {exc}") from exc
        if count == 0:
            raise MediaError(f"{path}: no decodable video frames")


def read_frames(
    path: str | os.PathLike[str], fps: float | None = 25.0, max_frames: int | None = None
) -> Iterator[VideoFrameAt]:
    """Iterate a video's frames as RGB, resampled to a constant rate by timestamp.

    Resampling works like FFmpeg's fps filter (round to nearest): each source frame
    is placed on the output tick nearest its timestamp (relative to the first frame);
    if several land on one tick the last wins (drop), and a frame is repeated until the
    next one's tick (duplicate). The last frame is held until the source's end (its
    timestamp + one source frame), so N s of video give ≈ N·fps frames at any rate.

    Args:
        path: a video file, or a directory of images (read at 25 fps).
        fps: output rate; None yields every decoded frame with its source time.
        max_frames: stop after this many output frames.

    Yields:
        :class:`VideoFrameAt` with H×W×3 uint8 RGB images.

    Raises:
        MediaError: missing or unreadable file, no video stream, decoding error.
    """
    path = check_path(path)
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if max_frames is not None and max_frames <= 0:
        return
    emitted = 0
    if fps is None:
        for t, image in _decoded_frames(path):
            yield VideoFrameAt(emitted, t, image)
            emitted += 1
            if max_frames is not None and emitted >= max_frames:
                return
        return

    start: float | None = None
    pending: np.ndarray | None = None  # latest source frame, not yet shown past its tick
    prev_t = 0.0
    gaps: list[float] = []  # recent source frame intervals, to estimate the last's length
    for t, image in _decoded_frames(path):
        if start is None:
            start = t
        rel = t - start
        tick = int(np.floor(rel * fps + 0.5))
        while pending is not None and emitted < tick:
            yield VideoFrameAt(emitted, emitted / fps, pending)
            emitted += 1
            if max_frames is not None and emitted >= max_frames:
                return
        if pending is not None and rel > prev_t:
            gaps = (gaps + [rel - prev_t])[-8:]
        pending, prev_t = image, rel
    if pending is None:
        return
    # hold the last frame for one source frame interval (the median of recent ones)
    end = prev_t + (float(np.median(gaps)) if gaps else 1.0 / fps)
    last_tick = int(np.floor(end * fps + 0.5))
    while emitted < max(last_tick, 1):
        yield VideoFrameAt(emitted, emitted / fps, pending)
        emitted += 1
        if max_frames is not None and emitted >= max_frames:
            return
