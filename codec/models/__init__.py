"""The face vid2vid networks. Imports torch and numpy only (no I/O, no transport)."""

from __future__ import annotations

import torch

from ..config import ModelConfig, get_config
from .appearance import AppearanceFeatureExtractor
from .discriminator import (
    DiscriminatorScaleOutput,
    MultiScalePatchDiscriminator,
    PatchDiscriminator,
)
from .generator import Generator
from .head_pose import HeadPoseExpressionEstimator, HeadPoseOutput
from .keypoint_detector import CanonicalKeypointDetector
from .motion import MotionFieldEstimator, MotionOutput
from .vid2vid import FaceVid2Vid, PoseExpression, SourceState, Vid2VidOutput

__all__ = [
    "AppearanceFeatureExtractor", "CanonicalKeypointDetector", "DiscriminatorScaleOutput",
    "FaceVid2Vid", "Generator", "HeadPoseExpressionEstimator", "HeadPoseOutput",
    "MotionFieldEstimator", "MotionOutput", "MultiScalePatchDiscriminator", "PatchDiscriminator",
    "PoseExpression", "SourceState", "Vid2VidOutput", "build_discriminator", "build_model",
]


def _resolve(config: ModelConfig | str) -> ModelConfig:
    return get_config(config) if isinstance(config, str) else config


def build_model(config: ModelConfig | str, seed: int | None = None) -> FaceVid2Vid:
    """A randomly initialised :class:`FaceVid2Vid` in eval mode.

    With ``seed``, initialisation is deterministic (same seed -> bitwise same
    weights) and the caller's global RNG state is left untouched.
    """
    cfg = _resolve(config)
    if seed is None:
        return FaceVid2Vid(cfg).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return FaceVid2Vid(cfg).eval()


def build_discriminator(config: ModelConfig | str, seed: int | None = None
                        ) -> MultiScalePatchDiscriminator:
    """The training discriminator for ``config`` (train mode), seeded like :func:`build_model`."""
    cfg = _resolve(config)

    def make() -> MultiScalePatchDiscriminator:
        return MultiScalePatchDiscriminator(cfg.discriminator_scales, cfg.discriminator_channels)

    if seed is None:
        return make()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()
