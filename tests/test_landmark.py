"""The landmark family: face geometry, the warp, keyframe info, and the model end to end."""

from __future__ import annotations

import numpy as np
import pytest

from codec.errors import BitstreamError, WeightsError
from codec.face3d import Pose, expression_offsets, fit_pose, project, rotation_angles, rotation_matrix
from codec.families.base import ModelFamily, ViewControl
from codec.families.landmark import (
    KEYFRAME_INFO_BYTES,
    LandmarkModel,
    limit_turn,
    motion_from_landmarks,
    pack_keyframe_info,
    unpack_keyframe_info,
)
from codec.warp import MeshWarp, delaunay_triangles
from codec.weights_io import file_sha256, load_face_model
from codec.zoo import LANDMARK_MODELS, WEIGHTS_DIR, resolve_model


@pytest.fixture(scope="module")
def model() -> LandmarkModel:
    return resolve_model("landmark")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def test_rotation_round_trip() -> None:
    for angles in ([0, 0, 0], [20, -10, 5], [-45, 30, -60]):
        assert np.allclose(rotation_angles(rotation_matrix(*angles)), angles, atol=1e-9)


def test_fit_pose_recovers_a_known_pose(model) -> None:
    shape = model.face.mean_shape
    truth = Pose(np.array([18.0, -7.0, 4.0]), 0.31, np.array([0.05, -0.08]))
    landmarks = project(shape, truth)
    fitted = fit_pose(landmarks, shape)
    assert np.allclose(fitted.angles, truth.angles, atol=1e-6)
    assert fitted.scale == pytest.approx(truth.scale, rel=1e-9)
    assert np.allclose(fitted.translation, truth.translation, atol=1e-9)


def test_expression_offsets_reproduce_the_landmarks_exactly(model) -> None:
    shape = model.face.mean_shape
    rng = np.random.default_rng(0)
    landmarks = project(shape, Pose(np.array([10.0, 5.0, -3.0]), 0.3, np.zeros(2)))
    landmarks = landmarks + rng.normal(0, 0.01, landmarks.shape)  # an "expression"
    pose = fit_pose(landmarks, shape)
    offsets = expression_offsets(landmarks, shape, pose)
    assert np.allclose(project(shape + model.face.with_depth(offsets), pose), landmarks, atol=1e-12)


def test_keyframe_info_round_trip_and_errors() -> None:
    landmarks = np.stack([np.linspace(-3.2, 260.5, 68), np.linspace(40.125, 200.0, 68)], axis=1)
    data = pack_keyframe_info(landmarks)
    assert len(data) == KEYFRAME_INFO_BYTES == 273
    assert np.allclose(unpack_keyframe_info(data), landmarks, atol=1 / 16)
    with pytest.raises(BitstreamError):
        unpack_keyframe_info(data[:-1])
    with pytest.raises(BitstreamError):
        unpack_keyframe_info(b"\x05" + data[1:])
    with pytest.raises(BitstreamError):
        unpack_keyframe_info(b"")


def test_mesh_warp_identity_and_translation() -> None:
    rng = np.random.default_rng(1)
    points = np.concatenate([rng.uniform(40, 216, (30, 2)),
                             [[0, 0], [255, 0], [0, 255], [255, 255]]])
    warp = MeshWarp(delaunay_triangles(points), 256)
    image = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    depth = np.zeros(len(points))
    assert np.array_equal(warp.warp(image, points, points, depth), image)
    map_x, map_y = warp.maps(points, points + [3.0, -2.0], depth)
    # Inside the hull, each output pixel samples 3 px left and 2 px below itself.
    assert np.allclose(map_x[128, 100:150] - np.arange(100, 150), -3.0, atol=1e-3)
    assert np.allclose(map_y[128, 100:150] - 128, 2.0, atol=1e-3)


