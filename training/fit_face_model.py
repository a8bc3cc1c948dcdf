"""Fit the landmark family's face model on the train split: a mean 3D face and an
expression basis over dlib's 68 points (see :mod:`codec.face3d`).

Usage::

    python -m training.fit_face_model --data cache/train256 \
        --out codec/weights/landmark/face_model.safetensors

Input is the dataset builder's per-frame landmarks (``segments/*.npz``, crop pixels).
Steps:

1. Start from the 2D mean of similarity-aligned shapes, with depths from rough head
   proportions (``_DEPTH_PRIOR_MM``).
2. Alternate (a) a weak-perspective pose per frame against the current shape and
   (b) each point's 3D position by least squares over all frames' views of it, pulled
   gently toward the start (ridge), so depth comes from the head turns in the data.
3. Expression offsets per frame (:func:`codec.face3d.expression_offsets`), centred per
   segment so that identity (constant within a segment) does not use up the basis;
   PCA of those gives the basis, ordered by variance.

Only train segments are read; nothing from dev is used.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from codec.face3d import NUM_LANDMARKS, FaceModel, expression_offsets, fit_pose, pixels_to_unit, project

# Rough depth of each dlib point behind the nose tip, in millimetres for outer eye
# corners 90 mm apart (the same head proportions as the dataset builder's pose model:
# eye corners, mouth corners and chin well behind the nose; the jaw line runs back to
# the ears). Only a start: step 2 refits every depth from the data.
_DEPTH_PRIOR_MM = np.array(
    [80, 70, 62, 55, 48, 42, 36, 32, 30, 32, 36, 42, 48, 55, 62, 70, 80]  # jaw 0–16
    + [45, 38, 33, 30, 29, 29, 30, 33, 38, 45]  # brows 17–26
    + [20, 14, 8, 0, 16, 13, 12, 13, 16]  # nose 27–35
    + [40, 32, 31, 28, 31, 33, 28, 31, 32, 40, 33, 31]  # eyes 36–47
    + [28, 24, 21, 20, 21, 24, 28, 24, 22, 21, 22, 24]  # outer lips 48–59
    + [27, 22, 21, 22, 27, 22, 21, 22],  # inner lips 60–67
    dtype=np.float64)

MAX_COEFFICIENTS = 32


def load_landmarks(data: Path, every: int = 2) -> tuple[np.ndarray, np.ndarray, int]:
    """All segments' landmarks (every ``every``-th frame) in normalised units.

    Returns (F×68×2, segment id per frame F, crop size)."""
    index = json.loads((data / "index.json").read_text(encoding="utf-8"))
    size = int(index.get("size", 256))
    shapes, segment_ids = [], []
    for number, segment in enumerate(index["segments"]):
        labels = np.load(data / "segments" / (Path(segment["file"]).stem + ".npz"))
        landmarks = labels["landmarks"].astype(np.float64)[::every]
        landmarks = landmarks[np.all(np.isfinite(landmarks.reshape(len(landmarks), -1)), axis=1)]
        shapes.append(pixels_to_unit(landmarks, size))
        segment_ids.append(np.full(len(landmarks), number))
    return np.concatenate(shapes), np.concatenate(segment_ids), size


def _normalise(shape: np.ndarray) -> np.ndarray:
    """Centre on the mean point and scale x/y to unit RMS radius."""
    shape = shape - shape.mean(axis=0)
    return shape / np.sqrt(np.mean(np.sum(shape[:, :2] ** 2, axis=1)))


def initial_shape(landmarks: np.ndarray) -> np.ndarray:
    """2D similarity-aligned mean of the shapes, with the depth prior (68×3)."""
    reference = _normalise(np.concatenate([landmarks[0], np.zeros((NUM_LANDMARKS, 1))], axis=1))[:, :2]
    for _ in range(3):
        aligned = []
        for shape in landmarks[:: max(1, len(landmarks) // 4000)]:
            centred = shape - shape.mean(axis=0)
            u, _, vt = np.linalg.svd(centred.T @ reference)
            rotation = u @ vt
            rotated = centred @ rotation
            aligned.append(rotated / np.sqrt(np.mean(np.sum(rotated ** 2, axis=1))))
        reference = np.mean(aligned, axis=0)
    eye_span = np.linalg.norm(reference[45] - reference[36])
    depth = _DEPTH_PRIOR_MM * eye_span / 90.0
    return _normalise(np.concatenate([reference, (depth - depth.mean())[:, None]], axis=1))


def refine_shape(landmarks: np.ndarray, shape: np.ndarray, iterations: int = 4,
                 ridge: float = 0.05, log=print) -> np.ndarray:
    """Alternate per-frame poses and per-point 3D positions (see the module docstring)."""
    start = shape.copy()
    for iteration in range(iterations):
        poses = [fit_pose(frame, shape) for frame in landmarks]
        # Per point j: Σ_f ||A_f X_j − (l_fj − t_f)||² + ridge·F·||X_j − X_j⁰||², A_f = s·R[:2].
        a = np.stack([pose.scale * pose.rotation[:2] for pose in poses])  # F×2×3
        t = np.stack([pose.translation for pose in poses])  # F×2
        normal = np.einsum("fij,fik->jk", a, a)  # 3×3, shared by all points
        weight = ridge * len(poses)
        new = np.empty_like(shape)
        for j in range(NUM_LANDMARKS):
            rhs = np.einsum("fij,fi->j", a, landmarks[:, j] - t)
            new[j] = np.linalg.solve(normal + weight * np.eye(3), rhs + weight * start[j])
        shape = _normalise(new)
        error = np.mean([np.sqrt(np.mean(np.sum((project(shape, p) - lm) ** 2, axis=1)))
                         for p, lm in zip(poses[::50], landmarks[::50])])
        log(f"shape iteration {iteration + 1}: rms reprojection {error:.4f} (normalised units)")
    return shape


def fit_basis(landmarks: np.ndarray, segment_ids: np.ndarray, shape: np.ndarray,
              k: int = MAX_COEFFICIENTS) -> tuple[FaceModel, np.ndarray]:
    """Expression PCA on per-segment-centred offsets; returns (model, variance ratios)."""
    offsets = np.stack([expression_offsets(lm, shape, fit_pose(lm, shape)).reshape(-1)
                        for lm in landmarks])
    mean = offsets.mean(axis=0)
    centred = offsets.copy()
    for segment in np.unique(segment_ids):
        rows = segment_ids == segment
        centred[rows] -= centred[rows].mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    variance = singular ** 2 / np.sum(singular ** 2)
    basis = vt[:k]
    scales = singular[:k] / np.sqrt(len(centred))
    return FaceModel(mean_shape=shape, basis=basis, basis_mean=mean, scales=scales), variance


def save_face_model(model: FaceModel, path: Path, info: dict) -> None:
    """fp32 safetensors (a few kB); one metadata key so the bytes (and sha256) are stable."""
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: torch.from_numpy(np.ascontiguousarray(value, np.float32))
               for name, value in (("mean_shape", model.mean_shape), ("basis", model.basis),
                                   ("basis_mean", model.basis_mean), ("scales", model.scales))}
    save_file(tensors, str(path), metadata={"facecodec": json.dumps(info, sort_keys=True)})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.fit_face_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("cache/train256"),
                   help="train set written by training.dataset_builder (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("codec/weights/landmark/face_model.safetensors"),
                   help="output file (default: %(default)s)")
    p.add_argument("--every", type=int, default=2, help="use every N-th frame (default: %(default)s)")
    p.add_argument("--iterations", type=int, default=4, help="shape refinement rounds (default: %(default)s)")
    args = p.parse_args(argv)
    started = time.perf_counter()
    index = json.loads((args.data / "index.json").read_text(encoding="utf-8"))
    if index.get("split", "train") != "train":
        print(f"error: {args.data} is not a train split", file=sys.stderr)
        return 2
    landmarks, segment_ids, size = load_landmarks(args.data, args.every)
    print(f"{len(landmarks)} frames from {len(np.unique(segment_ids))} train segments ({size}px)")
    shape = refine_shape(landmarks, initial_shape(landmarks), args.iterations)
    model, variance = fit_basis(landmarks, segment_ids, shape)
    cumulative = np.cumsum(variance)
    for k in (4, 8, 12, 16, 24, 32):
        print(f"K={k:2d}: {100 * cumulative[k - 1]:.1f}% of within-segment offset variance")
    info = {"format": "facecodec-face-model-v1", "frames": int(len(landmarks)),
            "segments": int(len(np.unique(segment_ids))), "every": args.every,
            "iterations": args.iterations, "crop_size": size,
            "variance_explained": [round(float(v), 5) for v in cumulative[:MAX_COEFFICIENTS]]}
    save_face_model(model, args.out, info)
    print(f"wrote {args.out} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
