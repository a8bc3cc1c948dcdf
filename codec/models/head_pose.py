"""H/Δ: head pose and expression estimator, the sender's only network."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..keypoints import POSE_BINS
from .blocks import BasicResBlock2d, ConvNormAct2d, StridedResBlock2d, resize_image


class HeadPoseOutput(NamedTuple):
    """Raw outputs of :class:`HeadPoseExpressionEstimator` (a tuple, so it exports/traces).

    yaw_logits, pitch_logits, roll_logits: B×66 each (bins of 3°, see codec.keypoints).
    translation: B×3, t in the normalised volume cube.
    expression: B×K×3, the expression deltas δ.
    """

    yaw_logits: torch.Tensor
    pitch_logits: torch.Tensor
    roll_logits: torch.Tensor
    translation: torch.Tensor
    expression: torch.Tensor


class HeadPoseExpressionEstimator(nn.Module):
    """H/Δ: B×3×H×W image in [0, 1] -> :class:`HeadPoseOutput`.

    Runs on the sender for every frame, on a laptop CPU, so it is a small strided
    ResNet on the image resized to ``image_size`` (128 px for vox256): a stride-2
    stem, then one stride-2 basic block per entry of ``channels[1:]`` (plus
    ``blocks_per_stage`` constant-size blocks each), global average pooling and
    linear heads. The t and δ heads start near zero so an untrained model
    predicts "no motion" rather than random jumps.
    """

    def __init__(self, num_kp: int = 20, image_size: int = 128,
                 channels: tuple[int, ...] = (32, 64, 128, 256, 384),
                 blocks_per_stage: int = 0, image_channels: int = 3) -> None:
        super().__init__()
        self.num_kp = num_kp
        self.image_size = image_size
        stages: list[nn.Module] = [ConvNormAct2d(image_channels, channels[0], 3, stride=2)]
        for in_ch, out_ch in zip(channels[:-1], channels[1:]):
            stages.append(StridedResBlock2d(in_ch, out_ch))
            stages.extend(BasicResBlock2d(out_ch) for _ in range(blocks_per_stage))
        self.backbone = nn.Sequential(*stages)
        feature_dim = channels[-1]
        self.yaw = nn.Linear(feature_dim, POSE_BINS)
        self.pitch = nn.Linear(feature_dim, POSE_BINS)
        self.roll = nn.Linear(feature_dim, POSE_BINS)
        self.translation = nn.Linear(feature_dim, 3)
        self.expression = nn.Linear(feature_dim, 3 * num_kp)
        with torch.no_grad():
            for head in (self.translation, self.expression):
                head.weight.normal_(0.0, 1e-3)
                head.bias.zero_()

    def forward(self, image: torch.Tensor) -> HeadPoseOutput:
        """B×3×H×W in [0, 1] -> (B×66, B×66, B×66, B×3, B×K×3)."""
        x = resize_image(image, self.image_size) * 2.0 - 1.0
        features = self.backbone(x).mean(dim=(2, 3))
        return HeadPoseOutput(
            yaw_logits=self.yaw(features),
            pitch_logits=self.pitch(features),
            roll_logits=self.roll(features),
            translation=self.translation(features),
            expression=self.expression(features).view(-1, self.num_kp, 3),
        )
