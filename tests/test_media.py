"""Media I/O: write a synthetic clip with audio, probe it, read it back resampled,
Opus round trip, typed errors; a real clip with audio when ../shared/data exists."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from codec.errors import MediaError
from codec.media import (
    AUDIO_SAMPLE_RATE,
    VideoWriter,
    decode_audio_packets,
    encode_audio_opus,
    encode_pcm_opus,
    frames_to_video,
    probe,
    read_frames,
)

FPS = 25.0
NUM_FRAMES = 50  # 2 s
WIDTH, HEIGHT = 128, 96
TONE_HZ = 440.0


def _frame(index: int) -> np.ndarray:
    """Frame whose flat grey level encodes its index (robust to lossy coding)."""
    frame = np.full((HEIGHT, WIDTH, 3), 20 + 4 * index, dtype=np.uint8)
    frame[10:30, 10 + index : 30 + index] = (255, 0, 0)  # a moving red square
    return frame


def _level(image: np.ndarray) -> int:
    """Index back from a decoded frame's grey level (bottom rows: away from the square)."""
    return int(round((float(image[60:, :, 1].mean()) - 20) / 4))


def _tone(seconds: float) -> np.ndarray:
    t = np.arange(round(seconds * AUDIO_SAMPLE_RATE)) / AUDIO_SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 s 128×96 H.264 + AAC mp4 written through VideoWriter."""
    path = tmp_path_factory.mktemp("media") / "synthetic.mp4"
    track = encode_pcm_opus(_tone(NUM_FRAMES / FPS), bitrate=24_000)
    with VideoWriter(path, FPS, (WIDTH, HEIGHT), audio=track, crf=18) as writer:
        for i in range(NUM_FRAMES):
            writer.write(_frame(i))
    return path


def test_probe_written_clip(clip: Path) -> None:
    info = probe(clip)
    assert (info.width, info.height) == (WIDTH, HEIGHT)
    assert info.fps == pytest.approx(FPS)
    assert info.num_frames == NUM_FRAMES
    assert info.video_codec == "h264"
    assert info.has_audio and info.audio_codec == "aac"
    assert info.audio_sample_rate == AUDIO_SAMPLE_RATE and info.audio_channels == 1
    assert info.duration == pytest.approx(NUM_FRAMES / FPS, abs=0.05)
    assert info.audio_duration is not None
    assert abs(info.audio_duration - info.duration) <= 0.1


def test_read_back_same_rate(clip: Path) -> None:
    frames = list(read_frames(clip, fps=FPS))
    assert len(frames) == NUM_FRAMES
    assert [_level(f.image) for f in frames] == list(range(NUM_FRAMES))
    assert frames[10].time == pytest.approx(0.4)
    assert frames[0].image.shape == (HEIGHT, WIDTH, 3) and frames[0].image.dtype == np.uint8


def test_read_back_resampled(clip: Path) -> None:
    # 25 → 10 fps: output tick k shows the last source frame whose time rounds to k
    slow = list(read_frames(clip, fps=10.0))
    assert len(slow) == 20
    for item in slow:
        source = [i for i in range(NUM_FRAMES) if np.floor(i / FPS * 10 + 0.5) <= item.index]
        assert _level(item.image) == source[-1]
    # 25 → 30 fps: frames are repeated, none skipped, order kept
    fast = list(read_frames(clip, fps=30.0))
    assert len(fast) == 60
    levels = [_level(f.image) for f in fast]
    assert sorted(set(levels)) == list(range(NUM_FRAMES)) and levels == sorted(levels)
    # no resampling, and max_frames
    raw = list(read_frames(clip, fps=None, max_frames=7))
    assert len(raw) == 7 and raw[3].time == pytest.approx(3 / FPS)


def test_opus_round_trip(clip: Path) -> None:
    track = encode_audio_opus(clip, start=0.5, duration=1.0)
    assert track is not None and track.codec == "opus"
    assert track.sample_rate == AUDIO_SAMPLE_RATE and track.channels == 1
    assert track.duration == pytest.approx(1.0)
    assert len(track.packets) >= 50  # 20 ms packets
    assert track.payload_bytes * 8 / track.duration < 64_000
    pcm = decode_audio_packets(track)
    assert pcm.shape == (1, AUDIO_SAMPLE_RATE) and pcm.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(pcm[0]))
    assert abs(np.argmax(spectrum) * AUDIO_SAMPLE_RATE / pcm.shape[1] - TONE_HZ) < 3.0


def test_opus_pcm_alignment() -> None:
    """Decoded audio lines up with the source (the 312-sample pre-skip is removed).

    Opus (SILK in voip mode) does not keep a waveform's phase, so alignment is checked
    on short clicks, not by waveform SNR.
    """
    clicks = np.zeros(AUDIO_SAMPLE_RATE, np.float32)
    for at in (10_000, 30_000):
        clicks[at : at + 48] = 0.8 * np.hanning(48)
    track = encode_pcm_opus(clicks)
    assert track.pre_skip == 312
    decoded = decode_audio_packets(track)[0]
    assert decoded.shape == clicks.shape
    for at in (10_000, 30_000):
        window = decoded[at - 1000 : at + 1048]
        lag = int(np.argmax(np.correlate(window, clicks[at : at + 48], "valid"))) - 1000
        assert abs(lag) <= 24  # within 0.5 ms


def test_no_audio_gives_none(tmp_path: Path) -> None:
    path = tmp_path / "silent.mp4"
    assert frames_to_video(path, (_frame(i) for i in range(5)), fps=FPS) == 5
    assert not probe(path).has_audio
    assert encode_audio_opus(path) is None


def test_mkv_with_opus(tmp_path: Path) -> None:
    path = tmp_path / "clip.mkv"
    track = encode_pcm_opus(_tone(1.0))
    frames_to_video(path, (_frame(i) for i in range(25)), fps=FPS, audio=track)
    info = probe(path)
    assert info.has_audio and info.audio_codec == "opus"
    assert info.duration == pytest.approx(1.0, abs=0.1)


def test_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    with pytest.raises(MediaError, match="no such file"):
        probe(missing)
    with pytest.raises(MediaError, match="nope.mp4"):
        list(read_frames(missing))
    with pytest.raises(MediaError):
        encode_audio_opus(missing)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 10)
    with pytest.raises(MediaError, match="junk.mp4"):
        probe(junk)
    with pytest.raises(MediaError):
        list(read_frames(junk))
    with pytest.raises(MediaError, match="directory does not exist"):
        VideoWriter(tmp_path / "no" / "dir.mp4", FPS, (WIDTH, HEIGHT))
    with pytest.raises(ValueError):
        VideoWriter(tmp_path / "odd.mp4", FPS, (WIDTH + 1, HEIGHT))
    with VideoWriter(tmp_path / "shape.mp4", FPS, (WIDTH, HEIGHT)) as writer:
        with pytest.raises(ValueError):
            writer.write(np.zeros((HEIGHT, WIDTH), np.uint8))
        writer.write(_frame(0))


def test_real_clip_with_audio(shared_data: Path, tmp_path: Path) -> None:
    talking = shared_data / "talking"
    with open(talking / "MANIFEST.tsv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh, delimiter="\t") if r["audio"] == "yes"]
    # a small clip with audio, ≥ 3 s, not at 25 fps (so resampling is exercised)
    rows = [
        r
        for r in rows
        if (talking / r["path"]).is_file()
        and r["fps"] != "25.00"
        and float(r["duration_s"]) >= 3.0
    ]
    if not rows:
        pytest.skip("no clip with audio in MANIFEST")
    row = min(rows, key=lambda r: int(r["bytes"]))
    path = talking / row["path"]
    info = probe(path)
    assert info.has_audio and info.audio_sample_rate

    frames = [f.image for f in read_frames(path, fps=FPS, max_frames=50)]
    expected = min(50, round((info.duration or 0) * FPS))
    assert abs(len(frames) - expected) <= 1
    seconds = len(frames) / FPS
    track = encode_audio_opus(path, duration=seconds)
    assert track is not None and track.duration == pytest.approx(seconds, abs=0.05)

    # write even-sized frames plus the audio, then check both streams are there
    height, width = (s - s % 2 for s in frames[0].shape[:2])
    out = tmp_path / "real.mp4"
    frames_to_video(out, (f[:height, :width] for f in frames), fps=FPS, audio=track)
    written = probe(out)
    assert written.has_audio and written.audio_codec == "aac"
    assert written.duration is not None and written.audio_duration is not None
    assert written.duration == pytest.approx(seconds, abs=0.1)
    assert abs(written.audio_duration - written.duration) <= 0.1


def test_video_file_source(clip: Path, tmp_path: Path) -> None:
    from itertools import islice

    from sender.sources import VideoFileSource

    source = VideoFileSource(clip, fps=FPS)
    assert source.size == (WIDTH, HEIGHT)
    frames = list(source)
    assert len(frames) == NUM_FRAMES and _level(frames[-1]) == NUM_FRAMES - 1
    looped = list(islice(VideoFileSource(clip, fps=FPS, loop=True, max_frames=10), 25))
    assert [_level(f) for f in looped] == [i % 10 for i in range(25)]
    with pytest.raises(MediaError):
        VideoFileSource(tmp_path / "missing.mp4")
