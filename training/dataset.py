"""Training / evaluation data from a segment set built by :mod:`training.dataset_builder`.

torch + numpy + OpenCV only: the accelerator machine has no PyAV, so segments are
decoded with ``cv2.VideoCapture`` (this module must never import ``av``).

- :class:`SegmentStore` — index.json + decoded uint8 frames with a byte-bounded RAM cache.
- :class:`PairDataset` — (source, driving) frame pairs of one segment, with paired
  augmentation (flip, colour jitter, small scale/shift) that keeps the labels right.
- :class:`DevClips` — the dev segments, whole, for evaluation.

Labels per frame: pose (yaw, pitch, roll) degrees — conventions in
:mod:`training.dataset_builder` (yaw > 0: nose to image left; pitch > 0: nose down;
roll > 0: clockwise on screen) — and 68 landmarks (x, y) in pixels of the crop.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "FLIP_PERMUTATION",
    "DevClips",
    "PairDataset",
    "SegmentInfo",
    "SegmentStore",
    "VIDEO_SUFFIXES",
    "video_files",
    "flip_labels",
    "read_video_rgb",
]

# File suffixes taken as videos when a folder is given (builder, trainer, evaluation).
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".m4v", ".flv")


def video_files(path: Path) -> list[Path]:
    """``path`` itself when it is a video file, the video files directly in it when it is a
    folder, else none (a dataset root holds no video files at its top)."""
    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        return [path]
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    return []


def _mirror_permutation() -> np.ndarray:
    """Index map of the 68 dlib points under a horizontal flip (left ↔ right)."""
    perm = np.arange(68)
    pairs = [(i, 16 - i) for i in range(8)]  # jaw 0..16 (8 = chin stays)
    pairs += [(17 + i, 26 - i) for i in range(5)]  # brows
    pairs += [(31, 35), (32, 34)]  # nostrils (33 stays; bridge 27..30 stays)
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lips (51, 57 stay)
    pairs += [(60, 64), (61, 63), (65, 67)]  # inner lips (62, 66 stay)
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm


FLIP_PERMUTATION: np.ndarray = _mirror_permutation()


def flip_labels(pose: np.ndarray, landmarks: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels of the horizontally mirrored image.

    Args:
        pose: …×3 (yaw, pitch, roll) degrees. Mirroring x negates yaw and roll
            (R → S·R·S with S = diag(−1, 1, 1)); pitch is unchanged.
        landmarks: …×68×2 (x, y) pixels; x → width − 1 − x, and left/right points swap
            index (so point 36 is still the image-left outer eye corner).
        width: image width in pixels.
    """
    pose = np.asarray(pose, np.float32) * np.array([-1.0, 1.0, -1.0], np.float32)
    lm = np.asarray(landmarks, np.float32)[..., FLIP_PERMUTATION, :].copy()
    lm[..., 0] = (width - 1) - lm[..., 0]
    return pose, lm


def read_video_rgb(path: str | Path, max_frames: int | None = None) -> np.ndarray:
    """Decode a video with OpenCV alone: N×H×W×3 uint8 RGB.

    Raises:
        OSError: the file cannot be opened or holds no frame.
    """
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise OSError(f"{path}: OpenCV cannot open it")
    frames: list[np.ndarray] = []
    try:
        while max_frames is None or len(frames) < max_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    if not frames:
        raise OSError(f"{path}: no decodable frames")
    return np.stack(frames)


def read_segment(data: Path, segment: dict) -> tuple[np.ndarray, np.ndarray]:
    """(N×S×S×3 uint8 RGB frames, N×68×2 float64 landmarks) of one cached segment of ``data``
    (an index entry with ``file`` and ``labels``), cut to the shorter of the two."""
    frames = read_video_rgb(Path(data) / segment["file"])
    landmarks = np.load(Path(data) / segment["labels"])["landmarks"].astype(np.float64)
    n = min(len(frames), len(landmarks))
    return frames[:n], landmarks[:n]


@dataclass(frozen=True)
class SegmentInfo:
    """One segment's index entry."""

    name: str
    file: str
    labels: str
    identity: str
    source: str
    license: str
    frames: int
    fps: float
    size: int


