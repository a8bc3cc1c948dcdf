"""End to end: Encoder/Decoder streaming, loss recovery, file compress/decompress with audio,
and fuzzing of the full Decoder. All with the tiny seeded model on the CPU."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codec.api import Decoder, Encoder, ViewControl, stamp_untrained
from codec.bitstream import CompactMotionPacket, MotionPacket, MotionSequencer, StreamHeader, parse_packet
from codec.errors import CodecError, ModelMismatchError
from codec.files import compress, decompress
from codec.motion_coding import quant_table
from codec.zoo import build_untrained
from sender.sources import default_source, write_default_clip


@pytest.fixture(scope="module")
def crops(tiny_model) -> list[np.ndarray]:
    """Face crops of the built-in default clip at the tiny model's resolution."""
    from codec.facecrop import FaceCropper

    frames = list(default_source(num_frames=40, size=(256, 256)))
    cropper = FaceCropper(out_size=tiny_model.image_size)
    box = cropper.fit(frames[:5])
    return [box.crop(frame, cropper.out_size) for frame in frames]


def stream(encoder: Encoder, frames: list[np.ndarray]) -> list[bytes]:
    return [p for i, frame in enumerate(frames) for p in encoder.encode(frame, i / 25)]


def motion_seqs(header: bytes, packets: list[bytes]) -> list[int | None]:
    """The sequence number of every motion packet of a whole stream (None: not motion)."""
    parsed_header = StreamHeader.parse(header)
    sequencer = MotionSequencer(parsed_header)
    seqs = []
    for data in packets:
        packet = parse_packet(data, parsed_header)
        is_motion = isinstance(packet, MotionPacket | CompactMotionPacket)
        seqs.append(sequencer.resolve(packet).seq if is_motion else None)
    return seqs


def test_stream_round_trip(tiny_model, crops):
    encoder = Encoder(tiny_model, intra_period=10)
    packets = stream(encoder, crops)
    decoder = Decoder.from_header(encoder.header(), model=tiny_model)
    frames = [f for f in map(decoder.decode, packets) if f is not None]
    assert len(frames) == len(crops)
    assert [f.seq for f in frames] == list(range(len(crops)))
    assert frames[3].timestamp == pytest.approx(3 / 25)
    size = tiny_model.image_size
    assert all(f.image.shape == (size, size, 3) and f.image.dtype == np.uint8 for f in frames)
    assert all(f.untrained for f in frames)
    assert encoder.stats.keyframes == 1 and encoder.stats.intra_packets == 4
    # Batched rendering gives the same frames as one at a time.
    batched = Decoder.from_header(encoder.header(), model=tiny_model)
    again = list(batched.decode_stream(packets, batch_size=8))
    for a, b in zip(frames, again):
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1


def test_decoded_motion_is_within_half_a_step(tiny_model, crops):
    encoder = Encoder(tiny_model, quality=2)
    decoder = Decoder.from_header(encoder.header(), model=tiny_model)
    table = quant_table(2)
    import torch

    from codec.families.vid2vid import image_to_tensor

    for i, frame in enumerate(crops[:8]):
        packets = encoder.encode(frame, i / 25)
        decoded = [decoder.decode(p) for p in packets][-1]
        with torch.inference_mode():
            pose = tiny_model.network.estimate_motion(image_to_tensor(frame, 64, "cpu"))
        assert np.abs(decoded.motion[:3] - pose.angles()[0].numpy()).max() <= (
            table.angles.step / 2 + 1e-4)
        assert np.abs(decoded.motion[6:] - pose.expression[0].numpy().reshape(-1)).max() <= (
            table.expression.step / 2 + 1e-6)


def test_lost_packets_hold_until_the_next_intra_then_no_drift(tiny_model, crops):
    encoder = Encoder(tiny_model, intra_period=10)
    packets = stream(encoder, crops)
    reference = Decoder.from_header(encoder.header(), model=tiny_model)
    expected = {f.seq: f for f in map(reference.decode, packets) if f is not None}
    lossy = Decoder.from_header(encoder.header(), model=tiny_model)
    lost = {13}  # an inter packet: frames 14..19 cannot be decoded, 20 (intra) recovers
    got = {}
    for data, seq in zip(packets, motion_seqs(encoder.header(), packets), strict=True):
        if seq in lost:
            continue
        frame = lossy.decode(data)
        if frame is not None:
            got[frame.seq] = frame
    assert set(expected) - set(got) == set(range(13, 20))
    assert lossy.stats.missing_reference == 6
    for seq in range(20, len(crops)):
        np.testing.assert_array_equal(got[seq].motion, expected[seq].motion)
        np.testing.assert_array_equal(got[seq].image, expected[seq].image)


def test_keyframe_request_and_motion_before_keyframe(tiny_model, crops):
    encoder = Encoder(tiny_model)
    packets = stream(encoder, crops[:5])
    decoder = Decoder.from_header(encoder.header(), model=tiny_model)
    assert decoder.decode(packets[1]) is None  # motion of frame 0 without its keyframe
    assert decoder.stats.before_keyframe == 1
    encoder.request_keyframe()
    late = encoder.encode(crops[5], 5 / 25)
    assert len(late) == 2  # keyframe + intra motion
    assert decoder.decode(late[0]) is None and decoder.has_keyframe
    assert decoder.decode(late[1]) is not None


def test_receiver_refuses_other_weights_and_unflagged_untrained(tiny_model):
    encoder = Encoder(tiny_model)
    other = build_untrained("tiny", seed=1)
    with pytest.raises(ModelMismatchError):
        Decoder.from_header(encoder.header(), model=other)
    with pytest.raises(ModelMismatchError, match="untrained"):
        Decoder.from_header(encoder.header())
    header = StreamHeader.parse(encoder.header())
    assert header.untrained and header.model_name == "tiny"


