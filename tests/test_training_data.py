"""The training-set builder and the OpenCV-only dataset that reads it.

A tiny set is built once per module from the built-in astronaut clip (scripted camera:
known roll) plus a clip with no face, so the whole path — detection, segmenting, H.264
writing, labels, OpenCV read-back, pair sampling and augmentation — runs in seconds.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from codec.facecrop import FaceCropper

REPO = Path(__file__).resolve().parents[1]
NUM_FRAMES = 50  # 2 s at 25 fps: two segments' worth of the ≥ 1 s minimum
FRAME_SIDE = 320  # the astronaut's face is ~65 px tall here: found without upsampling


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny built set: one astronaut clip (identity 'astronaut') and one face-less clip."""
    from codec.media import frames_to_video
    from sender.sources import write_default_clip
    from training.clip_jobs import jobs_from_folder
    from training.dataset_builder import BuildConfig, build_dataset

    src = tmp_path_factory.mktemp("videos")
    (src / "astronaut").mkdir()
    write_default_clip(src / "astronaut" / "scripted.mp4", num_frames=NUM_FRAMES, fps=25.0,
                       size=(FRAME_SIDE, FRAME_SIDE), audio=False)
    # smooth noise: no face anywhere
    rng = np.random.default_rng(0)
    blank = [np.clip(rng.normal(128, 20, (FRAME_SIDE, FRAME_SIDE, 3)), 0, 255).astype(np.uint8)
             for _ in range(30)]
    frames_to_video(src / "noface.mp4", blank, fps=25.0)
    out = tmp_path_factory.mktemp("built") / "train256"
    jobs = jobs_from_folder(src, "train")
    build_dataset(jobs, BuildConfig(out=str(out), workers=1, max_mb=0), log=io.StringIO())
    return out


def _index(root: Path) -> dict:
    return json.loads((root / "index.json").read_text(encoding="utf-8"))


def test_index_and_summary(built: Path) -> None:
    index = _index(built)
    summary = json.loads((built / "summary.json").read_text(encoding="utf-8"))
    assert index["split"] == "train" and index["size"] == 256 and index["fps"] == 25.0
    assert index["identities"] == ["astronaut"]  # folder mode: top-level folder = identity
    segs = index["segments"]
    assert len(segs) >= 1
    assert summary["frames"] == sum(s["frames"] for s in segs) >= 25
    assert summary["bytes"] == sum(s["bytes"] for s in segs) > 0
    assert summary["identities"] == 1 and summary["segments"] == len(segs)
    for s in segs:
        assert s["source"] == "astronaut/scripted.mp4" and s["frames"] >= 25
        assert (built / s["file"]).is_file() and (built / s["labels"]).is_file()
        with np.load(built / s["labels"]) as z:
            assert z["pose"].shape == (s["frames"], 3) and z["pose"].dtype == np.float32
            assert z["landmarks"].shape == (s["frames"], 68, 2)
            assert z["landmarks"].dtype == np.float16
            assert np.isfinite(z["pose"]).all()
            lm = z["landmarks"].astype(np.float32)
            assert (lm > -5).all() and (lm < 261).all()  # crop pixels, face inside the crop


def test_faceless_clip_is_skipped_with_reason(built: Path) -> None:
    index = _index(built)
    assert all(s["source"] != "noface.mp4" for s in index["segments"])
    reasons = [s["reason"] for s in index["skips"] if s["source"] == "noface.mp4"]
    assert reasons and "no face" in reasons[0]


def test_opencv_reads_segments_back(built: Path) -> None:
    from training.dataset import read_video_rgb

    for s in _index(built)["segments"]:
        frames = read_video_rgb(built / s["file"])
        assert frames.shape == (s["frames"], 256, 256, 3) and frames.dtype == np.uint8
        assert frames.std() > 10  # real picture, not a blank


