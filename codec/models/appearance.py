"""F: appearance feature extractor (image -> 3D feature volume of the keyframe)."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import ConvNormAct2d, DownBlock, ResBlock3d


class AppearanceFeatureExtractor(nn.Module):
    """F: B×3×H×W image in [0, 1] -> B×C×D×h×w feature volume.

    A 2D encoder takes the image to h = H / 2**(len(encoder_channels) - 1), a 1×1
    conv lifts it to C·D channels that are reshaped into a C×D×h×w volume, and
    3D residual blocks mix along depth (paper: 32×16×64×64 at 256 px). Runs once
    per keyframe on the receiver, so it may be heavier per call than M or G.
    """

    def __init__(self, encoder_channels: tuple[int, ...] = (64, 128, 256),
                 feature_channels: int = 32, feature_depth: int = 16,
                 num_res_blocks: int = 6, image_channels: int = 3) -> None:
        super().__init__()
        self.feature_channels = feature_channels
        self.feature_depth = feature_depth
        self.stem = ConvNormAct2d(image_channels, encoder_channels[0], kernel_size=7)
        self.down = nn.Sequential(*(
            DownBlock(encoder_channels[i], encoder_channels[i + 1], dims=2)
            for i in range(len(encoder_channels) - 1)
        ))
        self.to_volume = nn.Conv2d(encoder_channels[-1], feature_channels * feature_depth, 1)
        self.res_blocks = nn.Sequential(*(ResBlock3d(feature_channels)
                                          for _ in range(num_res_blocks)))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """B×3×H×W in [0, 1] -> B×C×D×h×w."""
        x = self.stem(image * 2.0 - 1.0)  # centre the input; GroupNorm follows anyway
        x = self.down(x)
        x = self.to_volume(x)
        batch, _, height, width = x.shape
        volume = x.view(batch, self.feature_channels, self.feature_depth, height, width)
        return self.res_blocks(volume)
