"""Damped motion (codec.damping): on a frame whose pose the reference cannot show, the sender
codes the motion whose own render scores best, never one that scores worse than the
tracker's; on ordinary frames it tries nothing."""

from __future__ import annotations

import numpy as np
import pytest

from codec.api import DampingPolicy, Decoder, Encoder
from codec.damping import MotionDamper
from codec.rebuild_score import rebuild_error
from codec.zoo import resolve_model


@pytest.fixture(scope="module")
def portrait():
    from sender.sources import FreeViewPortraitSource

    return FreeViewPortraitSource(resolve_model(), num_frames=20)


def turned(portrait, yaw: float) -> np.ndarray:
    """The portrait with its head turned ``yaw`` degrees from the photo's own pose."""
    motion = portrait._base.copy()
    motion[0] += yaw
    return portrait.model.render(portrait._source, motion[None])[0]


def shown_errors(frames: list[np.ndarray], damping: DampingPolicy | None, fake_yaw: float | None = None,
                 from_frame: int = 5) -> tuple[Encoder, list[float]]:
    """Per frame, the rebuild error of what the receiver shows (the plain warp, no patches: the
    sender's own render) against the real frame. ``fake_yaw``: from ``from_frame`` on the
    tracker reports the head turned this far while the frames still show the photo's pose
    (a pose the reference cannot show: its warp to there is far from the real frame)."""
    model = resolve_model().plain()
    encoder = Encoder(model, patches=False, damping=damping)
    if fake_yaw is not None:
        tracker_motion = encoder._tracker.motion
        count = iter(range(len(frames)))

        def motion(crop: np.ndarray) -> np.ndarray:
            vector = tracker_motion(crop)
            if next(count) >= from_frame:
                vector = vector.copy()
                vector[0] += fake_yaw
            return vector

        encoder._tracker.motion = motion
    decoder = Decoder.from_header(encoder.header(), model=model)
    errors = []
    for i, frame in enumerate(frames):
        for packet in encoder.encode(frame, i / 25):
            decoded = decoder.decode(packet)
            if decoded is not None:
                errors.append(rebuild_error(decoded.image, frame))
    assert len(errors) == len(frames)
    return encoder, errors


def test_damping_engages_on_a_large_turn_and_never_scores_worse(portrait) -> None:
    frames = [turned(portrait, 0.0)] * 15
    plain, plain_errors = shown_errors(frames, None, fake_yaw=45.0)
    damped, damped_errors = shown_errors(frames, DampingPolicy(), fake_yaw=45.0)
    assert plain.stats.damping_tried == 0 and not plain.stats.damped
    # Every turned frame was tried, and damped: the warp to 45° tears the photo's face.
    assert damped.stats.damping_tried == 10
    assert sum(damped.stats.damped.values()) == 10, damped.stats.damped
    # Never worse than the undamped motion on any frame, and much better on the turned ones.
    assert all(d <= p + 1e-6 for d, p in zip(damped_errors, plain_errors)), (damped_errors, plain_errors)
    assert np.mean(damped_errors[5:]) < np.mean(plain_errors[5:]) - 0.05
    # The sender's record of the choice says so too.
    choice = damped.last_damping
    assert choice is not None and choice.damped and choice.error < choice.undamped_error


def test_a_turn_the_warp_shows_is_left_as_it_is(portrait) -> None:
    # A real 35° turn that the warp of this reference renders exactly: candidates are tried
    # (the turn is past turn_deg) but none beats the tracker's motion.
    frames = [turned(portrait, 0.0)] * 3 + [turned(portrait, 35.0)] * 4
    encoder, errors = shown_errors(frames, DampingPolicy())
    assert encoder.stats.damping_tried >= 3
    assert not encoder.stats.damped, encoder.stats.damped
    _, plain_errors = shown_errors(frames, None)
    assert errors == pytest.approx(plain_errors, abs=1e-9)


def test_small_turns_try_nothing(portrait) -> None:
    frames = [turned(portrait, yaw) for yaw in (0.0, 4.0, 8.0, 12.0, 8.0, 4.0)]
    encoder, _ = shown_errors(frames, DampingPolicy())
    assert encoder.stats.damping_tried == 0


def test_candidates_keep_roll_and_expression(portrait) -> None:
    model = resolve_model().plain()
    source = portrait._source
    motion = np.asarray(model.neutral_motion(source), np.float32).copy()
    motion[0] += 40.0
    motion[2] += 7.0
    motion[7] += 0.5
    reference = model.neutral_motion(source)
    damper = MotionDamper(DampingPolicy(), model)
    found = dict(damper.candidates(source, motion))
    assert found["turn×0"][0] == pytest.approx(reference[0])
    assert found["turn×0.66"][0] == pytest.approx(reference[0] + 0.66 * 40.0, abs=1e-3)
    assert found["turn×0"][2] == motion[2] and found["turn×0"][7] == motion[7]
    assert found["head"][2] == pytest.approx(reference[2]) and found["head"][7] == motion[7]
    assert np.allclose(found["still"], reference)
    assert MotionDamper.applies_to(model)
