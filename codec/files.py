"""The file helpers behind ``facecodec compress`` / ``decompress``: a video file to our
container (.fvc) and back, with the audio.

``compress`` keeps the input's whole frame (capped at 1280×720) or fits a face crop once, runs the streaming :class:`~codec.api.Encoder` over
every frame and writes the packets (and an Opus track) into a container; ``decompress``
runs the :class:`~codec.api.Decoder` over a container and writes a video file. Each
returns a report of what it cost. PyAV and the face detector are imported inside them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from codec.api import DEFAULT_INTRA_PERIOD, Decoder, DecoderStats, Encoder, RefreshPolicy, stamp_untrained
from codec.bitstream import MotionPacket, is_motion_packet, parse_packet
from codec.errors import MediaError
from codec.keyframe import DEFAULT_KEYFRAME_CODEC, DEFAULT_MAX_FRAME, frame_size_within
from codec.families.base import TalkingHeadModel, ViewControl

log = logging.getLogger(__name__)

__all__ = ["CompressReport", "DecompressReport", "compress", "decompress"]

# The type bytes of motion packets (a frame each); every other packet is a keyframe or a patch.


@dataclass
class CompressReport:
    """What a compressed file costs. Video bits count header + keyframes + patches + motion.

    What a call would send on the wire is estimated from the packet sizes kept here
    (``motion_packet_sizes``, ``message_sizes``) by ``app.wire_estimate``."""

    path: str
    frames: int
    fps: float
    header_bytes: int
    keyframes: int
    keyframe_bytes: int
    motion_bytes: int
    intra_packets: int
    patches: int  # reference patches of the mouth and eyes (codec.reference_patches)
    patch_bytes: int
    audio_bytes: int
    file_bytes: int
    untrained: bool
    crop: tuple[float, float, float] | None  # (cx, cy, size) of the face crop in source pixels; None: whole frame
    encode_seconds: float
    quality: int
    keyframe_reasons: list[tuple[int, str]] = field(default_factory=list)  # (frame, why) of each keyframe
    fallbacks: list[tuple[int, str]] = field(default_factory=list)  # (frame, why) keyframes stopped helping
    motion_packet_sizes: dict[int, int] = field(default_factory=dict)  # bytes -> how many motion packets
    message_sizes: list[int] = field(default_factory=list)  # bytes of each keyframe and patch packet
    size: tuple[int, int] = (0, 0)  # (width, height) of the pictures coded

    @property
    def duration_s(self) -> float:
        return self.frames / self.fps if self.fps else 0.0

    @property
    def motion_bits_per_frame(self) -> float:
        return 8.0 * self.motion_bytes / max(self.frames, 1)

    @property
    def payload_kbps(self) -> float:
        """Video payload rate: header + keyframes + patches + motion, over the clip's duration."""
        bits = 8.0 * (self.header_bytes + self.keyframe_bytes + self.patch_bytes + self.motion_bytes)
        return bits / max(self.duration_s, 1e-9) / 1000.0

    @property
    def motion_kbps(self) -> float:
        return 8.0 * self.motion_bytes / max(self.duration_s, 1e-9) / 1000.0

    def to_dict(self) -> dict:
        out = dict(self.__dict__)
        out.update(duration_s=self.duration_s, motion_bits_per_frame=self.motion_bits_per_frame,
                   payload_kbps=self.payload_kbps, motion_kbps=self.motion_kbps)
        return out

    def summary(self, wire: str | None = None) -> str:
        """The report as text; ``wire``: the on-wire lines (``app.wire_estimate``), shown
        after the payload."""
        lines = [
            (f"{'UNTRAINED MODEL — output is not meaningful. ' if self.untrained else ''}"
             f"{self.path}: {self.frames} frames at {self.fps:g} fps ({self.duration_s:.2f} s), "
             f"quality {self.quality}, {self.size[0]}×{self.size[1]} "
             f"{'whole frame' if self.crop is None else 'face crop'}"),
            f"  header            {self.header_bytes} bytes",
            f"  keyframe          {self.keyframe_bytes} bytes ({self.keyframes} keyframe(s))",
            f"  patches           {self.patch_bytes} bytes ({self.patches} of the mouth and eyes)",
            (f"  motion            {self.motion_bits_per_frame:.1f} bits/frame "
             f"({self.motion_kbps:.2f} kbit/s, {self.intra_packets} intra packets)"),
            f"  video payload     {self.payload_kbps:.2f} kbit/s (header + keyframe + patches + motion)",
            *([wire] if wire else []),
            f"  audio             {self.audio_bytes} bytes"
            + (f" ({8 * self.audio_bytes / max(self.duration_s, 1e-9) / 1000:.1f} kbit/s Opus)"
               if self.audio_bytes else " (none)"),
            f"  file              {self.file_bytes} bytes",
        ]
        lines += [f"  keyframe at {frame:5d}: {why}" for frame, why in self.keyframe_reasons[1:]]
        lines += [f"  fallback at {frame:5d}: {why} (a call would send H.264)" for frame, why in self.fallbacks]
        return "\n".join(lines)