class SegmentStore:
    """A built segment set: its index, labels and (cached) decoded frames.

    Args:
        root: folder holding index.json (e.g. cache/train256).
        cache_bytes: RAM budget of the decoded-frame cache (least recently used segments
            are evicted). A 10 s 256px segment is 250 × 196 KiB ≈ 49 MB. With DataLoader
            workers, each worker holds its own cache.
        preload: decode every segment now (and keep them all, whatever ``cache_bytes``).
            The whole 256px train set is ≈ 6 GB decoded: fine on the 128 GB GPU machine,
            and it takes the video decoding out of the training loop.
    """

    def __init__(self, root: str | Path, cache_bytes: int = 2 << 30, preload: bool = False) -> None:
        self.root = Path(root)
        with open(self.root / "index.json", encoding="utf-8") as f:
            self.index: dict[str, Any] = json.load(f)
        self.size = int(self.index["size"])
        self.segments = [
            SegmentInfo(s["name"], s["file"], s["labels"], s["identity"], s["source"],
                        s.get("license", "unknown"), int(s["frames"]), float(s["fps"]),
                        int(s.get("size", self.size)))
            for s in self.index["segments"]
        ]
        self.identities: list[str] = sorted({s.identity for s in self.segments})
        self.identity_index = {name: i for i, name in enumerate(self.identities)}
        self.cache_bytes = int(cache_bytes)
        self._frames: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cached = 0
        self._labels: dict[int, dict[str, np.ndarray]] = {}
        self._pinned = preload
        if preload:
            for i in range(len(self.segments)):
                self.frames(i)

    def __len__(self) -> int:
        return len(self.segments)

    def labels(self, i: int) -> dict[str, np.ndarray]:
        """{'pose': N×3 float32 degrees, 'landmarks': N×68×2 float32 crop px, 'detected': N bool}."""
        if i not in self._labels:
            with np.load(self.root / self.segments[i].labels) as z:
                self._labels[i] = {
                    "pose": z["pose"].astype(np.float32),
                    "landmarks": z["landmarks"].astype(np.float32),
                    "detected": z["detected"].astype(bool),
                }
        return self._labels[i]

    def frames(self, i: int) -> np.ndarray:
        """All frames of segment ``i``: N×H×W×3 uint8 RGB (read-only view of the cache)."""
        hit = self._frames.get(i)
        if hit is not None:
            self._frames.move_to_end(i)
            return hit
        frames = read_video_rgb(self.root / self.segments[i].file)
        # the labels are the reference: a decoder that returns a frame more or less is
        # trimmed/padded to them (has not happened with OpenCV 4.14, see tests)
        n = self.segments[i].frames
        if len(frames) > n:
            frames = frames[:n]
        elif len(frames) < n:
            frames = np.concatenate([frames, np.repeat(frames[-1:], n - len(frames), axis=0)])
        frames.setflags(write=False)
        self._frames[i] = frames
        self._cached += frames.nbytes
        while not self._pinned and self._cached > self.cache_bytes and len(self._frames) > 1:
            _, old = self._frames.popitem(last=False)
            self._cached -= old.nbytes
        return frames

    @property
    def cached_bytes(self) -> int:
        """Bytes of decoded frames held now."""
        return self._cached


def _colour_jitter(image: np.ndarray, params: tuple[float, float, float, float]) -> np.ndarray:
    """H×W×3 float32 RGB in [0, 1] → jittered copy, clipped to [0, 1].

    params: (brightness factor, contrast factor, saturation factor, hue shift in turns).
    """
    brightness, contrast, saturation, hue = params
    out = image * brightness
    grey_mean = float((out @ np.array([0.299, 0.587, 0.114], np.float32)).mean())
    out = (out - grey_mean) * contrast + grey_mean
    grey = (out @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    out = (out - grey) * saturation + grey
    out = np.clip(out, 0.0, 1.0).astype(np.float32)
    if hue != 0.0:
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)  # float32: H in [0, 360)
        hsv[..., 0] = np.mod(hsv[..., 0] + hue * 360.0, 360.0)
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return np.clip(out, 0.0, 1.0)


