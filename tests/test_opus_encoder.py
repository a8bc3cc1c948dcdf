"""The call's Opus encoder (rtc.opus_encoder): its packets, their RTP timestamps across a
change of packet length, and what a peer's decoder (aiortc's) makes of them."""

from __future__ import annotations

import av
import numpy as np
import pytest
from aiortc.codecs.opus import OpusDecoder
from aiortc.jitterbuffer import JitterFrame

from rtc.opus_encoder import LinkOpusEncoder

RATE = 48_000
FRAME = 960  # what the call's tracks give: 20 ms of mono s16


def _tone(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def _frames(pcm: np.ndarray):
    for start in range(0, len(pcm) - FRAME + 1, FRAME):
        frame = av.AudioFrame.from_ndarray(pcm[None, start:start + FRAME], format="s16", layout="mono")
        frame.sample_rate = RATE
        yield frame


def _code(encoder: LinkOpusEncoder, pcm: np.ndarray, switch: dict[int, int] | None = None):
    """(timestamp, payload) of every packet, switching packet length before frame i as asked."""
    out = []
    for i, frame in enumerate(_frames(pcm)):
        if switch and i in switch:
            encoder.set_packet_ms(switch[i])
        payloads, timestamp = encoder.encode(frame)
        assert len(payloads) <= 1  # 20 ms in, at most one packet out: one RTP timestamp
        out += [(timestamp, p) for p in payloads]
    return out


def _decode(packets) -> tuple[list[int], np.ndarray]:
    decoder = OpusDecoder()
    sizes, pcm = [], []
    for timestamp, payload in packets:
        for frame in decoder.decode(JitterFrame(data=payload, timestamp=timestamp)):
            sizes.append(frame.samples)
            pcm.append(frame.to_ndarray().reshape(-1, 2)[:, 0])
    return sizes, np.concatenate(pcm)


def _silence() -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(np.zeros((1, FRAME), np.int16), format="s16", layout="mono")
    frame.sample_rate = RATE
    return frame


def _peak_hz(pcm: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / RATE)[np.argmax(spectrum)])


@pytest.mark.parametrize("packet_ms", [20, 40, 60])
def test_packets_last_what_was_asked_and_carry_the_speech_at_its_rate(packet_ms):
    packets = _code(LinkOpusEncoder(12, packet_ms), _tone(2.4))
    step = RATE * packet_ms // 1000
    assert [t for t, _ in packets] == [i * step for i in range(len(packets))]
    assert len(packets) == 2400 // packet_ms
    kbps = 8 * sum(len(p) for _, p in packets) / 2.4 / 1000
    assert 6 < kbps < 18  # Opus at 12 kbit/s, VBR
    sizes, pcm = _decode(packets)
    assert set(sizes) == {step}
    assert abs(_peak_hz(pcm[RATE // 5:]) - 440) < 10  # the tone comes back


def test_120_ms_packets_code_at_most_8_kbps_and_carry_the_tone():
    """The packets for a link the audio itself overfills (sender.link_adapt)."""
    packets = _code(LinkOpusEncoder(12, 120), _tone(2.4))
    assert [t for t, _ in packets] == [i * 5760 for i in range(20)]
    assert 8 * sum(len(p) for _, p in packets) / 2.4 / 1000 < 8.5
    sizes, pcm = _decode(packets)
    assert set(sizes) == {5760} and abs(_peak_hz(pcm[RATE // 5:]) - 440) < 10
    # 20 ms packets of the same encoder code the rate asked for again.
    packets = _code(LinkOpusEncoder(12, 120), _tone(2.4), switch={30: 20})
    tail = [p for t, p in packets if t >= 60 * 960]
    assert 8 * sum(len(p) for p in tail) / (len(tail) * 0.02) / 1000 > 9


def test_a_longer_packet_mid_call_keeps_the_timestamps_and_the_sound():
    encoder = LinkOpusEncoder(12)
    # 20 ms packets for 1 s, then 40 ms, then 20 ms again: as the link adapter may ask.
    packets = _code(encoder, _tone(3.0), switch={50: 40, 101: 20})
    timestamps = [t for t, _ in packets]
    assert timestamps == sorted(timestamps) and len(set(timestamps)) == len(timestamps)
    sizes, pcm = _decode(packets)
    # Each packet starts where the one before it ended (the RTP clock never jumps or repeats).
    assert all(b - a == size for a, b, size in zip(timestamps, timestamps[1:], sizes))
    assert 1920 in sizes and sizes[-1] == 960 and encoder.reopened == 2
    assert sum(sizes) >= len(_tone(3.0)) - 1920  # nothing but the samples still waiting is lost
    for part in (pcm[RATE // 5:RATE], pcm[int(1.3 * RATE):2 * RATE], pcm[int(2.3 * RATE):]):
        assert abs(_peak_hz(part) - 440) < 10


def test_any_input_format_is_resampled_to_48k_mono():
    encoder = LinkOpusEncoder(12)
    stereo = np.stack([_tone(0.5), _tone(0.5)], axis=1).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
    frame.sample_rate = RATE
    payloads, timestamp = encoder.encode(frame)
    assert len(payloads) == 1 and timestamp == 0  # one packet a call; the rest waits
    for call in range(1, 25):
        payloads, timestamp = encoder.encode(_silence())
        assert len(payloads) == 1 and timestamp == call * FRAME


@pytest.mark.parametrize("bad", [0, 10, 30, 80, 100, "40"])
def test_a_packet_length_libopus_is_not_given_here_is_refused(bad):
    with pytest.raises(ValueError):
        LinkOpusEncoder(12, bad)
    with pytest.raises(ValueError):
        LinkOpusEncoder(12).set_packet_ms(bad)


@pytest.mark.parametrize("kbps", [0, 5, 600])
def test_a_rate_opus_does_not_code_is_refused(kbps):
    with pytest.raises(ValueError):
        LinkOpusEncoder(kbps)
