"""Keyframes coded off the frame loop (``Encoder(keyframe_worker=True)``, what a call does): the
loop never waits for the keyframe coder, the keyframe packet carries the frame it was taken
from and goes out before the motion it serves, and the stream decodes. A gate holds the coder
until the test opens it, so nothing here depends on the machine's speed."""

from __future__ import annotations

import argparse
import threading

import numpy as np
import pytest

from codec.api import Decoder, Encoder
from codec.bitstream import CompactMotionPacket, KeyframePacket, MotionPacket, StreamHeader, parse_packet
from codec.bitstream.sequencing import MotionSequencer
from codec.keyframe import DEFAULT_KEYFRAME_CODEC, default_keyframe_quality
from sender.sources import default_source


@pytest.fixture(scope="module")
def crops() -> list[np.ndarray]:
    """256 px face crops of the built-in default clip (the landmark model's size)."""
    from codec.facecrop import FaceCropper

    frames = list(default_source(num_frames=24, size=(256, 256)))
    cropper = FaceCropper(out_size=256)
    box = cropper.fit(frames[:5])
    return [box.crop(frame, 256) for frame in frames]


@pytest.fixture
def gate(monkeypatch) -> threading.Event:
    """The keyframe coder waits for this event (an Encoder that waited for its worker on the
    frame loop would never open it: the coder then fails after 30 s instead of hanging)."""
    import codec.keyframe_worker as worker_module

    real = worker_module.encode_keyframe
    opened = threading.Event()

    def gated(image: np.ndarray, codec: str, quality: int) -> bytes:
        assert opened.wait(30), "the keyframe coder was never let through"
        return real(image, codec, quality)

    monkeypatch.setattr(worker_module, "encode_keyframe", gated)
    return opened


def _parsed(header: StreamHeader, stream: list[bytes]) -> list:
    """A whole stream, from its first packet, as a receiver reads it: compact motion packets
    (format v4) numbered in order. Every one must be numbered (these streams lose nothing)."""
    sequencer, parsed = MotionSequencer(header), []
    for packet in map(parse_packet, stream):
        if isinstance(packet, CompactMotionPacket):
            packet = sequencer.resolve(packet)
            assert packet is not None, "a motion packet the receiver could not number"
        parsed.append(packet)
    return parsed


def _last(header: StreamHeader, stream: list[bytes], packets: list[bytes]) -> list:
    """``packets`` (the newest, already appended to ``stream``) as the receiver reads them."""
    return _parsed(header, stream)[len(stream) - len(packets):]


def _kinds(parsed: list) -> list[str]:
    return [type(p).__name__ for p in parsed]


def _check_order(header: StreamHeader, stream: list[bytes]) -> None:
    """No motion before the first keyframe; motion sequence numbers rise; each keyframe's
    frame is one already encoded, at or before the motion that follows it."""
    parsed = _parsed(header, stream)
    assert isinstance(parsed[0], KeyframePacket)
    motion = [p.seq for p in parsed if isinstance(p, MotionPacket)]
    assert motion == sorted(set(motion))
    for i, packet in enumerate(parsed):
        if isinstance(packet, KeyframePacket):
            after = next((p.seq for p in parsed[i + 1:] if isinstance(p, MotionPacket)), None)
            assert after is None or packet.seq <= after


def test_keyframes_off_the_loop_arrive_late_and_decode(gate, crops):
    encoder = Encoder.from_pretrained(keyframe_worker=True)
    assert encoder.keyframe_codec == DEFAULT_KEYFRAME_CODEC
    stream: list[bytes] = []
    # Stream start: the receiver holds no keyframe, so the frames while it is coded send nothing
    # (and encode returns: the gate is still shut).
    for i in range(3):
        assert encoder.encode(crops[i], i / 25) == []
    assert encoder.keyframe_pending and encoder.stats.skipped == 3
    gate.set()
    assert encoder.wait_keyframe(30)
    header = encoder.stream_header()
    packets = encoder.encode(crops[3], 3 / 25)
    stream += packets
    first, *_, last = _last(header, stream, packets)
    assert isinstance(first, KeyframePacket) and (first.seq, first.timestamp) == (0, 0)  # its own frame
    assert isinstance(last, MotionPacket) and last.seq == 3 and last.intra  # a resync point
    assert encoder.stats.keyframe_reasons == [(0, "stream start")] and not encoder.keyframe_pending
    for i in range(4, 8):
        stream += encoder.encode(crops[i], i / 25)
    # Mid-stream: frames go on as motion against the keyframe the receiver holds.
    gate.clear()
    encoder.request_keyframe("periodic")
    for i in range(8, 12):
        packets = encoder.encode(crops[i], i / 25)
        stream += packets
        parsed = _last(header, stream, packets)
        assert "KeyframePacket" not in _kinds(parsed)
        assert parsed[-1].seq == i  # this frame's motion, not held back
    gate.set()
    assert encoder.wait_keyframe(30)
    packets = encoder.encode(crops[12], 12 / 25)
    stream += packets
    keyframe = _last(header, stream, packets)[0]
    assert isinstance(keyframe, KeyframePacket) and keyframe.seq == 8 and keyframe.timestamp == 320
    for i in range(13, 16):
        stream += encoder.encode(crops[i], i / 25)
    encoder.close()
    assert encoder.stats.keyframes == 2 and encoder.stats.keyframe_reasons[1] == (8, "periodic")
    _check_order(header, stream)
    decoder = Decoder.from_header(encoder.header(), refiner=False)
    frames = list(decoder.decode_stream(stream))
    assert [f.seq for f in frames] == list(range(3, 16))  # every frame with motion is shown
    assert decoder.stats.keyframes == 2 and decoder.stats.before_keyframe == 0