def test_free_view_changes_the_render_and_frontalize_runs(tiny_model, crops):
    encoder = Encoder(tiny_model)
    packets = stream(encoder, crops[:2])
    plain = Decoder.from_header(encoder.header(), model=tiny_model)
    turned = Decoder.from_header(encoder.header(), model=tiny_model)
    turned.view = ViewControl(yaw=25.0, frontalize=True)
    a = [f for f in map(plain.decode, packets) if f][-1]
    b = [f for f in map(turned.decode, packets) if f][-1]
    assert not np.array_equal(a.image, b.image)


def test_stamp_untrained_marks_the_frame():
    image = np.full((64, 64, 3), 128, np.uint8)
    assert not np.array_equal(stamp_untrained(image), image)


def test_compress_decompress_file_with_audio(tmp_path, tiny_model):
    from codec.media import probe

    clip = write_default_clip(tmp_path / "in.mp4", num_frames=30, fps=25.0, size=(256, 256))
    report = compress(clip, tmp_path / "clip.fvc", model=tiny_model, quality=3)
    assert report.frames == 30 and report.keyframes == 1 and report.untrained
    assert report.keyframe_bytes > 0 and report.audio_bytes > 0
    assert 0 < report.motion_bits_per_frame < 2000
    assert report.payload_kbps > report.motion_kbps > 0
    assert "UNTRAINED" in report.summary()
    out = tmp_path / "out.mp4"
    result = decompress(tmp_path / "clip.fvc", out, model=tiny_model)
    assert result.frames == 30 and result.has_audio
    info = probe(out)
    assert info.has_audio and (info.width, info.height) == (64, 64)
    assert info.duration == pytest.approx(30 / 25, abs=0.1)


def test_compress_without_a_face_is_a_typed_error(tmp_path, tiny_model):
    from codec.errors import FaceNotFoundError
    from codec.media import frames_to_video

    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 255, (128, 128, 3), dtype=np.uint8) for _ in range(6)]
    frames_to_video(tmp_path / "noise.mp4", noise, fps=25.0)
    with pytest.raises(FaceNotFoundError):
        compress(tmp_path / "noise.mp4", tmp_path / "x.fvc", model=tiny_model, audio=False)


# --- fuzzing the whole Decoder: only typed errors may escape ---------------------------------

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))


@pytest.fixture(scope="module")
def valid_packets(tiny_model, crops) -> tuple[bytes, list[bytes]]:
    encoder = Encoder(tiny_model, intra_period=4)
    return encoder.header(), stream(encoder, crops[:8])


@settings(max_examples=FUZZ_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_decoder(tiny_model, valid_packets, data):
    header, packets = valid_packets
    decoder = Decoder.from_header(header, model=tiny_model)
    decoder.decode(packets[0])  # a valid keyframe first, so motion packets reach the renderer
    for _ in range(data.draw(st.integers(1, 4))):
        base = bytearray(data.draw(st.sampled_from(packets)))
        action = data.draw(st.sampled_from(["flip", "truncate", "insert", "random"]))
        if action == "flip" and base:
            i = data.draw(st.integers(0, len(base) - 1))
            base[i] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "truncate":
            base = base[: data.draw(st.integers(0, len(base)))]
        elif action == "insert":
            i = data.draw(st.integers(0, len(base)))
            base[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            base = bytearray(data.draw(st.binary(max_size=64)))
        try:
            frame = decoder.decode(bytes(base))
        except CodecError:
            continue
        if frame is not None:
            assert frame.image.dtype == np.uint8 and np.isfinite(frame.motion).all()


def test_duplicated_and_reordered_packets_are_dropped(tiny_model, crops):
    encoder = Encoder(tiny_model, intra_period=10)
    packets = stream(encoder, crops[:12])
    decoder = Decoder.from_header(encoder.header(), model=tiny_model)
    order = packets[:8] + [packets[5], packets[6]] + packets[8:]  # frame 2/3 motion again, late
    seqs = [f.seq for f in map(decoder.decode, order) if f is not None]
    assert seqs == list(range(12)) and decoder.stats.stale == 2


def test_render_filter_skips_frames_but_keeps_the_motion_chain(tiny_model, crops):
    encoder = Encoder(tiny_model, intra_period=50)
    packets = stream(encoder, crops[:12])
    full = list(Decoder.from_header(encoder.header(), model=tiny_model).decode_stream(packets))
    decoder = Decoder.from_header(encoder.header(), model=tiny_model)
    picked = list(decoder.decode_stream(packets, render=lambda seq: seq % 4 == 3))
    assert [f.seq for f in picked] == [3, 7, 11]
    assert decoder.stats.frames == 3
    for frame in picked:  # inter frames after skipped ones decode exactly as without skipping
        np.testing.assert_array_equal(frame.image, full[frame.seq].image)


def test_decode_stream_takes_parsed_packets_too(tiny_model, crops):
    encoder = Encoder(tiny_model)
    packets = stream(encoder, crops[:4])
    from_bytes = list(Decoder.from_header(encoder.header(), model=tiny_model).decode_stream(packets))
    parsed = [parse_packet(p) for p in packets]  # compact motion packets stay compact: the decoder numbers them
    from_parsed = list(Decoder.from_header(encoder.header(), model=tiny_model).decode_stream(parsed))
    assert [f.seq for f in from_parsed] == [f.seq for f in from_bytes] == [0, 1, 2, 3]
    for a, b in zip(from_bytes, from_parsed):
        np.testing.assert_array_equal(a.image, b.image)
