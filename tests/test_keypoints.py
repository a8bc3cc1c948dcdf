"""Property tests of the rotation and keypoint conventions in codec.keypoints."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from codec.keypoints import (
    POSE_BIN_DEGREES,
    POSE_BINS,
    HeadMotion,
    angles_to_rotation,
    apply_free_view,
    bins_to_degrees,
    degrees_to_bin,
    frontalize,
    pose_bin_centres,
    rotation_to_angles,
    transform_keypoints,
)

FAST = settings(max_examples=60, deadline=None)
any_angle = st.floats(-180.0, 180.0, allow_nan=False)
seeds = st.integers(0, 2**31 - 1)


def _rotation(yaw: float, pitch: float, roll: float) -> torch.Tensor:
    as_tensor = lambda a: torch.tensor([a], dtype=torch.float64)  # noqa: E731
    return angles_to_rotation(as_tensor(yaw), as_tensor(pitch), as_tensor(roll))


def _random_rotations(batch: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    angles = torch.rand(batch, 3, generator=generator) * 360.0 - 180.0
    return angles_to_rotation(angles[:, 0], angles[:, 1], angles[:, 2])


@FAST
@given(any_angle, any_angle, any_angle)
def test_rotation_is_orthonormal_with_det_one(yaw: float, pitch: float, roll: float) -> None:
    rotation = _rotation(yaw, pitch, roll)[0].double()
    torch.testing.assert_close(rotation @ rotation.T, torch.eye(3, dtype=torch.float64),
                               atol=1e-5, rtol=0)
    assert abs(torch.linalg.det(rotation).item() - 1.0) < 1e-5


@FAST
@given(any_angle, any_angle, any_angle)
def test_rotation_order_is_rz_ry_rx(yaw: float, pitch: float, roll: float) -> None:
    rotation = _rotation(yaw, pitch, roll)
    zero = 0.0
    expected = (_rotation(zero, zero, roll) @ _rotation(yaw, zero, zero)
                @ _rotation(zero, pitch, zero))
    torch.testing.assert_close(rotation, expected, atol=1e-5, rtol=0)


@FAST
@given(st.floats(-89.0, 89.0), st.floats(-179.0, 179.0), st.floats(-179.0, 179.0))
def test_angles_round_trip(yaw: float, pitch: float, roll: float) -> None:
    back = rotation_to_angles(_rotation(yaw, pitch, roll))
    # float32 trig near |yaw| = 89° loses a little precision in pitch/roll
    for got, want in zip(back, (yaw, pitch, roll)):
        assert abs(got.item() - want) < 0.05, (got.item(), want)


@FAST
@given(st.integers(1, 4), st.integers(1, 8), seeds)
def test_transform_keypoints_matches_per_point_loop(batch: int, num_kp: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    canonical = torch.rand(batch, num_kp, 3, generator=generator) * 2 - 1
    translation = torch.rand(batch, 3, generator=generator) * 0.4 - 0.2
    expression = torch.rand(batch, num_kp, 3, generator=generator) * 0.2 - 0.1
    rotation = _random_rotations(batch, seed)
    got = transform_keypoints(canonical, rotation, translation, expression)
    for b in range(batch):
        for k in range(num_kp):
            want = rotation[b] @ canonical[b, k] + translation[b] + expression[b, k]
            torch.testing.assert_close(got[b, k], want, atol=1e-5, rtol=0)


@FAST
@given(st.integers(1, 4), seeds)
def test_free_view_composes_rotation_then_translation(batch: int, seed: int) -> None:
    rotation = _random_rotations(batch, seed)
    view_rotation = _random_rotations(batch, seed + 1)
    generator = torch.Generator().manual_seed(seed)
    translation = torch.rand(batch, 3, generator=generator)
    view_translation = torch.rand(batch, 3, generator=generator)
    new_rotation, new_translation = apply_free_view(rotation, translation, view_rotation,
                                                    view_translation)
    torch.testing.assert_close(new_rotation, view_rotation @ rotation)
    torch.testing.assert_close(new_translation, view_translation + translation)
    # applying two views one after the other equals applying their composition
    twice_r, twice_t = apply_free_view(new_rotation, new_translation, view_rotation,
                                       view_translation)
    once_r, once_t = apply_free_view(rotation, translation, view_rotation @ view_rotation,
                                     2 * view_translation)
    torch.testing.assert_close(twice_r, once_r, atol=1e-5, rtol=0)
    torch.testing.assert_close(twice_t, once_t, atol=1e-5, rtol=0)


@FAST
@given(st.integers(1, 4), seeds)
def test_frontalize_gives_identity_rotation(batch: int, seed: int) -> None:
    rotation = _random_rotations(batch, seed)
    translation = torch.rand(batch, 3, generator=torch.Generator().manual_seed(seed))
    front_rotation, front_translation = frontalize(rotation, translation)
    torch.testing.assert_close(front_rotation, torch.eye(3).expand(batch, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(front_translation, translation)


@FAST
@given(st.integers(0, POSE_BINS - 1))
def test_bins_to_degrees_of_peaked_logits_is_bin_centre(index: int) -> None:
    logits = torch.full((1, POSE_BINS), -100.0)
    logits[0, index] = 100.0
    centre = pose_bin_centres()[index].item()
    assert abs(bins_to_degrees(logits).item() - centre) < 1e-3
    assert centre == -POSE_BINS * POSE_BIN_DEGREES / 2 + POSE_BIN_DEGREES * (index + 0.5)


@FAST
@given(st.integers(0, POSE_BINS - 1), st.floats(-1.4, 1.4))
def test_degrees_to_bin_inverts_bin_centre(index: int, offset: float) -> None:
    # any angle within a bin (short of its edges) maps back to that bin
    angle = pose_bin_centres()[index] + offset
    assert degrees_to_bin(angle.view(1)).item() == index


def test_degrees_to_bin_clamps_out_of_range() -> None:
    bins = degrees_to_bin(torch.tensor([-500.0, 500.0]))
    assert bins.tolist() == [0, POSE_BINS - 1]


@FAST
@given(st.integers(1, 10), seeds)
def test_head_motion_vector_round_trip(num_kp: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    motion = HeadMotion(rng.normal(size=3).astype(np.float32),
                        rng.normal(size=3).astype(np.float32),
                        rng.normal(size=(num_kp, 3)).astype(np.float32))
    back = HeadMotion.from_vector(motion.to_vector(), num_kp)
    np.testing.assert_array_equal(back.to_vector(), motion.to_vector())
    rotation, translation, expression = back.to_tensors()
    assert rotation.shape == (1, 3, 3) and translation.shape == (1, 3)
    assert expression.shape == (1, num_kp, 3)
