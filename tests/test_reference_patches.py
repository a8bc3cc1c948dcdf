"""Reference patches: region geometry, the reference set and its budget, and patches through
the landmark family, the Encoder/Decoder and the bitstream."""

from __future__ import annotations

import numpy as np
import pytest

from codec.api import Decoder, Encoder
from codec.bitstream import KeyframeCodec, KeyframePacket, MotionPacket, PatchPacket, parse_packet
from codec.errors import BitstreamError
from codec.families.base import PatchCandidate
from codec.keyframe import decode_keyframe, encode_keyframe
from codec.motion_coding import MotionEncoder
from codec.reference_patches import (
    LEFT_EYE,
    MOUTH,
    REGIONS,
    RIGHT_EYE,
    PatchBudget,
    Reference,
    ReferenceSet,
    blend_references,
    openness,
    patch_box,
)
from codec.zoo import resolve_model


@pytest.fixture(scope="module")
def model():
    return resolve_model("landmark", refiner=False)


def opened_mouth(model, source, amount: float = 3.0) -> np.ndarray:
    """A motion vector whose expression opens the mouth: the neutral motion moved along the
    expression coefficient that opens it most."""
    neutral = model.neutral_motion(source).astype(np.float64)
    best, gain = None, 0.0
    points = model._landmarks_px(source, neutral)
    for k in range(6, len(neutral)):
        for sign in (1.0, -1.0):
            moved = neutral.copy()
            moved[k] += sign * amount
            now = model._landmarks_px(source, moved)
            change = openness(MOUTH, now) - openness(MOUTH, points)
            eyes_still = all(abs(openness(eye, now) - openness(eye, points)) < eye.tolerance / 2
                             for eye in (RIGHT_EYE, LEFT_EYE))
            if change > gain and eyes_still:
                best, gain = moved, change
    assert best is not None and gain > 2 * MOUTH.tolerance
    return best.astype(np.float32)


def test_openness_of_mouth_and_eyes(portrait) -> None:
    _, points = portrait
    closed = openness(MOUTH, points)
    opened = points.copy()
    opened[[65, 66, 67, 55, 56, 57, 58, 59]] += (0.0, 20.0)  # the lower lip drops 20 px
    assert openness(MOUTH, opened) > closed + 0.2
    shut = points.copy()
    for first in (36, 42):  # lids meet on the line between the corners
        middle = (points[first] + points[first + 3]) / 2.0
        shut[[first + 1, first + 2, first + 4, first + 5], 1] = middle[1]
    for eye in (RIGHT_EYE, LEFT_EYE):
        assert openness(eye, shut) < 0.05 < openness(eye, points)


def test_patch_box_is_inside_the_crop_or_none(portrait) -> None:
    _, points = portrait
    for region in REGIONS:
        x0, y0, x1, y1 = patch_box(region, points, 256)
        own = points[list(region.points)]
        assert 0 <= x0 < own[:, 0].min() and own[:, 0].max() < x1 <= 256
        assert 0 <= y0 < own[:, 1].min() and own[:, 1].max() < y1 <= 256
    assert patch_box(MOUTH, points + (200.0, 0.0), 256) is None


def test_reference_set_nearest_and_slots(portrait) -> None:
    _, points = portrait
    references = ReferenceSet.for_keyframe(points)
    start = references.keyframe_openness[MOUTH.id]
    assert references.nearest(MOUTH, start + 0.05) == (None, pytest.approx(0.05))
    image = np.zeros((4, 4, 3), np.uint8)
    values = start + np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.61, 0.8])
    for k, value in enumerate(values):
        slot = references.free_slot(MOUTH, value)
        assert slot == k  # empty slots first
        references.put(slot, Reference(MOUTH, image, (0, 0), points, float(value)))
    reference, distance = references.nearest(MOUTH, start + 0.41)
    assert reference.openness == pytest.approx(start + 0.4) and distance == pytest.approx(0.01)
    # Full: the new patch replaces a reference nearest to another one (0.6 and 0.61).
    assert references.free_slot(MOUTH, start + 2.0) in (5, 6)


def test_budget_spends_and_refills() -> None:
    budget = PatchBudget(rate_bps=800.0, burst_bytes=300.0, tokens=300.0)
    assert budget.spend(250) and not budget.spend(100)
    budget.tick(1.0)  # +100 bytes
    assert budget.spend(100) and not budget.spend(60)
    budget.tick(100.0)
    assert budget.tokens == 300.0  # never above the burst


def test_a_patch_lands_where_it_was_cut(portrait) -> None:
    crop, points = portrait
    references = ReferenceSet.for_keyframe(points)
    other = np.zeros_like(crop)
    assert blend_references(other, references, points) is other  # only the keyframe: untouched
    x0, y0, x1, y1 = patch_box(MOUTH, points, 256)
    references.keyframe_openness[MOUTH.id] = -1.0  # as if the keyframe's mouth were far from this one
    references.put(0, Reference(MOUTH, crop[y0:y1, x0:x1].copy(), (x0, y0), points, openness(MOUTH, points)))
    blended = blend_references(other, references, points)
    centre = np.round(points[list(MOUTH.points)].mean(axis=0)).astype(int)
    window = (slice(centre[1] - 3, centre[1] + 4), slice(centre[0] - 8, centre[0] + 9))
    assert np.abs(blended[window].astype(int) - crop[window].astype(int)).max() <= 2
    assert np.array_equal(blended[:40], other[:40])  # far from the mouth: the warp as it was