def test_dataset_imports_and_reads_without_pyav(built: Path) -> None:
    code = (
        "import sys; sys.modules['av'] = None\n"
        "from training.dataset import PairDataset, DevClips\n"
        f"ds = PairDataset({str(built)!r}, size=128)\n"
        "item = ds[0]\n"
        "assert item['source'].shape == (3, 128, 128)\n"
        "assert 'av' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_pair_sampling_is_deterministic(built: Path) -> None:
    from training.dataset import PairDataset

    a = PairDataset(built, seed=3, length=20)
    b = PairDataset(built, seed=3, length=20)
    c = PairDataset(built, seed=4, length=20)
    for k in (0, 7, 19):
        x, y = a[k], b[k]
        assert x["source_index"] != x["driving_index"]
        for key in x:
            assert (x[key] == y[key]).all(), key
        assert x["source"].dtype.is_floating_point and 0 <= x["source"].min() <= x["source"].max() <= 1
    picks_a = [(int(a[k]["source_index"]), int(a[k]["driving_index"])) for k in range(20)]
    picks_c = [(int(c[k]["source_index"]), int(c[k]["driving_index"])) for k in range(20)]
    assert picks_a != picks_c
    a.set_epoch(1)
    assert [(int(a[k]["source_index"]), int(a[k]["driving_index"])) for k in range(20)] != picks_a


def test_flip_mirrors_image_and_labels(built: Path) -> None:
    from training.dataset import FLIP_PERMUTATION, PairDataset, flip_labels

    assert sorted(FLIP_PERMUTATION) == list(range(68))
    assert (FLIP_PERMUTATION[FLIP_PERMUTATION] == np.arange(68)).all()
    plain = PairDataset(built, seed=1, length=8, flip_p=0.0, scale_range=0.0, jitter=None)
    flipped = PairDataset(built, seed=1, length=8, flip_p=1.0, scale_range=0.0, jitter=None)
    for k in range(3):
        p, f = plain[k], flipped[k]
        assert bool(f["flipped"]) and not bool(p["flipped"])
        assert torch_equal(f["source"], p["source"].flip(-1))
        yaw, pitch, roll = p["source_pose"].tolist()
        assert np.allclose(f["source_pose"].numpy(), [-yaw, pitch, -roll])
        lm_p, lm_f = p["source_landmarks"].numpy(), f["source_landmarks"].numpy()
        assert np.allclose(lm_f[:, 0], 255 - lm_p[FLIP_PERMUTATION, 0], atol=1e-3)
        assert np.allclose(lm_f[:, 1], lm_p[FLIP_PERMUTATION, 1], atol=1e-3)
        # after the swap, point 36 (outer eye corner) is still on the image left of 45
        assert lm_f[36, 0] < lm_f[45, 0]
        pose2, lm2 = flip_labels(*flip_labels(p["source_pose"].numpy(), lm_p, 256), 256)
        assert np.allclose(pose2, p["source_pose"].numpy()) and np.allclose(lm2, lm_p)


def torch_equal(a, b) -> bool:  # noqa: ANN001 - tiny helper for tensors
    return bool((a == b).all())


def test_pose_labels_follow_mirror_and_scripted_roll(built: Path) -> None:
    """The solver on mirrored landmarks gives (−yaw, pitch, −roll); and the label's roll
    follows the scripted camera: OpenCV rotates the scene counter-clockwise by the camera's
    roll_deg, so the head tilts counter-clockwise on screen, i.e. roll label ≈ −roll_deg."""
    from sender.sources import camera_pose
    from training.dataset import flip_labels
    from training.head_pose import head_pose_from_landmarks

    for s in _index(built)["segments"]:
        with np.load(built / s["labels"]) as z:
            lm, pose = z["landmarks"].astype(np.float64), z["pose"]
        for i in (0, len(lm) // 2):
            mirrored_pose, mirrored_lm = flip_labels(pose[i], lm[i], 256)
            solved, _ = head_pose_from_landmarks(mirrored_lm, 256)
            assert np.allclose(solved, mirrored_pose, atol=0.5), (solved, mirrored_pose)
        scripted = np.array([camera_pose((s["start_frame"] + i) / 25.0).roll_deg
                             for i in range(s["frames"])])
        assert np.corrcoef(pose[:, 2], -scripted)[0, 1] > 0.8
        assert np.abs(pose[:, 2] + scripted - np.mean(pose[:, 2] + scripted)).mean() < 2.0


def test_plan_segments_cuts_on_jump_and_logs_missing_face() -> None:
    from training.segment_plan import plan_segments

    cropper = FaceCropper()
    # a stand-in face: points on a 80×100 px ellipse, level eyes, in a 640×480 frame
    theta = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    base = np.stack([40 * np.cos(theta), 50 * np.sin(theta)], axis=1)
    base[36:42] = [[-25 + 2 * i, -15] for i in range(6)]
    base[42:48] = [[15 + 2 * i, -15] for i in range(6)]
    lm = np.repeat((base + [320, 260])[None], 120, axis=0)
    lm[60:] += [150, 0]  # the face jumps right: the crop must be re-fitted
    lm[100:104] = np.nan  # 4 frames with no face (> max_gap 3): a logged stretch
    plans, skips, _ = plan_segments(lm, (640, 480), cropper, "synthetic")
    assert [(p.start, p.stop) for p in plans] == [(0, 60), (60, 100)]
    reasons = {tuple(s.frames): s.reason for s in skips}
    assert "no face" in reasons[(100, 104)]
    assert "too short" in reasons[(104, 120)]  # 16 frames < 25


def test_train_split_reads_only_train_rows(shared_data: Path) -> None:
    from training.clip_jobs import jobs_from_manifest
    from training.dataset_builder import BuildConfig, build_dataset

    manifest = shared_data / "talking" / "MANIFEST.tsv"
    with open(manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    by_split = {name: {r["path"] for r in rows if r["split"] == name} for name in ("train", "dev")}
    for split, expected in by_split.items():
        jobs = jobs_from_manifest(manifest, split)
        assert {j.source for j in jobs} == expected
        assert all(j.split == split for j in jobs)
    assert not by_split["train"] & by_split["dev"]
    dev_jobs = jobs_from_manifest(manifest, "dev")
    with pytest.raises(ValueError, match="split"):
        build_dataset(dev_jobs[:1], BuildConfig(out="/nonexistent-never-written", split="train"))