@dataclass
class DecompressReport:
    path: str
    frames: int
    fps: float
    untrained: bool
    decode_seconds: float
    has_audio: bool
    stats: DecoderStats = field(default_factory=DecoderStats)

    def summary(self) -> str:
        per_frame = 1000.0 * self.decode_seconds / max(self.frames, 1)
        return (f"{'UNTRAINED MODEL — output is not meaningful. ' if self.untrained else ''}"
                f"{self.path}: {self.frames} frames at {self.fps:g} fps, "
                f"{per_frame:.1f} ms/frame to decode and render, audio: "
                f"{'yes' if self.has_audio else 'no'}")


def compress(video: Path | str, out_path: Path | str, *, model: TalkingHeadModel,
             quality: int | None = None, intra_period: int = DEFAULT_INTRA_PERIOD,
             fps: float = 25.0, max_frames: int | None = None, keyframe_codec: str = DEFAULT_KEYFRAME_CODEC,
             keyframe_quality: int | None = None, audio: bool = True, patches: bool = True,
             refresh: RefreshPolicy | None = None, references: int | None = None,
             crop: int | None = None, max_size: tuple[int, int] = DEFAULT_MAX_FRAME,
             progress: Callable[[int], None] | None = None) -> CompressReport:
    """Compress a talking-head video file into our container (.fvc).

    By default the picture is the input's whole frame, scaled down to fit ``max_size``
    (width, height; 1280×720) where it is larger; ``decompress`` rebuilds that frame. With
    ``crop`` (a side in pixels, e.g. 256), a square face crop is fitted on the first frames
    and held fixed, and the output is that crop at ``crop`` pixels. A model that renders only
    its own crops (the vid2vid family) codes its crop, and says so in the log. ``refresh``: the sender's
    closed loop (new keyframes when the rebuild drifts; None: one keyframe). A file holds no
    H.264, so where a call would fall back to it the file goes on refreshing within the
    policy's budget; the report lists every refresh and fallback with its reason.
    ``references``: K keyframe slots the closed loop chooses among (codec.reference_memory;
    None: the Encoder's default, 4 with ``refresh``, else 1).
    """
    from codec.bitstream import ContainerWriter
    from codec.facecrop import FIT_FRAMES, FaceCropper
    from codec.media import encode_audio_opus, read_frames

    video, out_path = Path(video), Path(out_path)
    started = time.perf_counter()
    frames = read_frames(video, fps=fps, max_frames=max_frames)
    first: list[np.ndarray] = []
    for item in frames:
        first.append(item.image)
        if len(first) >= FIT_FRAMES:
            break
    if not first:
        raise MediaError(f"{video}: no video frames")
    box = cropper = None
    # A face in the first frames (FaceNotFoundError otherwise), whether or not it is cropped.
    found = FaceCropper(out_size=crop or model.image_size).fit(first)
    if crop is None:
        size = frame_size_within(first[0].shape[1], first[0].shape[0], max_size)
        try:
            model = model.at_size(*size, whole_frame=True)
        except ValueError as error:
            log.info("coding a %d-px face crop, not the whole frame: %s", model.image_size, error)
            crop = model.image_size
    if crop is not None:
        model = model.at_size(crop, crop)
        cropper = FaceCropper(out_size=crop)
        box = found
    encoder = Encoder(model, quality=quality, intra_period=intra_period,
                      keyframe_codec=keyframe_codec, keyframe_quality=keyframe_quality,
                      frame_rate=fps, patches=patches, refresh=refresh, references=references)
    header = encoder.header()
    count = 0
    audio_bytes = 0
    motion_sizes: dict[int, int] = {}
    message_sizes: list[int] = []
    # Write beside the target and rename at the end, so a failure never leaves a half file
    # under the requested name.
    partial = out_path.with_name(out_path.name + ".partial")

    def encode_one(writer: ContainerWriter, image: np.ndarray) -> None:
        nonlocal count
        picture = image if box is None else box.crop(image, cropper.out_size)
        for packet in encoder.encode(picture, count / fps):
            writer.write_video_packet(packet)
            if is_motion_packet(packet):
                motion_sizes[len(packet)] = motion_sizes.get(len(packet), 0) + 1
            else:
                message_sizes.append(len(packet))
        count += 1
        if progress is not None:
            progress(count)

    try:
        with open(partial, "wb") as f:
            writer = ContainerWriter(f, encoder.stream_header())
            for image in first:
                encode_one(writer, image)
            for item in frames:
                encode_one(writer, item.image)
            if audio:
                track = encode_audio_opus(video, duration=count / fps)
                if track is not None:
                    audio_bytes = write_audio_track(writer, track)
            writer.close()
        partial.replace(out_path)
    finally:
        partial.unlink(missing_ok=True)
    stats = encoder.stats
    return CompressReport(
        path=str(out_path), frames=count, fps=fps, header_bytes=len(header),
        keyframes=stats.keyframes, keyframe_bytes=stats.keyframe_bytes,
        motion_bytes=stats.motion_bytes, intra_packets=stats.intra_packets,
        patches=stats.patches, patch_bytes=stats.patch_bytes,
        audio_bytes=audio_bytes, file_bytes=out_path.stat().st_size,
        untrained=model.untrained, crop=None if box is None else (box.cx, box.cy, box.size),
        size=model.frame_size,
        encode_seconds=time.perf_counter() - started, quality=encoder.quality,
        keyframe_reasons=list(stats.keyframe_reasons), fallbacks=list(stats.fallbacks),
        motion_packet_sizes=dict(sorted(motion_sizes.items())), message_sizes=message_sizes)


