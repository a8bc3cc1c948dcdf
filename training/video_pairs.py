"""Training pairs read straight from video files (quick single-clip runs, the CPU proof).

:func:`build_dataset` picks the dataset for a ``--data`` path: this module's
:class:`VideoPairDataset` for a video file or a folder of them, else the real training data,
:class:`training.dataset.PairDataset`. Imports torch, numpy and OpenCV alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from training.dataset import read_video_rgb, video_files

log = logging.getLogger("training")  # the trainer's logger: its rank-0-only level applies


class VideoPairDataset(Dataset):
    """Pairs of frames of the same clip from video files read with OpenCV.

    For quick single-clip experiments and the CPU proof (the real training data is
    ``training.dataset.PairDataset``). Items follow PairDataset's dict layout;
    there are no pose pseudo-labels or landmarks, so "source_pose"/"driving_pose" are
    NaN (the head-pose loss skips them). Item ``i`` of epoch ``e`` is a pure function
    of (seed, e, i), so resumed runs see the same pairs.
    """

    def __init__(self, videos: Sequence[Path], size: int, length: int | None = None,
                 seed: int = 0, max_frames: int | None = None) -> None:
        self.clips: list[np.ndarray] = []
        for video in videos:
            frames = read_video_rgb(video, max_frames)
            if frames.shape[1] != size or frames.shape[2] != size:
                frames = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA)
                                   for f in frames])
            self.clips.append(frames)
        self.length = length or sum(len(c) for c in self.clips)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        clip = self.clips[int(rng.integers(len(self.clips)))]
        a, b = rng.integers(len(clip), size=2)
        nan = torch.full((3,), float("nan"))

        def tensor(frame: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(frame).permute(2, 0, 1).float() / 255.0

        return {"source": tensor(clip[a]), "driving": tensor(clip[b]), "source_pose": nan,
                "driving_pose": nan.clone(), "identity": 0}


def build_dataset(path: Path, size: int, seed: int, length: int | None = None) -> Dataset:
    """PairDataset for a dataset root; VideoPairDataset for a video file or a folder of them."""
    path = Path(path)
    videos = video_files(path)
    if videos:
        log.info("training on %d video file(s) under %s (no pose pseudo-labels)", len(videos), path)
        return VideoPairDataset(videos, size, length=length, seed=seed)
    from training.dataset import PairDataset

    return PairDataset(path, size=size, augment=True, seed=seed, length=length)