class PairDataset(Dataset):
    """(source, driving) pairs: two distinct frames of one segment, same identity.

    Item ``k`` is a pure function of (seed, epoch, k): the segment, the two frames and
    every augmentation parameter come from ``np.random.default_rng([seed, epoch, k])``,
    so DDP ranks (disjoint k) and resumed runs see exactly the same data.

    Segments are drawn with probability ∝ min(frames, 250): long clips count more than
    1-s ones, but one 200-s monologue cannot dominate.

    Args:
        root: built set (index.json) or an existing :class:`SegmentStore`.
        size: output side; frames are resized (INTER_AREA) if the set's differs.
        augment: paired flip / colour jitter / scale-shift.
        seed: base seed.
        length: items per epoch (default: total frames of the set).
        flip_p: probability of the horizontal flip.
        scale_range: relative zoom range (0.1 = ±10%), with a shift of up to the free margin.
        jitter: (brightness, contrast, saturation, hue) amplitudes; factors are drawn in
            [1 − a, 1 + a], the hue shift in [−a, a] turns.

    Items (dict):
        source, driving: 3×H×W float32 in [0, 1].
        source_pose, driving_pose: 3 float32 (yaw, pitch, roll) degrees.
        source_landmarks, driving_landmarks: 68×2 float32, pixels of the output image.
        identity: int64 index into ``store.identities``.
        segment, source_index, driving_index: int64 (where the pair came from).
        flipped: bool tensor.
    """

    def __init__(
        self,
        root: str | Path | SegmentStore,
        size: int = 256,
        augment: bool = True,
        seed: int = 0,
        length: int | None = None,
        flip_p: float = 0.5,
        scale_range: float = 0.1,
        jitter: tuple[float, float, float, float] = (0.1, 0.1, 0.1, 0.03),
        preload: bool = False,
        cache_bytes: int = 2 << 30,
    ) -> None:
        self.store = root if isinstance(root, SegmentStore) else SegmentStore(
            root, cache_bytes=cache_bytes, preload=preload)
        usable = [i for i, s in enumerate(self.store.segments) if s.frames >= 2]
        if not usable:
            raise ValueError(f"{self.store.root}: no segment with ≥ 2 frames")
        self.size = int(size)
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0
        self.flip_p = flip_p
        self.scale_range = scale_range
        self.jitter = jitter
        self._segments = np.array(usable)
        weights = np.array([min(self.store.segments[i].frames, 250) for i in usable], np.float64)
        self._cdf = np.cumsum(weights / weights.sum())
        self.length = int(length) if length is not None else sum(
            self.store.segments[i].frames for i in usable)

    def set_epoch(self, epoch: int) -> None:
        """Draw a different (still deterministic) set of pairs for this epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def _affine(self, rng: np.random.Generator, flip: bool) -> np.ndarray:
        """2×3 map from stored-crop pixels to output pixels (zoom, shift, flip, resize)."""
        src = float(self.store.size)
        zoom = 1.0
        shift = np.zeros(2)
        if self.augment and self.scale_range > 0:
            zoom = float(rng.uniform(1.0 - self.scale_range, 1.0 + self.scale_range))
            # shift at most the margin a zoom-in leaves, plus a little (edges replicate)
            margin = abs(zoom - 1.0) * src / 2.0 + 0.02 * src
            shift = rng.uniform(-margin, margin, size=2)
        c = (src - 1.0) / 2.0
        # zoom about the centre, then shift; then the resize to self.size
        a = np.array([[zoom, 0.0, c - zoom * c + shift[0]],
                      [0.0, zoom, c - zoom * c + shift[1]]])
        if flip:
            a = np.array([[-1.0, 0.0, src - 1.0], [0.0, 1.0, 0.0]]) @ np.vstack([a, [0, 0, 1]])
        r = self.size / src
        # pixel-centre-correct resize: u = (x + 0.5)·r − 0.5
        resize = np.array([[r, 0.0, 0.5 * r - 0.5], [0.0, r, 0.5 * r - 0.5], [0, 0, 1]])
        return (resize @ np.vstack([a, [0, 0, 1]]))[:2]

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        if not 0 <= k < self.length:
            raise IndexError(k)
        rng = np.random.default_rng([self.seed, self.epoch, int(k)])
        seg = int(self._segments[min(int(np.searchsorted(self._cdf, rng.random())),
                                     len(self._segments) - 1)])
        info = self.store.segments[seg]
        i_src, i_drv = (int(v) for v in rng.choice(info.frames, size=2, replace=False))
        frames = self.store.frames(seg)
        labels = self.store.labels(seg)
        flip = bool(self.augment and rng.random() < self.flip_p)
        affine = self._affine(rng, flip)
        if self.augment and self.jitter is not None:
            b, c, s, h = self.jitter
            jitter = (float(rng.uniform(1 - b, 1 + b)), float(rng.uniform(1 - c, 1 + c)),
                      float(rng.uniform(1 - s, 1 + s)), float(rng.uniform(-h, h)))
        else:
            jitter = None
        out: dict[str, torch.Tensor] = {}
        for role, idx in (("source", i_src), ("driving", i_drv)):
            image = self._warp(frames[idx], affine)
            if jitter is not None:
                image = _colour_jitter(image, jitter)
            pose = labels["pose"][idx]
            lm = labels["landmarks"][idx]
            if flip:
                # mirror x of the labels; the affine already mirrors the pixel positions,
                # so only the left/right index swap and the sign flips are done here
                pose = pose * np.array([-1.0, 1.0, -1.0], np.float32)
                lm = lm[FLIP_PERMUTATION]
            lm = lm @ affine[:, :2].T + affine[:, 2]
            out[role] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
            out[f"{role}_pose"] = torch.from_numpy(np.asarray(pose, np.float32).copy())
            out[f"{role}_landmarks"] = torch.from_numpy(lm.astype(np.float32))
        out["identity"] = torch.tensor(self.store.identity_index[info.identity], dtype=torch.int64)
        out["segment"] = torch.tensor(seg, dtype=torch.int64)
        out["source_index"] = torch.tensor(i_src, dtype=torch.int64)
        out["driving_index"] = torch.tensor(i_drv, dtype=torch.int64)
        out["flipped"] = torch.tensor(flip)
        return out

    def _warp(self, frame: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """H×W×3 uint8 → size×size×3 float32 in [0, 1] through ``affine``."""
        identity = np.array([[1.0, 0, 0], [0, 1.0, 0]])
        if self.size == self.store.size and np.allclose(affine, identity):
            warped = frame
        else:
            shrinking = self.size < self.store.size
            warped = cv2.warpAffine(
                frame, affine, (self.size, self.size),
                # INTER_AREA is not supported by warpAffine; when shrinking, pre-blur instead
                flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE,
            ) if not shrinking else cv2.warpAffine(
                cv2.GaussianBlur(frame, (0, 0), 0.5 * self.store.size / self.size),
                affine, (self.size, self.size), flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REPLICATE,
            )
        return warped.astype(np.float32) / 255.0


class DevClips:
    """The dev segments for evaluation (benchmark protocol: fixed crop, 250 frames, 25 fps).

    Iterating yields ``(name, frames N×H×W×3 uint8 RGB, landmarks N×68×2 float32 crop px,
    pose N×3 float32 degrees)``; frames are decoded on demand and not kept.
    """

    def __init__(self, root: str | Path) -> None:
        self.store = SegmentStore(root, cache_bytes=0)

    def __len__(self) -> int:
        return len(self.store)

    def names(self) -> list[str]:
        """Segment names in index order."""
        return [s.name for s in self.store.segments]

    def __getitem__(self, i: int) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
        info = self.store.segments[i]
        frames = read_video_rgb(self.store.root / info.file)[: info.frames]
        labels = self.store.labels(i)
        return info.name, frames, labels["landmarks"], labels["pose"]

    def __iter__(self) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
        for i in range(len(self)):
            yield self[i]