def test_face_model_file_matches_the_registry() -> None:
    entry = LANDMARK_MODELS["landmark"]
    path = WEIGHTS_DIR / entry.filename
    assert file_sha256(path) == entry.sha256
    assert (WEIGHTS_DIR / entry.card).is_file()
    face = load_face_model(path, expected_sha256=entry.sha256)
    assert face.mean_shape.shape == (68, 3) and face.num_coefficients >= entry.coefficients
    # The basis is orthonormal: coefficients are plain projections.
    assert np.allclose(face.basis @ face.basis.T, np.eye(face.num_coefficients), atol=1e-5)
    # The nose tip sits in front of the jaw line (z grows away from the camera).
    assert face.mean_shape[30, 2] < face.mean_shape[0, 2] and face.mean_shape[30, 2] < face.mean_shape[16, 2]


def test_face_model_errors(tmp_path) -> None:
    with pytest.raises(WeightsError):
        load_face_model(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(WeightsError):
        load_face_model(bad)
    with pytest.raises(WeightsError, match="sha256"):
        load_face_model(WEIGHTS_DIR / LANDMARK_MODELS["landmark"].filename, expected_sha256="0" * 64)


def test_model_identity(model) -> None:
    assert model.family == ModelFamily.LANDMARK and not model.untrained
    assert model.layout.vector_length == 6 + LANDMARK_MODELS["landmark"].coefficients
    assert model.free_view


def test_neutral_motion_rebuilds_the_keyframe(model, portrait) -> None:
    crop, landmarks = portrait
    source = model.prepare_source(crop, pack_keyframe_info(landmarks))
    rebuilt = model.render(source, model.neutral_motion(source)[None])[0]
    assert rebuilt.shape == crop.shape and rebuilt.dtype == np.uint8
    assert psnr(rebuilt, crop) > 40.0


def test_head_turn_moves_the_face_and_free_view_undoes_it(model, portrait) -> None:
    crop, landmarks = portrait
    source = model.prepare_source(crop, pack_keyframe_info(landmarks))
    neutral = model.neutral_motion(source)
    turned = neutral.copy()
    turned[0] += 15.0  # yaw
    turned_image = model.render(source, turned[None])[0]
    assert psnr(turned_image, crop) < 35.0
    driving, _ = model.driving_points(source, turned)
    # Yaw > 0 turns the nose toward the image left (codec.keypoints convention).
    assert driving[30, 0] < source.source_px[30, 0] - 3.0
    back = model.render(source, turned[None], ViewControl(yaw=-15.0))[0]
    assert psnr(back, crop) > psnr(turned_image, crop) + 5.0


def test_motion_follows_a_rendered_turn(model, portrait) -> None:
    """The sender's analysis of a frame the model rendered at a known pose finds that pose."""
    crop, landmarks = portrait
    source = model.prepare_source(crop, pack_keyframe_info(landmarks))
    turned = model.neutral_motion(source)
    turned[0] += 12.0
    image = model.render(source, turned[None])[0]
    tracker = model.motion_tracker()
    measured = tracker.motion(image)
    base = motion_from_landmarks(landmarks, model.image_size, model.face)
    assert measured[0] - base[0] == pytest.approx(12.0, abs=4.0)


def test_tracker_without_a_face_returns_nan(model) -> None:
    tracker = model.motion_tracker()
    blank = np.full((model.image_size, model.image_size, 3), 90, np.uint8)
    vector = tracker.motion(blank)
    assert vector.shape == (model.layout.vector_length,) and np.all(np.isnan(vector))
    # A keyframe without a face still gets valid info (the default face placement).
    assert unpack_keyframe_info(tracker.keyframe_info(blank)).shape == (68, 2)
    with pytest.raises(ValueError):
        tracker.motion(np.zeros((10, 10, 3), np.uint8))


def test_prepare_source_rejects_bad_info(model, portrait) -> None:
    crop, _ = portrait
    with pytest.raises(BitstreamError):
        model.prepare_source(crop, b"")
    with pytest.raises(BitstreamError):
        model.prepare_source(crop, b"\x44" + bytes(272))


def test_extreme_motion_renders_without_error(model, portrait) -> None:
    """Any decodable motion (angles up to ±90°, clamped scale) renders a frame, never raises."""
    crop, landmarks = portrait
    source = model.prepare_source(crop, pack_keyframe_info(landmarks))
    rng = np.random.default_rng(3)
    for _ in range(20):
        motion = rng.uniform(-1, 1, model.layout.vector_length) * np.concatenate(
            [[90, 90, 90, 3, 3, 3], np.full(model.layout.expression_count, 4.0)])
        image = model.render(source, motion[None])[0]
        assert image.shape == crop.shape


def test_the_warp_is_safe_to_run_on_two_threads(model, portrait) -> None:
    """A call renders through one model on two threads (the sender's source or closed-loop
    check, and the receiver). Each thread's maps must be exactly its own: a shared buffer
    once let one thread's refill tear the other's triangle indices (IndexError after 51 min)."""
    import threading

    plain = resolve_model("landmark", refiner=False)
    crop, landmarks = portrait
    source = plain.prepare_source(crop, pack_keyframe_info(landmarks))
    motions = []
    for yaw in (-12.0, 12.0):
        motion = plain.neutral_motion(source).copy()
        motion[0] += yaw  # degrees
        motions.append(motion)
    expected = [plain.warp_maps(source, m) for m in motions]
    wrong = []

    def run(k: int) -> None:
        for _ in range(150):
            got = plain.warp_maps(source, motions[k])
            if not (np.array_equal(got[0], expected[k][0]) and np.array_equal(got[1], expected[k][1])):
                wrong.append(k)

    threads = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not wrong, f"{len(wrong)} of 300 concurrent warps differed from the single-threaded ones"


def test_limit_turn_passes_small_turns_and_bounds_large_ones() -> None:
    """Up to half the limit the angles pass unchanged; beyond, yaw and pitch approach the
    limit smoothly and monotonically and never pass it; roll passes; None is no limit."""
    reference = np.array([10.0, -5.0, 3.0])
    small = np.array([16.0, -12.0, 40.0])
    assert np.allclose(limit_turn(reference, small, 20.0), small)
    yaws = reference[0] + np.linspace(0.0, 80.0, 81)
    limited = np.array([limit_turn(reference, [y, -5.0, 0.0], 20.0)[0] for y in yaws]) - reference[0]
    assert np.all(np.diff(limited) > 0) and limited.max() < 20.0 and limited[-1] > 19.0
    turned = limit_turn(reference, np.array([-70.0, 60.0, 50.0]), 20.0)
    assert -20.0 < turned[0] - reference[0] < -15.0 and 15.0 < turned[1] - reference[1] < 20.0
    assert turned[2] == 50.0
    assert np.array_equal(limit_turn(reference, small, None), small)


def test_turn_limit_draws_a_large_turn_nearer_the_keyframe(model, portrait) -> None:
    """With the limit a 50° turn is drawn as a turn of under the limit (the nose moves less),
    and a turn within half the limit renders exactly as without it."""
    crop, landmarks = portrait
    source = model.prepare_source(crop, pack_keyframe_info(landmarks))
    limited = copy_model(model, 20.0)
    free = copy_model(model, None)
    small, large = model.neutral_motion(source), model.neutral_motion(source)
    small[0] += 8.0
    large[0] += 50.0
    assert np.array_equal(limited.render(source, small[None])[0], free.render(source, small[None])[0])
    nose_free = free.driving_points(source, large)[0][30, 0]
    nose_limited = limited.driving_points(source, large)[0][30, 0]
    at_limit = model.neutral_motion(source)
    at_limit[0] += 20.0
    nose_at_limit = free.driving_points(source, at_limit)[0][30, 0]
    assert nose_free < nose_at_limit <= nose_limited < source.source_px[30, 0]


def copy_model(model: LandmarkModel, limit: float | None) -> LandmarkModel:
    import copy

    other = copy.copy(model)
    other.turn_limit_deg = limit
    return other
