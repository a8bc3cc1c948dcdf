"""The call's audio: a file's sound as mono 48 kHz PCM, coded with Opus and decoded back.

- :func:`decode_pcm_mono48k` — a file's first audio stream, down-mixed to **mono** and
  resampled to **48 kHz** (what a WebRTC audio track plays).
- :func:`encode_pcm_opus` / :func:`encode_audio_opus` — that PCM coded with libopus in
  20 ms packets (what a WebRTC audio track carries), as an :class:`AudioTrack`.
- :func:`decode_audio_packets` — an :class:`AudioTrack` back to PCM, aligned with the source.

PyAV is imported lazily inside the functions, so ``codec`` imports without it (the
training machine has no PyAV). Every failure a user can cause is a :class:`MediaError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from codec.errors import MediaError
from codec.media.inputs import check_path, open_input

__all__ = [
    "AUDIO_SAMPLE_RATE",
    "AudioTrack",
    "decode_audio_packets",
    "decode_pcm_mono48k",
    "encode_audio_opus",
    "encode_pcm_opus",
]

AUDIO_SAMPLE_RATE = 48_000  # Opus' native rate; WebRTC audio runs at it
_OPUS_FRAME_SAMPLES = 960  # 20 ms at 48 kHz: the usual VoIP packet duration


@dataclass
class AudioTrack:
    """An Opus-coded audio track.

    Attributes:
        codec: always "opus".
        sample_rate: 48000.
        channels: 1 (mono).
        packets: (pts in samples at ``sample_rate``, Opus packet bytes), 20 ms each; the
            first pts is -pre_skip, as libopus emits them.
        num_samples: samples per channel of the source audio (trims the coder's padding).
        pre_skip: encoder delay in samples to drop from the decoder's output (Opus
            "pre-skip", 312 for libopus).
        bitrate: target bits per second.
    """

    codec: str
    sample_rate: int
    channels: int
    packets: list[tuple[int, bytes]] = field(default_factory=list)
    num_samples: int = 0
    pre_skip: int = 0
    bitrate: int = 24_000

    @property
    def duration(self) -> float:
        """Length of the audio in seconds."""
        return self.num_samples / self.sample_rate

    @property
    def payload_bytes(self) -> int:
        """Sum of the Opus packet sizes (no container or RTP overhead)."""
        return sum(len(data) for _, data in self.packets)


def decode_pcm_mono48k(path: str, start: float, duration: float | None) -> np.ndarray | None:
    """The file's first audio stream as mono float32 at 48 kHz, shape (num_samples,).

    Args:
        path: an existing file (not a directory) FFmpeg reads.
        start: seconds from the file's time 0 (sample 0 of the result).
        duration: seconds to keep; None = to the end.

    Returns:
        The samples, or None when the file has no audio stream.

    Raises:
        MediaError: unreadable file, or its audio does not decode.
    """
    import av

    with open_input(path) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_SAMPLE_RATE)
        chunks: list[np.ndarray] = []
        first_time: float | None = None
        try:
            for frame in container.decode(stream):
                if first_time is None:
                    first_time = float(frame.time) if frame.time is not None else 0.0
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):  # flush the resampler's delay line
                chunks.append(out.to_ndarray().reshape(-1))
        except av.FFmpegError as exc:
            raise MediaError(f"{path}: audio decoding failed: {exc}") from exc
    pcm = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    # time 0 of the result is the file's time 0, as for the video (first_time may be > 0)
    lead = round(max(0.0, first_time or 0.0) * AUDIO_SAMPLE_RATE)
    if lead:
        pcm = np.concatenate([np.zeros(lead, np.float32), pcm])
    begin = max(0, round(start * AUDIO_SAMPLE_RATE))
    stop = None if duration is None else begin + max(0, round(duration * AUDIO_SAMPLE_RATE))
    return pcm[begin:stop]


def encode_pcm_opus(pcm: np.ndarray, bitrate: int = 24_000) -> AudioTrack:
    """Code mono float32 PCM at 48 kHz, shape (num_samples,), with libopus.

    20 ms packets, voip application, constrained VBR at ``bitrate``. The last packet
    is padded with silence; ``num_samples`` and ``pre_skip`` let the decoder trim.
    """
    import av

    pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate = AUDIO_SAMPLE_RATE
    encoder.layout = "mono"
    encoder.format = "flt"
    encoder.bit_rate = int(bitrate)
    encoder.time_base = Fraction(1, AUDIO_SAMPLE_RATE)
    # voip: the speech-tuned mode WebRTC uses; 20 ms frames. Constrained VBR keeps the
    # rate near the target: plain VBR spends freely on speech and overshoots it
    encoder.options = {"application": "voip", "frame_duration": "20", "vbr": "constrained"}
    encoder.open()
    packets: list[tuple[int, bytes]] = []

    def collect(frame: Any) -> None:
        for packet in encoder.encode(frame):
            packets.append((int(packet.pts or 0), bytes(packet)))

    for begin in range(0, len(pcm), _OPUS_FRAME_SAMPLES):
        chunk = pcm[begin : begin + _OPUS_FRAME_SAMPLES]
        if len(chunk) < _OPUS_FRAME_SAMPLES:  # libopus needs whole frames: pad with silence
            chunk = np.pad(chunk, (0, _OPUS_FRAME_SAMPLES - len(chunk)))
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
        frame.sample_rate = AUDIO_SAMPLE_RATE
        frame.pts = begin
        frame.time_base = Fraction(1, AUDIO_SAMPLE_RATE)
        collect(frame)
    collect(None)  # flush
    return AudioTrack(
        codec="opus",
        sample_rate=AUDIO_SAMPLE_RATE,
        channels=1,
        packets=packets,
        num_samples=len(pcm),
        # libopus starts its packets at pts = -pre_skip (312 samples of look-ahead)
        pre_skip=max(0, -packets[0][0]) if packets else 0,
        bitrate=int(bitrate),
    )


def encode_audio_opus(
    path: str | os.PathLike[str],
    start: float = 0.0,
    duration: float | None = None,
    bitrate: int = 24_000,
) -> AudioTrack | None:
    """Decode a file's audio, mix to mono, resample to 48 kHz and code it with Opus.

    Args:
        path: any file FFmpeg reads with an audio stream.
        start: seconds from the file's time 0. :func:`~codec.media.read_frames` counts
            from the first video frame instead; the two agree when the video starts at 0,
            as in every MANIFEST clip checked.
        duration: seconds to keep; None = to the end.
        bitrate: Opus target bits per second (24 kbit/s is good wide-band speech).

    Returns:
        The :class:`AudioTrack`, or None if the file has no audio stream.

    Raises:
        MediaError: missing or unreadable file.
    """
    path = check_path(path)
    if os.path.isdir(path):
        return None
    pcm = decode_pcm_mono48k(path, start, duration)
    if pcm is None:
        return None
    return encode_pcm_opus(pcm, bitrate=bitrate)


def decode_audio_packets(track: AudioTrack) -> np.ndarray:
    """Decode an :class:`AudioTrack` back to PCM.

    Returns:
        float32 array, shape (channels, track.num_samples), at ``track.sample_rate``,
        aligned with the source (the encoder delay is removed, the padding trimmed).

    Raises:
        MediaError: the track is not Opus or a packet does not decode.
    """
    import av

    if track.codec != "opus":
        raise MediaError(f"audio track codec {track.codec!r} is not opus")
    decoder = av.CodecContext.create("opus", "r")
    decoder.sample_rate = track.sample_rate
    decoder.layout = "mono" if track.channels == 1 else "stereo"
    chunks: list[np.ndarray] = []
    try:
        for pts, data in track.packets:
            packet = av.Packet(data)
            packet.pts = pts
            for frame in decoder.decode(packet):
                chunks.append(frame.to_ndarray().reshape(track.channels, -1))
        for frame in decoder.decode(None):
            chunks.append(frame.to_ndarray().reshape(track.channels, -1))
    except av.FFmpegError as exc:
        raise MediaError(f"opus packet failed to decode: {exc}") from exc
    if not chunks:
        return np.zeros((track.channels, track.num_samples), np.float32)
    pcm = np.concatenate(chunks, axis=1).astype(np.float32)
    # without an OpusHead the decoder does not know the pre-skip, so drop it here
    pcm = pcm[:, track.pre_skip : track.pre_skip + track.num_samples]
    if pcm.shape[1] < track.num_samples:
        pcm = np.pad(pcm, ((0, 0), (0, track.num_samples - pcm.shape[1])))
    return pcm