def test_restart_holds_motion_until_a_keyframe_taken_after_it(gate, crops):
    encoder = Encoder.from_pretrained(keyframe_worker=True, keyframe_codec="webp", patches=False)
    gate.set()
    encoder.encode(crops[0], 0.0)
    assert encoder.wait_keyframe(30)
    stream = encoder.encode(crops[1], 1 / 25)
    gate.clear()
    encoder.request_keyframe("periodic")
    stream += encoder.encode(crops[2], 2 / 25)  # its keyframe (of frame 2) is being coded
    # Back from H.264: the held keyframe is stale, and so is the one being coded.
    encoder.request_keyframe("back to neural", restart=True)
    assert encoder.encode(crops[3], 3 / 25) == []
    gate.set()
    assert encoder.wait_keyframe(30)
    header = encoder.stream_header()
    packets = encoder.encode(crops[4], 4 / 25)
    stream += packets
    assert _kinds(_last(header, stream, packets)) == ["KeyframePacket"]  # frame 2's keyframe, still no motion
    assert encoder.wait_keyframe(30)
    packets = encoder.encode(crops[5], 5 / 25)
    stream += packets
    parsed = _last(header, stream, packets)
    assert _kinds(parsed) == ["KeyframePacket", "MotionPacket"]
    assert parsed[0].seq == 4  # taken after the restart
    encoder.close()
    _check_order(header, stream)
    assert [seq for seq, _ in encoder.stats.keyframe_reasons] == [0, 2, 4]


def test_without_the_worker_the_keyframe_goes_out_with_its_frame(crops):
    """Files and benchmarks: deterministic, the keyframe first in its own frame's packets."""
    encoder, again = Encoder.from_pretrained(patches=False), Encoder.from_pretrained(patches=False)
    packets = [encoder.encode(crops[i], i / 25) for i in range(3)]
    parsed = _parsed(encoder.stream_header(), [p for frame in packets for p in frame])
    assert _kinds(parsed) == ["KeyframePacket", "MotionPacket", "MotionPacket", "MotionPacket"]
    assert [p.seq for p in parsed] == [0, 0, 1, 2]
    assert packets == [again.encode(crops[i], i / 25) for i in range(3)]
    assert encoder.keyframe_quality == default_keyframe_quality(DEFAULT_KEYFRAME_CODEC)


def test_calls_compress_and_rd_send_the_shipped_keyframes():
    import inspect

    from app.call import CallOptions, call_encoder
    from app.call_command import add_call_args
    from benchmarks.rd.cli import parse_args
    from benchmarks.rd.ours import ours_settings, shipped_keyframes
    from benchmarks.rd.results import run_meta
    from codec.files import compress
    from codec.zoo import resolve_model

    options = CallOptions()
    encoder = call_encoder(resolve_model(refiner=False), options)
    assert encoder.keyframe_codec == DEFAULT_KEYFRAME_CODEC and encoder.keyframe_pending
    assert encoder.keyframe_quality == default_keyframe_quality(DEFAULT_KEYFRAME_CODEC)
    assert encoder._worker is not None  # a live call codes keyframes off its frame loop
    assert call_encoder(resolve_model(refiner=False), CallOptions(live=False))._worker is None  # a recording
    parser = argparse.ArgumentParser()
    add_call_args(parser)
    args = parser.parse_args(["--room", "r"])
    assert (args.keyframe_codec, args.keyframe_quality) == (DEFAULT_KEYFRAME_CODEC, None)
    assert inspect.signature(compress).parameters["keyframe_codec"].default == DEFAULT_KEYFRAME_CODEC
    rd = parse_args([])
    shipped = shipped_keyframes(rd.keyframe_codec, rd.keyframe_quality)
    assert shipped == {"codec": DEFAULT_KEYFRAME_CODEC, "quality": default_keyframe_quality(DEFAULT_KEYFRAME_CODEC),
                       "shipped_default": True}
    [setting] = ours_settings([(0.0, 3)])
    assert setting.name == "q3-kf0" and setting.params["keyframe_codec"] == DEFAULT_KEYFRAME_CODEC
    assert setting.params["keyframe_quality"] == shipped["quality"]
    [webp] = ours_settings([(0.0, 3)], keyframe_codec="webp")
    assert webp.name == "q3-kf0-kwebp"
    meta = run_meta("rd", "python -m benchmarks.rd", False, 256, 10, 1, "split dev", shipped)
    assert meta["ours_keyframes"] == shipped
    assert any(f"{DEFAULT_KEYFRAME_CODEC} q{shipped['quality']} (the shipped default" in note for note in meta["notes"])
