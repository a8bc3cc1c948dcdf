"""G: generator (warped source volume -> output frame)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvNormAct2d, ResBlock2d, UpBlock


class Generator(nn.Module):
    """G: source volume B×C×D×h×w, deformation B×D×h×w×3, occlusion B×1×h×w -> B×3×H×W in [0, 1].

    Warps the volume by the deformation (trilinear grid_sample), reshapes it to
    2D with C·D channels, mixes depth with a 1×1 conv and a 3×3 conv-norm-act,
    multiplies by the occlusion map (so occluded regions are left to be
    inpainted), applies residual blocks and upsamples ×2 per entry of
    ``up_channels`` to the image size; a 7×7 conv and a sigmoid give RGB.
    """

    def __init__(self, feature_channels: int = 32, feature_depth: int = 16, channels: int = 256,
                 num_res_blocks: int = 2, up_channels: tuple[int, ...] = (128, 64),
                 image_channels: int = 3) -> None:
        super().__init__()
        # 1×1 first: the 512 C·D channels are mixed cheaply before any 3×3 conv
        self.flatten_depth = nn.Conv2d(feature_channels * feature_depth, channels, 1)
        self.entry = ConvNormAct2d(channels, channels, 3)
        self.res_blocks = nn.Sequential(*(ResBlock2d(channels) for _ in range(num_res_blocks)))
        ups: list[nn.Module] = []
        previous = channels
        for width in up_channels:
            ups.append(UpBlock(previous, width, dims=2))
            previous = width
        self.up = nn.Sequential(*ups)
        self.to_rgb = nn.Conv2d(previous, image_channels, 7, padding=3)

    @staticmethod
    def warp(feature_volume: torch.Tensor, deformation: torch.Tensor) -> torch.Tensor:
        """Sample B×C×D×h×w at B×D×h×w×3 (x, y, z) points -> B×C×D×h×w (zeros outside)."""
        return F.grid_sample(feature_volume, deformation.to(feature_volume.dtype), mode="bilinear",
                             padding_mode="zeros", align_corners=True)

    def forward(self, feature_volume: torch.Tensor, deformation: torch.Tensor,
                occlusion: torch.Tensor) -> torch.Tensor:
        """-> B×3×H×W in [0, 1]."""
        warped = self.warp(feature_volume, deformation)
        batch, channels, depth, height, width = warped.shape
        x = self.flatten_depth(warped.reshape(batch, channels * depth, height, width))
        x = self.entry(x) * occlusion.to(x.dtype)
        x = self.res_blocks(x)
        x = self.up(x)
        return torch.sigmoid(self.to_rgb(x))
