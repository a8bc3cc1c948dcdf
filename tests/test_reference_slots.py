"""Reference slots (stream format version 4): a Decoder holding K keyframes, driven by
hand-built streams (the Encoder's own choice among K is tests/test_reference_memory.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from codec.api import Decoder, Encoder, ViewControl
from codec.bitstream import (
    CompactMotionPacket,
    KeyframeCodec,
    KeyframePacket,
    MotionPacket,
    PatchPacket,
    parse_packet,
)
from codec.errors import ReferenceSlotError
from codec.families.base import PatchCandidate
from codec.families.landmark import pack_keyframe_info
from codec.keyframe import decode_keyframe, encode_keyframe, received_keyframe
from codec.motion_coding import MotionEncoder
from codec.zoo import resolve_model

SLOTS = 3
TICKS = 40  # 25 fps at the Encoder's 1000-tick timebase


@pytest.fixture(scope="module")
def model():
    return resolve_model("landmark", refiner=False)


@pytest.fixture(scope="module")
def parts(model, portrait):
    """A K = 3 header, three keyframe images of the portrait, a patch and motion payloads."""
    crop, points = portrait
    info = pack_keyframe_info(points)
    header = dataclasses.replace(Encoder(model).stream_header(), reference_slots=SLOTS)
    images = [encode_keyframe(np.ascontiguousarray(image), "webp", 90)
              for image in (crop, (crop * 0.6).astype(np.uint8), crop[::-1].copy())]
    source = model.prepare_source(received_keyframe(images[0], KeyframeCodec.WEBP, model.image_size), info)
    neutral = model.neutral_motion(source).astype(np.float32)
    coder = MotionEncoder(header.quant_table, header.expression_count, intra_period=100)
    payloads = []
    for seq in range(9):
        if seq == 4:
            coder.force_intra()
        vector = neutral.copy()
        vector[0] += 2.0 * np.sin(seq)  # a little yaw, so every frame differs
        payloads.append(coder.encode_vector(vector, seq))
    patch = PatchPacket(3, 3 * TICKS, region=0, slot=0, x0=100, y0=160, codec_id=KeyframeCodec.WEBP,
                        image_bytes=encode_keyframe(np.full((24, 48, 3), 90, np.uint8)),
                        info=np.asarray(neutral, "<f2").tobytes(), reference=1)
    return header, images, info, payloads, patch


def compact(seq: int, payloads) -> bytes:
    intra, payload = payloads[seq]
    return CompactMotionPacket.of(seq, intra, payload).pack()


def extended(seq: int, payloads, slot: int) -> bytes:
    intra, payload = payloads[seq]
    return MotionPacket(seq, seq * TICKS, intra, payload, slot).pack()


def test_two_keyframes_switching_patches_and_an_empty_slot(model, parts) -> None:
    header, images, info, payloads, patch = parts
    keyframe = [KeyframePacket(seq, seq * TICKS, KeyframeCodec.WEBP, images[slot], info, slot=slot).pack()
                for seq, slot in ((0, 0), (1, 1), (7, 2))]
    stream = [
        keyframe[0], compact(0, payloads),  # intra: the newest keyframe's slot, 0
        keyframe[1], compact(1, payloads),  # a new keyframe makes its slot (1) current
        extended(2, payloads, slot=0),  # switch back to slot 0 by name
        patch.pack(),  # belongs to slot 1, not to the current slot 0
        compact(3, payloads),  # inter: its predecessor's slot, 0
        compact(4, payloads),  # intra: the newest keyframe's slot, 1 (patched)
        extended(5, payloads, slot=2),  # names a slot this receiver does not hold
        compact(6, payloads),  # inter after it: slot 2 as well
        keyframe[2], compact(7, payloads),  # slot 2 filled: rendering resumes
        extended(8, payloads, slot=1),
    ]
    decoder = Decoder(header, model)
    frames, needs = [], []
    for data in stream:
        frame = decoder.decode(data)  # never raises for an empty slot
        needs.append(decoder.needs_reference)
        if frame is not None:
            frames.append(frame)
    assert [(f.seq, f.reference) for f in frames] == [(0, 0), (1, 1), (2, 0), (3, 0), (4, 1), (7, 2), (8, 1)]
    assert decoder.stats.unheld_reference == 2 and decoder.stats.missing_reference == 0
    assert needs[stream.index(extended(5, payloads, slot=2))] == 2 and needs[-1] is None
    assert [held.patches for held in decoder.references] == [0, 1, 0]
    # Every frame is exactly its slot's keyframe (plus its patches) warped by its motion.
    sources = [model.prepare_source(received_keyframe(image, KeyframeCodec.WEBP, model.image_size), info)
               for image in images]
    unpatched_slot_1 = model.prepare_source(received_keyframe(images[1], KeyframeCodec.WEBP, model.image_size),
                                            info)
    model.add_patch(sources[1], PatchCandidate(patch.region, patch.slot, patch.x0, patch.y0,
                                               decode_keyframe(patch.image_bytes), patch.info))
    for frame in frames:
        source = unpatched_slot_1 if frame.seq == 1 else sources[frame.reference]
        expected = model.render(source, frame.motion[None], ViewControl())[0]
        np.testing.assert_array_equal(frame.image, expected)


def test_slots_beyond_k_raise_typed_errors(model, parts) -> None:
    header, images, info, payloads, _ = parts
    decoder = Decoder(header, model)
    decoder.decode(KeyframePacket(0, 0, KeyframeCodec.WEBP, images[0], info).pack())
    with pytest.raises(ReferenceSlotError):
        decoder.decode(extended(0, payloads, slot=SLOTS))
    with pytest.raises(ReferenceSlotError):  # packets parsed elsewhere are checked too
        list(decoder.decode_stream([KeyframePacket(1, 40, KeyframeCodec.WEBP, images[1], info, slot=SLOTS)]))
    one_slot = Decoder(dataclasses.replace(header, reference_slots=1), model)
    with pytest.raises(ReferenceSlotError):
        one_slot.decode(KeyframePacket(0, 0, KeyframeCodec.WEBP, images[0], info, slot=1).pack())


def test_patch_of_an_empty_slot_asks_for_its_keyframe(model, parts) -> None:
    header, images, info, _, patch = parts
    decoder = Decoder(header, model)
    decoder.decode(KeyframePacket(0, 0, KeyframeCodec.WEBP, images[0], info).pack())
    assert decoder.decode(patch.pack()) is None
    assert decoder.stats.unheld_reference == 1 and decoder.needs_reference == 1 and decoder.stats.patches == 0
    decoder.decode(KeyframePacket(5, 200, KeyframeCodec.WEBP, images[1], info, slot=1).pack())
    assert decoder.needs_reference is None


def test_the_call_receiver_asks_for_the_keyframe_of_an_unheld_slot(tiny_model) -> None:
    from codec.bitstream.control import KeyframeRequest, StreamStart
    from receiver.session import ReceiverSession
    from sender.sources import default_source

    encoder = Encoder(tiny_model)
    header = dataclasses.replace(encoder.stream_header(), reference_slots=2)
    frame = next(iter(default_source(num_frames=1, size=(tiny_model.image_size,) * 2)))
    keyframe, motion = encoder.encode(frame)
    intra = parse_packet(motion)  # the Encoder's compact intra packet (slot 0, implied)
    assert isinstance(intra, CompactMotionPacket) and intra.intra
    sent = []
    receiver = ReceiverSession(tiny_model, show=lambda image, t: None, send_control=sent.append)
    try:
        receiver.on_control(StreamStart(header=header.pack(), clock=0.0, fps=25.0))
        receiver._enqueue(keyframe)
        receiver.on_motion(MotionPacket(1, 40, True, intra.payload, reference=1).pack())
        assert receiver.wait_idle(10.0)
        assert receiver.decoder.stats.unheld_reference == 1
        assert [m for m in sent if isinstance(m, KeyframeRequest)] == [
            KeyframeRequest(reason="no keyframe in reference slot 1")]
    finally:
        receiver.close()
