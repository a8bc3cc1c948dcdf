"""Face crop: detection on the astronaut, no-face errors, crop padding, real-clip stability."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage import data as skimage_data

from codec.errors import FaceNotFoundError
from codec.facecrop import CropBox, FaceCropper, detect_landmarks, face_height


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()  # 512×512×3 uint8, public domain


def test_astronaut_face_found_and_crop_centred(astronaut: np.ndarray) -> None:
    landmarks = detect_landmarks(astronaut)
    assert landmarks is not None and landmarks.shape == (68, 2)
    # the face is in the upper middle of the photo (x ≈ 170..280, y ≈ 70..180)
    centre = landmarks.mean(axis=0)
    assert 180 < centre[0] < 270 and 90 < centre[1] < 170

    cropper = FaceCropper(out_size=256)
    box = cropper.fit([astronaut])
    crop = cropper.crop(astronaut, box)
    assert crop.shape == (256, 256, 3) and crop.dtype == np.uint8
    # landmarks in crop coordinates: horizontally centred, vertically a bit below centre
    # (the box is shifted up to include the hair), and the face fills ~half the crop
    in_crop = (landmarks - [box.cx - box.size / 2, box.cy - box.size / 2]) * 256 / box.size
    x_min, y_min = in_crop.min(axis=0)
    x_max, y_max = in_crop.max(axis=0)
    assert abs((x_min + x_max) / 2 - 128) < 0.08 * 256
    assert 0 < (y_min + y_max) / 2 - 128 < 0.2 * 256
    assert 0.45 < face_height(landmarks) / box.size < 0.65
    assert box.contains(landmarks, margin=0.05)


def test_face_left_box(astronaut: np.ndarray) -> None:
    cropper = FaceCropper()
    box = cropper.fit([astronaut])
    assert not cropper.face_left_box(astronaut, box)
    # the face moved by 30% of the box: refresh
    moved = np.roll(astronaut, shift=int(0.3 * box.size), axis=1)
    assert cropper.face_left_box(moved, box)
    # same place, much smaller box than the face needs: refresh
    assert cropper.face_left_box(astronaut, CropBox(box.cx, box.cy, box.size * 0.6))
    # no face at all: refresh
    assert cropper.face_left_box(np.zeros_like(astronaut), box)


def test_no_face_raises() -> None:
    cropper = FaceCropper()
    with pytest.raises(FaceNotFoundError, match="no face"):
        cropper.fit([skimage_data.coffee()])
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    assert detect_landmarks(noise) is None
    with pytest.raises(FaceNotFoundError):
        cropper.fit([noise, noise])
    with pytest.raises(FaceNotFoundError):
        cropper.fit([])


def test_crop_inside_is_a_slice() -> None:
    image = np.random.default_rng(1).integers(0, 256, (100, 120, 3), dtype=np.uint8)
    box = CropBox(cx=60, cy=50, size=40)  # window x 40..80, y 30..70
    np.testing.assert_array_equal(box.crop(image, 40), image[30:70, 40:80])
    assert box.crop(image, 20).shape == (20, 20, 3)  # shrink (INTER_AREA)
    assert box.crop(image, 97).shape == (97, 97, 3)  # enlarge (INTER_LINEAR)


def test_crop_pads_with_edge_replication() -> None:
    # distinct value per pixel so replication is checkable
    ys, xs = np.mgrid[0:50, 0:60]
    image = np.stack([ys * 4, xs * 4, (ys + xs) % 256], axis=-1).astype(np.uint8)
    box = CropBox(cx=5, cy=45, size=20)  # window x -5..15, y 35..55: left and bottom out
    crop = box.crop(image, 20)
    assert crop.shape == (20, 20, 3)
    np.testing.assert_array_equal(crop[:15, 5:], image[35:50, 0:15])  # inside part
    np.testing.assert_array_equal(crop[:15, :5], np.repeat(image[35:50, :1], 5, axis=1))
    np.testing.assert_array_equal(crop[15:, 5:], np.repeat(image[49:50, 0:15], 5, axis=0))
    np.testing.assert_array_equal(crop[15:, :5], np.broadcast_to(image[49, 0], (5, 5, 3)))
    # a box entirely outside still works (nearest edge pixel everywhere)
    far = CropBox(cx=-100, cy=-100, size=10).crop(image, 8)
    np.testing.assert_array_equal(far, np.broadcast_to(image[0, 0], (8, 8, 3)))


def test_cropbox_contains_and_validation() -> None:
    box = CropBox(cx=50, cy=50, size=40)  # spans 30..70
    assert box.contains(np.array([[31.0, 69.0], [50, 50]]))
    assert not box.contains(np.array([[31.0, 69.0]]), margin=0.1)  # 34..66 with margin
    assert not box.contains(np.array([[71.0, 50.0]]))
    with pytest.raises(ValueError):
        CropBox(cx=0, cy=0, size=0)
    with pytest.raises(ValueError):
        CropBox(cx=float("nan"), cy=0, size=10)


def test_real_clip_box_stable(shared_data: Path) -> None:
    """On a VoxCeleb-cropped clip the box ≈ the frame and barely moves frame to frame."""
    clip = shared_data / "talking" / "first-order-model" / "10.mp4"
    if not clip.is_file():
        pytest.skip(f"{clip} missing")
    from codec.media import read_frames

    frames = [f.image for f in read_frames(clip, fps=25.0, max_frames=50)]
    cropper = FaceCropper()
    box = cropper.fit(frames)
    height, width = frames[0].shape[:2]
    assert 0.85 < box.size / min(height, width) < 1.15
    assert abs(box.cx - width / 2) < 0.1 * width and abs(box.cy - height / 2) < 0.1 * height
    per_frame = []
    for frame in frames[::5]:
        landmarks = detect_landmarks(frame)
        assert landmarks is not None
        per_frame.append(cropper.box_for(landmarks))
        assert not cropper.face_left_box(frame, box, landmarks=landmarks)
    spread = np.std([[b.cx, b.cy, b.size] for b in per_frame], axis=0) / box.size
    assert np.all(spread < 0.05), spread


def test_default_source_moves_the_face() -> None:
    from sender.sources import camera_pose, default_source

    source = default_source(num_frames=40, fps=25.0)
    frames = list(source)
    assert len(frames) == len(source) == 40
    assert frames[0].shape == (512, 512, 3) and frames[0].dtype == np.uint8
    # deterministic: the same scripted path every time
    np.testing.assert_array_equal(frames[7], list(default_source(num_frames=8))[7])
    poses = [camera_pose(t / 25.0) for t in range(250)]
    assert max(abs(p.roll_deg) for p in poses) <= 5.0
    assert all(0.95 <= p.zoom <= 1.05 for p in poses)
    first, later = detect_landmarks(frames[0]), detect_landmarks(frames[39])
    assert first is not None and later is not None
    assert np.linalg.norm(first.mean(axis=0) - later.mean(axis=0)) > 3.0  # the face moved
