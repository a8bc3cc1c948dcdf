"""The receiver's sinks: the call recorder (MP4 with audio) and the window."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import time
from fractions import Fraction

import av
import numpy as np
import pytest
from conftest import require_tool, skip_or_fail_in_ci

from codec.errors import CodecError, MediaError
from receiver.sinks import Mp4Recorder, SinkUnavailableError, consume_audio
from receiver.window import WindowSink

SIZE = (64, 48)
FPS = 25.0


def solid(index: int) -> np.ndarray:
    """A frame whose grey level names it: 20 + 20·index."""
    return np.full((SIZE[1], SIZE[0], 3), 20 + 20 * index, np.uint8)


def which_solid(frame: np.ndarray) -> int:
    return round((float(frame.mean()) - 20) / 20)


def tone_frame(index: int, channels: int = 2, samples: int = 960) -> av.AudioFrame:
    """20 ms of a 1 kHz tone as aiortc's Opus decoder gives it: s16 packed, 48 kHz."""
    t = (np.arange(samples) + index * samples) / 48_000
    mono = (np.sin(2 * np.pi * 1000 * t) * 8000).astype(np.int16)
    data = np.repeat(mono, channels)[None, :]
    frame = av.AudioFrame.from_ndarray(data, format="s16", layout="stereo" if channels == 2 else "mono")
    frame.sample_rate = 48_000
    frame.pts = index * samples
    frame.time_base = Fraction(1, 48_000)
    return frame