def decompress(path: Path | str, out_video: Path | str, *, model: TalkingHeadModel | None = None,
               untrained: bool = False, weights: Path | str | None = None,
               view: ViewControl | None = None, batch_size: int = 4,
               device: str = "cpu", seed: int = 0, refiner: bool = True, mark_untrained: bool = True,
               progress: Callable[[int, int], None] | None = None) -> DecompressReport:
    """Decode a container (.fvc) into a video file, with its audio when it has any.

    Without ``model``, the model the stream's header names is resolved with ``untrained``,
    ``weights``, ``seed``, ``device`` and ``refiner`` (False: a landmark model's plain warp,
    the same stream rendered faster). ``progress(frames_done, frames_total)`` is called
    after every written frame."""
    from codec.bitstream import read_container
    from codec.media import VideoWriter

    path, out_video = Path(path), Path(out_video)
    started = time.perf_counter()
    with open(path, "rb") as f:
        container = read_container(f)
    decoder = Decoder.from_header(container.header, untrained=untrained, weights=weights,
                                  model=model, seed=seed, device=device, refiner=refiner)
    if view is not None:
        decoder.view = view
    header = container.header
    fps = _stream_fps(container)
    size = (header.width, header.height)
    count = 0
    # Frames to expect: one per motion packet (its first byte; no need to parse them twice).
    total = sum(1 for data in container.video_packets if is_motion_packet(data))
    track = read_audio_track(container)
    with VideoWriter(out_video, fps=fps, size=size, audio=track) as writer:
        for frame in decoder.decode_stream(container.video_packets, batch_size=batch_size):
            image = stamp_untrained(frame.image) if frame.untrained and mark_untrained else frame.image
            writer.write(image)
            count += 1
            if progress is not None:
                progress(count, total)
    return DecompressReport(path=str(out_video), frames=count, fps=fps, untrained=decoder.untrained,
                            decode_seconds=time.perf_counter() - started,
                            has_audio=track is not None, stats=decoder.stats)


def write_audio_track(writer, track) -> int:
    """Store an Opus AudioTrack in a container; returns its payload bytes.

    libopus' first packet starts at pts = -pre_skip; the container counts pts from the
    coded stream's first sample, so it shifts them by pre_skip (never negative)."""
    from codec.bitstream import AudioHeader

    writer.write_audio_header(AudioHeader(track.codec, track.sample_rate, track.channels,
                                          pre_skip=track.pre_skip, num_samples=track.num_samples))
    for pts, data in track.packets:
        writer.write_audio_packet(pts + track.pre_skip, data)
    return track.payload_bytes


def read_audio_track(container):
    """The container's audio as an AudioTrack for codec.media (None when it has none)."""
    from codec.media import AudioTrack

    header = container.audio_header
    if header is None:
        return None
    return AudioTrack(codec=header.codec, sample_rate=header.sample_rate, channels=header.channels,
                      packets=[(p.pts - header.pre_skip, p.data) for p in container.audio_packets],
                      num_samples=header.num_samples, pre_skip=header.pre_skip)


def _stream_fps(container) -> float:
    """The header's frame rate; else from the motion timestamps (median spacing); else 25."""
    if container.header.frame_rate > 0:
        return container.header.frame_rate
    stamps = []  # (no frame rate: every motion packet has the extended form, with its timestamp)
    for data in container.video_packets:
        packet = parse_packet(data, container.header)
        if isinstance(packet, MotionPacket):
            stamps.append(packet.timestamp)
    if len(stamps) < 2:
        return 25.0
    spacing = float(np.median(np.diff(stamps)))
    return container.header.timebase / spacing if spacing > 0 else 25.0
