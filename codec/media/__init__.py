"""Video and audio file I/O through PyAV (FFmpeg): the one home of the project's media I/O.

- :mod:`codec.media.reading` — :func:`probe` (what a file holds) and :func:`read_frames`
  (RGB frames resampled to a constant rate by timestamp).
- :mod:`codec.media.audio` — the call's audio track: :func:`decode_pcm_mono48k`,
  :func:`encode_pcm_opus` / :func:`encode_audio_opus` (mono, 48 kHz, libopus in 20 ms
  packets) and :func:`decode_audio_packets`.
- :mod:`codec.media.writing` — :class:`VideoWriter` / :func:`frames_to_video`: RGB frames
  (libx264 by default) with an :class:`AudioTrack` muxed in.
- :mod:`codec.media.h264` — low-rate H.264 encoder and decoder and the Annex-B parser
  (import them from there).
- :mod:`codec.media.inputs` — the path check and input opening the readers share.

PyAV is imported lazily inside the functions, so ``import codec.media`` works without it
(the training machine has no PyAV). Every failure a user can cause is a
:class:`~codec.errors.MediaError` naming the path and the reason.
"""

from __future__ import annotations

from codec.media.audio import (
    AUDIO_SAMPLE_RATE,
    AudioTrack,
    decode_audio_packets,
    decode_pcm_mono48k,
    encode_audio_opus,
    encode_pcm_opus,
)
from codec.media.reading import IMAGE_SEQUENCE_FPS, MediaInfo, VideoFrameAt, probe, read_frames
from codec.media.writing import VideoWriter, frames_to_video

__all__ = [
    "AUDIO_SAMPLE_RATE",
    "IMAGE_SEQUENCE_FPS",
    "AudioTrack",
    "MediaInfo",
    "VideoFrameAt",
    "VideoWriter",
    "decode_audio_packets",
    "decode_pcm_mono48k",
    "encode_audio_opus",
    "encode_pcm_opus",
    "frames_to_video",
    "probe",
    "read_frames",
]