def test_landmark_family_patches_open_mouths_once(model, portrait) -> None:
    crop, points = portrait
    from codec.families.landmark import pack_keyframe_info

    sender = model.prepare_source(crop, pack_keyframe_info(points))
    receiver = model.prepare_source(crop, pack_keyframe_info(points))
    motion = opened_mouth(model, sender)
    assert model.patch_candidates(sender, crop, model.neutral_motion(sender)) == []
    candidates = model.patch_candidates(sender, crop, motion)
    assert [c.region for c in candidates] == [MOUTH.id]
    before = model.render(receiver, motion[None])[0]
    for candidate in candidates:
        model.add_patch(sender, candidate)
        model.add_patch(receiver, candidate)
    assert model.patch_candidates(sender, crop, motion) == []  # the receiver holds it now
    after = model.render(receiver, motion[None])[0]
    changed = np.any(before != after, axis=2)
    ys, xs = np.nonzero(changed)
    mouth = model._landmarks_px(receiver, motion)[list(MOUTH.points)]
    assert changed.sum() > 100
    assert mouth[:, 1].min() - 30 < ys.min() and ys.max() < mouth[:, 1].max() + 30
    assert mouth[:, 0].min() - 30 < xs.min() and xs.max() < mouth[:, 0].max() + 30


def test_bad_patches_are_typed_errors(model, portrait) -> None:
    crop, points = portrait
    from codec.families.landmark import pack_keyframe_info

    source = model.prepare_source(crop, pack_keyframe_info(points))
    info = np.zeros(model.layout.vector_length, "<f2").tobytes()
    image = np.zeros((20, 30, 3), np.uint8)
    with pytest.raises(BitstreamError, match="info"):
        model.add_patch(source, PatchCandidate(0, 0, 10, 10, image, info[:-2]))
    with pytest.raises(BitstreamError, match="crop"):
        model.add_patch(source, PatchCandidate(0, 0, 250, 10, image, info))
    with pytest.raises(BitstreamError, match="region"):
        model.add_patch(source, PatchCandidate(7, 0, 10, 10, image, info))
    nan = np.full(model.layout.vector_length, np.nan, "<f2").tobytes()
    with pytest.raises(BitstreamError, match="finite"):
        model.add_patch(source, PatchCandidate(0, 0, 10, 10, image, nan))
    tiny = resolve_model("tiny", untrained=True)
    with pytest.raises(BitstreamError, match="no patches"):
        tiny.add_patch(None, PatchCandidate(0, 0, 10, 10, image, info))


def test_decoder_applies_patch_packets(model, portrait) -> None:
    """A stream with a patch packet before an open-mouth frame: the decoder renders the
    patch; without the patch packet it renders the plain warp."""
    crop, points = portrait
    from codec.families.landmark import pack_keyframe_info

    encoder = Encoder(model)
    header = encoder.header()
    keyframe = KeyframePacket(0, 0, KeyframeCodec.WEBP, encode_keyframe(crop, "webp", 90),
                              pack_keyframe_info(points)).pack()
    sender = model.prepare_source(decode_keyframe(parse_packet(keyframe).image_bytes),
                                  pack_keyframe_info(points))
    motion = opened_mouth(model, sender)
    coder = MotionEncoder(encoder.table, model.layout.expression_count, 25)
    intra, payload = coder.encode_vector(motion, 1)
    motion_packet = MotionPacket(1, 40, intra, payload).pack()
    from codec.motion_coding import MotionDecoder

    decoded = MotionDecoder(encoder.table, model.layout.expression_count).decode_vector(intra, 1, payload)
    (candidate,) = model.patch_candidates(sender, crop, decoded)
    patch = PatchPacket(1, 40, candidate.region, candidate.slot, candidate.x0, candidate.y0, KeyframeCodec.WEBP,
                        encode_keyframe(candidate.image, "webp", 60), candidate.info).pack()
    plain = Decoder.from_header(header, model=model)
    with_patch = Decoder.from_header(header, model=model)
    frames_plain = [f for p in (keyframe, motion_packet) if (f := plain.decode(p)) is not None]
    frames_patch = [f for p in (keyframe, patch, motion_packet) if (f := with_patch.decode(p)) is not None]
    assert with_patch.stats.patches == 1 and plain.stats.patches == 0
    assert not np.array_equal(frames_plain[0].image, frames_patch[0].image)
    # A patch before any keyframe is dropped, not an error: the next keyframe starts afresh.
    early = Decoder.from_header(header, model=model)
    assert early.decode(patch) is None and early.stats.patches == 0


def test_encoder_without_patches_or_budget_sends_none(model) -> None:
    assert Encoder(model, patches=False).patches is False
    assert Encoder(resolve_model("tiny", untrained=True)).patches is False  # vid2vid takes none