def read_back(path) -> tuple[list[np.ndarray], float, np.ndarray, float]:
    """(video frames, video duration s, mono audio samples, audio stream duration s)."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        video_duration = float(video.duration * video.time_base)
    with av.open(str(path)) as container:
        audio = container.streams.audio[0]
        audio_duration = float(audio.duration * audio.time_base)
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    return frames, video_duration, pcm, audio_duration


def block_rms(pcm: np.ndarray, begin_s: float, end_s: float) -> float:
    block = pcm[round(begin_s * 48_000) : round(end_s * 48_000)].astype(np.float64)
    return float(np.sqrt(np.mean(block**2)))


# ---------------------------------------------------------------------------- Mp4Recorder


def test_recorder_places_irregular_frames_on_the_fps_timeline(tmp_path):
    path = tmp_path / "call.mp4"
    recorder = Mp4Recorder(path, FPS, SIZE)
    # (frame index, timestamp): late, repeated, out-of-order and skipped frames
    arrivals = [(0, 0.0), (1, 0.04), (2, 0.05), (3, 0.2), (4, 0.21), (5, 0.19), (6, 0.6), (7, 1.0), (8, 1.96)]
    accepted = [recorder.write(solid(i), t) for i, t in arrivals]
    assert accepted == [True, True, False, True, False, False, True, True, True]
    for k in range(100):  # 2 s of stereo audio with one lost packet at 0.6 s
        if k != 30:
            recorder.add_audio(tone_frame(k))
    assert not path.exists()  # nothing under the final name before close
    stats = recorder.close()
    assert stats.frames_written == 50  # slots 0..49: the last frame at 1.96 s
    assert stats.frames_ignored == 3 and stats.frames_blank == 0
    assert stats.frames_duplicated == 50 - 6
    assert abs(stats.audio_seconds - 2.0) < 1e-9 and not stats.audio_truncated
    assert recorder.close() == stats  # idempotent

    frames, video_duration, pcm, audio_duration = read_back(path)
    assert len(frames) == 50 and frames[0].shape == (SIZE[1], SIZE[0], 3)
    expected = [0, 1, 1, 1, 1, 3] + [3] * 9 + [6] * 10 + [7] * 24 + [8]
    assert [which_solid(f) for f in frames] == expected
    assert abs(video_duration - 2.0) < 0.05
    assert abs(audio_duration - video_duration) <= 0.1
    assert abs(len(pcm) / 48_000 - 2.0) <= 0.1
    tone = block_rms(pcm, 0.2, 0.5)
    assert tone > 2000 / 32768  # the tone is there (AAC decodes to float)
    # the lost packet (0.60–0.62 s) is silence, give or take the AAC delay (≤ 1024 samples)
    gap = min(block_rms(pcm, s, s + 0.005) for s in np.arange(0.58, 0.66, 0.0025))
    assert gap < 0.1 * tone
    assert sorted(os.listdir(tmp_path)) == ["call.mp4"]  # no temporary files left


def test_recorder_lines_audio_up_by_timestamp_and_blanks_before_the_first_frame(tmp_path):
    path = tmp_path / "late.mp4"
    recorder = Mp4Recorder(path, FPS, SIZE, start_time=50.0)
    recorder.write(solid(2), 50.2)  # slots 0..4 are black
    recorder.write(solid(3), 51.0)
    for k in range(25):  # 0.5 s of mono audio whose first sample plays at 50.5
        recorder.add_audio(tone_frame(k, channels=1), timestamp=50.5 if k == 0 else None)
    stats = recorder.close()
    assert stats.frames_blank == 5 and stats.frames_written == 26
    frames, _, pcm, audio_duration = read_back(path)
    assert [which_solid(f) for f in frames[:6]] == [-1] * 5 + [2]  # black, then frame 2
    assert abs(audio_duration - 26 / FPS) <= 0.1
    assert block_rms(pcm, 0.05, 0.4) < 0.01  # before 0.5 s: silence
    assert block_rms(pcm, 0.6, 0.9) > 2000 / 32768  # then the tone


def test_recorder_audio_is_bounded(tmp_path, caplog):
    recorder = Mp4Recorder(tmp_path / "cap.mp4", FPS, SIZE, max_audio_seconds=0.5)
    recorder.write(solid(0), 0.0)
    with caplog.at_level(logging.WARNING, logger="receiver.sinks"):
        for k in range(50):
            recorder.add_audio(tone_frame(k))
    assert recorder.stats.audio_truncated
    assert recorder.stats.audio_seconds == pytest.approx(0.5)
    assert sum("without audio" in r.message for r in caplog.records) == 1
    recorder.write(solid(1), 1.0)
    recorder.close()


def test_recorder_without_audio_writes_video_only(tmp_path):
    path = tmp_path / "silent.mp4"
    with Mp4Recorder(path, FPS, SIZE) as recorder:
        for i in range(5):
            recorder.write(solid(i), i / FPS)
    with av.open(str(path)) as container:
        assert not container.streams.audio
        assert sum(1 for _ in container.decode(video=0)) == 5


def test_failed_close_leaves_nothing_under_the_final_name(tmp_path, monkeypatch):
    path = tmp_path / "broken.mp4"
    recorder = Mp4Recorder(path, FPS, SIZE)
    for i in range(10):
        recorder.write(solid(i % 5), i / FPS)
    recorder.add_audio(tone_frame(0))

    def fail_midway(self, video_path, out_path):
        with open(out_path, "wb") as half:
            half.write(b"\0\0\0\x18ftypmp42 half a file")
        raise MediaError("disk full (simulated)")

    monkeypatch.setattr(Mp4Recorder, "_mux_audio", fail_midway)
    with pytest.raises(MediaError, match="simulated"):
        recorder.close()
    assert not path.exists()
    assert os.listdir(tmp_path) == []  # the temporary files are gone too
    with pytest.raises(MediaError, match="closed"):
        recorder.write(solid(0), 1.0)


def test_recorder_errors_are_typed(tmp_path):
    empty = Mp4Recorder(tmp_path / "empty.mp4", FPS, SIZE)
    with pytest.raises(MediaError, match="no video frames"):
        empty.close()
    assert os.listdir(tmp_path) == []

    recorder = Mp4Recorder(tmp_path / "r.mp4", FPS, SIZE, max_gap_s=10)
    with pytest.raises(ValueError):
        recorder.write(np.zeros((10, 10, 3), np.uint8), 0.0)
    with pytest.raises(ValueError):
        recorder.write(solid(0), float("nan"))
    with pytest.raises(ValueError, match="max_gap_s"):
        recorder.write(solid(0), 1e6)  # e.g. a monotonic clock without start_time
    assert not recorder.write(solid(0), -1.0)  # before the start: ignored
    recorder.write(solid(0), 0.0)
    recorder.close()

    with pytest.raises(MediaError):
        Mp4Recorder(tmp_path / "no-such-dir" / "x.mp4", FPS, SIZE)


def test_consume_audio_reads_until_the_track_ends(tmp_path):
    from aiortc import MediaStreamTrack
    from aiortc.mediastreams import MediaStreamError

    class FiniteTrack(MediaStreamTrack):
        kind = "audio"

        def __init__(self, count: int) -> None:
            super().__init__()
            self.sent = 0
            self.count = count

        async def recv(self) -> av.AudioFrame:
            if self.sent >= self.count:
                raise MediaStreamError
            await asyncio.sleep(0)
            self.sent += 1
            return tone_frame(self.sent - 1)

    recorder = Mp4Recorder(tmp_path / "a.mp4", FPS, SIZE)
    recorder.write(solid(0), 0.0)
    count = asyncio.run(asyncio.wait_for(consume_audio(FiniteTrack(30), recorder, clock=lambda: 0.1), 10))
    assert count == 30
    assert recorder.stats.audio_seconds == pytest.approx(0.1 + 30 * 0.02)  # placed at 0.1 s
    recorder.close()


# ---------------------------------------------------------------------------- WindowSink


def test_window_sink_unavailable_without_display(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    ok, reason = WindowSink.available()
    assert not ok and "DISPLAY" in reason
    with pytest.raises(SinkUnavailableError) as info:
        WindowSink("call")
    assert isinstance(info.value, MediaError) and isinstance(info.value, CodecError)


@pytest.fixture
def xvfb_display(monkeypatch):
    """A private Xvfb server's display, set as $DISPLAY; skips when Xvfb is not installed
    (fails under CI, whose .ci/run installs it)."""
    binary = require_tool("Xvfb", "Xvfb is not installed (apt-get install xvfb): no display for a real window")
    read_fd, write_fd = os.pipe()
    server = subprocess.Popen(
        [binary, "-displayfd", str(write_fd), "-screen", "0", "320x240x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as pipe:  # Xvfb writes its display number when ready
            number = pipe.readline().strip()
        if not number:
            skip_or_fail_in_ci("Xvfb did not start")
        monkeypatch.setenv("DISPLAY", f":{number}")
        yield f":{number}"
    finally:
        server.terminate()
        try:
            server.wait(5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)


def test_window_sink_shows_the_newest_frames(xvfb_display):
    assert WindowSink.available() == (True, "")
    sink = WindowSink("facecodec test")
    try:
        assert not sink.closed
        for i in range(200):  # far faster than the window draws: most are dropped
            assert sink.show(solid(i % 10))
        deadline = time.monotonic() + 5
        while sink.frames_shown + sink.frames_dropped < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sink.frames_shown + sink.frames_dropped == 200
        assert sink.frames_shown >= 1 and sink.frames_dropped >= 1
        shown = sink.frames_shown
        sink.show(solid(1)[:24])  # another size: the window follows
        deadline = time.monotonic() + 5
        while sink.frames_shown == shown and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sink.frames_shown == shown + 1
    finally:
        sink.close()
    assert sink.closed
    assert not sink.show(solid(0))
