"""The refiner's training data: (keyframe, driving) pairs warped on the fly as the receiver warps.

:func:`warp_inputs` is what the receiver has for a frame (the warp, its sampling maps and the
landmark masks), :func:`region_masks` the mouth/eye weights of the loss and the evaluation, and
:class:`RefinerPairs` the DataLoader dataset built from a segment set. Imports torch, numpy,
OpenCV and project modules that import nothing else.
"""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from codec.face_masks import landmark_masks
from codec.families.landmark import LandmarkModel, motion_from_landmarks, pack_keyframe_info
from training.dataset import SegmentStore

# Region masks (loss weight, evaluation): polygons of the true landmarks grown by this many
# pixels at 256 px, so lips, teeth and eyelids all count.
REGION_GROW_PX = 6.0


def warp_inputs(model: LandmarkModel, keyframe: np.ndarray, key_landmarks: np.ndarray,
                driving_landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the receiver has for one frame: (warped S×S×3 uint8, maps 2×S×S float32 pixels,
    landmark masks S×S×L float32).

    The warp is ``cv2.remap`` with the flags ``LandmarkModel.render`` uses (a test checks
    they agree bit for bit); the masks are drawn from the rebuilt driving points.
    """
    size = model.image_size
    source = model.prepare_source(keyframe, pack_keyframe_info(key_landmarks))
    motion = motion_from_landmarks(driving_landmarks, size, model.face)
    map_x, map_y = model.warp_maps(source, motion)
    warped = cv2.remap(source.image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    rebuilt, _ = model.driving_points(source, motion)
    return warped, np.stack([map_x, map_y]), landmark_masks(rebuilt[:68], size)


def region_masks(points_px: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(mouth, eyes) binary S×S float32 masks from true 68-point landmarks, grown by
    ``REGION_GROW_PX`` (scaled with ``size``)."""
    pts = np.asarray(points_px, np.float64)
    grow = max(1, round(REGION_GROW_PX * size / 256.0))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
    out = []
    for ranges in (((48, 60),), ((36, 42), (42, 48))):
        plane = np.zeros((size, size), np.uint8)
        for start, end in ranges:
            if np.all(np.isfinite(pts[start:end])):
                cv2.fillPoly(plane, [np.round(pts[start:end] * 16).astype(np.int32)], 1, shift=4)
        out.append(cv2.dilate(plane, kernel).astype(np.float32))
    return out[0], out[1]


def landmark_warp_model() -> LandmarkModel:
    """The zoo's landmark model without its refiner: the warp is the refiner's input."""
    from codec.zoo import resolve_model

    model = resolve_model("landmark", refiner=False)  # the warp is the refiner's input
    assert isinstance(model, LandmarkModel)
    return model


class RefinerPairs(Dataset):
    """(keyframe, driving) pairs of one train segment, warped on the fly.

    Item ``k`` is a pure function of (seed, start + k): the segment (drawn ∝ min(frames, 250),
    as :class:`training.dataset.PairDataset` does) and two distinct frames with a
    detected face.

    Args:
        root: a built segment set (index.json), e.g. cache/train256.
        seed: base seed.
        start: index of the first item (the samples earlier chunks already used).
        length: items (virtual: pairs are drawn, not enumerated).
        preload: decode every segment now (in threads), before DataLoader workers fork and
            share the frames copy-on-write; otherwise each worker decodes into its own cache.
        cache_bytes: each process's decoded-frame cache when not preloading.

    Items (dict of tensors):
        warped, keyframe, target: 3×S×S uint8 (uint8 keeps worker→trainer traffic small).
        maps: 2×S×S float32 sampling positions in pixels; landmarks: L×S×S float32.
        region: 1×S×S float32, 1 on the true driving mouth/eye regions, else 0.
    """

    def __init__(self, root: str | Path, seed: int = 0, start: int = 0, length: int = 1 << 30,
                 preload: bool = False, cache_bytes: int = 2 << 30) -> None:
        self.store = SegmentStore(root, cache_bytes=(1 << 62) if preload else cache_bytes)
        self.seed, self.start, self.length = int(seed), int(start), int(length)
        self._usable: list[tuple[int, np.ndarray]] = []
        for i, info in enumerate(self.store.segments):
            good = np.flatnonzero(self.store.labels(i)["detected"][:info.frames])
            if len(good) >= 2:
                self._usable.append((i, good))
        if not self._usable:
            raise ValueError(f"{root}: no segment with two frames with a face")
        weights = np.array([min(self.store.segments[i].frames, 250) for i, _ in self._usable], np.float64)
        self._cdf = np.cumsum(weights / weights.sum())
        self._model: LandmarkModel | None = None
        if preload:
            # cv2 decodes outside the GIL; the store's dict takes one insert per segment and
            # never evicts (its budget is unbounded here).
            with concurrent.futures.ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
                list(pool.map(lambda item: self.store.frames(item[0]), self._usable))

    def __len__(self) -> int:
        return self.length

    def pair(self, k: int) -> tuple[int, int, int]:
        """(segment, keyframe index, driving index) of item ``k``."""
        rng = np.random.default_rng([self.seed, self.start + int(k)])
        choice = min(int(np.searchsorted(self._cdf, rng.random())), len(self._usable) - 1)
        segment, good = self._usable[choice]
        i, j = (int(v) for v in rng.choice(good, size=2, replace=False))
        return segment, i, j

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        if not 0 <= k < self.length:
            raise IndexError(k)
        if self._model is None:  # per process: DataLoader workers build their own
            self._model = landmark_warp_model()
        segment, i, j = self.pair(k)
        frames = self.store.frames(segment)
        landmarks = self.store.labels(segment)["landmarks"]
        warped, maps, masks = warp_inputs(self._model, frames[i], landmarks[i], landmarks[j])
        mouth, eyes = region_masks(landmarks[j], self._model.image_size)

        def chw(image: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))

        return {"warped": chw(warped), "keyframe": chw(frames[i]), "target": chw(frames[j]),
                "maps": torch.from_numpy(maps), "landmarks": chw(masks),
                "region": torch.from_numpy(np.maximum(mouth, eyes))[None]}


def worker_init(_: int) -> None:
    # Workers are single-threaded: 16 of them already fill the GPU machine's cores.
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
