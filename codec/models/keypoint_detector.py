"""L: canonical 3D keypoint detector (identity-specific, pose-free keypoints)."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import Hourglass, coordinate_grid, fibonacci_anchors, resize_image


class CanonicalKeypointDetector(nn.Module):
    """L: B×3×H×W image in [0, 1] -> canonical keypoints x_c, B×K×3 in [-1, 1]^3 (x, y, z).

    A 2D hourglass on the image resized to ``image_size`` gives features that a
    1×1 conv lifts to ``volume_channels·depth`` channels, reshaped into a
    volume_channels×depth×s×s volume. A 3×3×3 conv gives K heatmap logits; a
    softmax over each whole volume and the expectation of the coordinate grid
    (soft-argmax) give the keypoints.

    Each heatmap's logits get a Gaussian log-prior around a learnable anchor
    (spread on an ellipsoid at init), so even an untrained detector yields K
    distinct keypoints instead of K copies of the volume centre.
    """

    def __init__(self, num_kp: int = 20, image_size: int = 64, hourglass_channels: int = 32,
                 hourglass_max_channels: int = 256, hourglass_levels: int = 4,
                 volume_channels: int = 16, depth: int = 16, temperature: float = 0.1,
                 anchor_sigma: float = 0.3, image_channels: int = 3) -> None:
        super().__init__()
        self.num_kp = num_kp
        self.image_size = image_size
        self.volume_channels = volume_channels
        self.depth = depth
        self.temperature = temperature
        self.anchor_sigma = anchor_sigma
        self.hourglass = Hourglass(image_channels, hourglass_channels, hourglass_max_channels,
                                   hourglass_levels, dims=2)
        self.to_volume = nn.Conv2d(self.hourglass.out_channels, volume_channels * depth, 1)
        self.to_heatmaps = nn.Conv3d(volume_channels, num_kp, 3, padding=1)
        # Small final weights: logits/temperature start O(1), so the anchor prior
        # decides where keypoints begin while the image still moves them a little.
        with torch.no_grad():
            self.to_heatmaps.weight.mul_(temperature)
            self.to_heatmaps.bias.zero_()
        self.anchors = nn.Parameter(fibonacci_anchors(num_kp))

    def heatmaps(self, image: torch.Tensor) -> torch.Tensor:
        """B×3×H×W -> B×K×depth×s×s probability volumes (each sums to 1)."""
        x = resize_image(image, self.image_size) * 2.0 - 1.0
        x = self.to_volume(self.hourglass(x))
        batch, _, height, width = x.shape
        x = x.view(batch, self.volume_channels, self.depth, height, width)
        logits = self.to_heatmaps(x) / self.temperature
        grid = coordinate_grid(self.depth, height, width, device=x.device, dtype=logits.dtype)
        # log of an isotropic Gaussian around each anchor: B-free, K×D×h×w
        anchors = self.anchors.to(logits.dtype)[:, None, None, None, :]
        sq_dist = ((grid[None] - anchors) ** 2).sum(-1)
        logits = logits - sq_dist / (2.0 * self.anchor_sigma**2)
        probs = torch.softmax(logits.flatten(2), dim=-1)
        return probs.view_as(logits)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """B×3×H×W in [0, 1] -> B×K×3 canonical keypoints (soft-argmax)."""
        probs = self.heatmaps(image)
        depth, height, width = probs.shape[-3:]
        grid = coordinate_grid(depth, height, width, device=probs.device, dtype=probs.dtype)
        # expectation of the coordinates: B×K×N @ N×3
        return probs.flatten(2) @ grid.view(-1, 3)
