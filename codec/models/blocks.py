"""Building blocks shared by the face vid2vid networks.

Normalisation: GroupNorm everywhere. It normalises each sample on its own, so a
network behaves identically in train and eval mode, at batch 1 on the receiver
and at the small batches (2–8) that fit training at 256 px. BatchNorm would
need running statistics that are noisy at such batches and differ between
train and eval; InstanceNorm on 1–4-channel groups throws away the absolute
feature scale that the warped 3D volume carries.

Coordinates: every grid here uses ``align_corners=True`` semantics, i.e. voxel
centres at ``linspace(-1, 1, n)``, so the identity grid samples a volume
exactly and a linearly upsampled coordinate field stays exact.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Upper bound on GroupNorm groups; 8 keeps ≥ 4 channels per group in the 32-channel volume.
MAX_NORM_GROUPS = 8
MIN_CHANNELS_PER_GROUP = 4


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the most groups (≤ 8) that still leaves ≥ 4 channels per group."""
    groups = 1
    for candidate in range(MAX_NORM_GROUPS, 0, -1):
        if channels % candidate == 0 and channels // candidate >= MIN_CHANNELS_PER_GROUP:
            groups = candidate
            break
    return nn.GroupNorm(groups, channels)


def coordinate_grid(depth: int, height: int, width: int, *, device: torch.device | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Voxel-centre coordinates of a D×H×W volume as D×H×W×3 in (x, y, z) grid_sample order.

    x runs along W, y along H, z along D, each ``linspace(-1, 1, n)``.
    """
    zs = torch.linspace(-1.0, 1.0, depth, device=device, dtype=dtype)
    ys = torch.linspace(-1.0, 1.0, height, device=device, dtype=dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=device, dtype=dtype)
    z, y, x = torch.meshgrid(zs, ys, xs, indexing="ij")
    return torch.stack([x, y, z], dim=-1)


def resize_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize B×C×H×W to B×C×size×size, anti-aliased when shrinking.

    An exact integer shrink uses average pooling (cheap, and it is the box filter
    a camera would give); other ratios use antialiased bilinear.
    """
    height, width = image.shape[-2:]
    if height == size and width == size:
        return image
    if height == width and height > size and height % size == 0:
        return F.avg_pool2d(image, kernel_size=height // size)
    return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=height > size or width > size)


def pool_spatial(x: torch.Tensor) -> torch.Tensor:
    """2× average pooling of the last two axes of B×C×H×W or B×C×D×H×W (depth kept).

    The 3D case folds depth into channels and uses the 2D kernel: same result as
    avg_pool3d with kernel (1, 2, 2), but faster and available for fp16/bf16 on CPU too.
    """
    if x.dim() == 4:
        return F.avg_pool2d(x, 2)
    batch, channels, depth, height, width = x.shape
    pooled = F.avg_pool2d(x.reshape(batch, channels * depth, height, width), 2)
    return pooled.view(batch, channels, depth, height // 2, width // 2)


def upsample_spatial(x: torch.Tensor) -> torch.Tensor:
    """2× nearest upsampling of the last two axes of B×C×H×W or B×C×D×H×W (depth kept)."""
    if x.dim() == 4:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    batch, channels, depth, height, width = x.shape
    up = F.interpolate(x.reshape(batch, channels * depth, height, width), scale_factor=2.0,
                       mode="nearest")
    return up.view(batch, channels, depth, height * 2, width * 2)


class ConvNormAct2d(nn.Sequential):
    """Conv2d → GroupNorm → ReLU. B×in×H×W -> B×out×(H/stride)×(W/stride)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1) -> None:
        super().__init__(
            # bias is redundant before a norm that re-centres
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                      padding=kernel_size // 2, bias=False),
            group_norm(out_channels),
            nn.ReLU(inplace=True),
        )


class ConvNormAct3d(nn.Sequential):
    """Conv3d → GroupNorm → ReLU. B×in×D×H×W -> B×out×D×H×W."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            group_norm(out_channels),
            nn.ReLU(inplace=True),
        )


class ResBlock2d(nn.Module):
    """Pre-activation residual block (norm-act-conv ×2 + skip). B×C×H×W -> same."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1 = group_norm(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = group_norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return x + out


class ResBlock3d(nn.Module):
    """Pre-activation 3D residual block. B×C×D×H×W -> same."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1 = group_norm(channels)
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = group_norm(channels)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return x + out


class StridedResBlock2d(nn.Module):
    """ResNet basic block that halves the resolution: B×in×H×W -> B×out×H/2×W/2."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False)
        self.norm1 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = group_norm(out_channels)
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False),
            group_norm(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class BasicResBlock2d(nn.Module):
    """ResNet basic block at constant resolution (post-activation, as in ResNet-18)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm1 = group_norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = group_norm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        return F.relu(x + self.norm2(self.conv2(out)))


class DownBlock(nn.Module):
    """conv-norm-act then 2× average pooling of the spatial (H, W) axes.

    dims=2: B×in×H×W -> B×out×H/2×W/2. dims=3: B×in×D×H×W -> B×out×D×H/2×W/2
    (depth is kept: the volume has only 16 depth slices to begin with).
    """

    def __init__(self, in_channels: int, out_channels: int, dims: int = 2) -> None:
        super().__init__()
        self.block = (ConvNormAct2d if dims == 2 else ConvNormAct3d)(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool_spatial(self.block(x))


class UpBlock(nn.Module):
    """2× nearest upsampling of (H, W) then conv-norm-act (inverse of :class:`DownBlock`)."""

    def __init__(self, in_channels: int, out_channels: int, dims: int = 2) -> None:
        super().__init__()
        self.block = (ConvNormAct2d if dims == 2 else ConvNormAct3d)(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(upsample_spatial(x))


class Hourglass(nn.Module):
    """U-Net style encoder-decoder with skip concatenation, 2D or 3D.

    B×in×(D×)H×W -> B×out_channels×(D×)H×W with ``out_channels = base + in``:
    the input itself is concatenated to the last decoder output so fine detail
    (e.g. the exact keypoint heatmaps in M) reaches the heads unchanged.
    Level i has ``min(max_channels, base·2^(i+1))`` channels at H/2^(i+1).
    """

    def __init__(self, in_channels: int, base_channels: int, max_channels: int,
                 num_levels: int, dims: int = 2) -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims}")

        def width(level: int) -> int:
            return min(max_channels, base_channels * 2**level)

        self.encoder = nn.ModuleList(
            DownBlock(in_channels if i == 0 else width(i), width(i + 1), dims)
            for i in range(num_levels)
        )
        self.decoder = nn.ModuleList(
            # the deepest level has no skip to concatenate; the others double by concat
            UpBlock((1 if i == num_levels - 1 else 2) * width(i + 1), width(i), dims)
            for i in reversed(range(num_levels))
        )
        self.out_channels = base_channels + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [x]
        for down in self.encoder:
            skips.append(down(skips[-1]))
        out = skips.pop()
        for up in self.decoder:
            out = torch.cat([up(out), skips.pop()], dim=1)
        return out


def fibonacci_anchors(num_points: int, radii: tuple[float, float, float] = (0.5, 0.5, 0.25)
                      ) -> torch.Tensor:
    """Deterministic, evenly spread points on an ellipsoid: num_points×3 in (x, y, z).

    Used to start keypoints apart (a Fibonacci lattice has no two points close).
    """
    golden_angle = math.pi * (3.0 - math.sqrt(5.0))
    i = torch.arange(num_points, dtype=torch.float64)
    y = 1.0 - 2.0 * (i + 0.5) / num_points
    ring = torch.sqrt((1.0 - y * y).clamp(min=0.0))
    theta = golden_angle * i
    x, z = ring * torch.cos(theta), ring * torch.sin(theta)
    points = torch.stack([x * radii[0], y * radii[1], z * radii[2]], dim=-1)
    return points.float()
