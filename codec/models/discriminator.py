"""D: multi-scale patch discriminator, for training only (never shipped to users)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


@dataclass
class DiscriminatorScaleOutput:
    """One scale's verdict: the activations after each layer (for feature matching)
    and the final patch logits B×1×h×w (for the hinge loss)."""

    features: list[torch.Tensor]
    logits: torch.Tensor


class PatchDiscriminator(nn.Module):
    """PatchGAN: 4×4 stride-2 spectral-normed convs + LeakyReLU, then a 4×4 conv to 1 logit map.

    B×3×H×W in [0, 1] -> :class:`DiscriminatorScaleOutput`. Spectral norm (no
    batch statistics) keeps the hinge GAN stable at small batches.
    """

    def __init__(self, channels: tuple[int, ...] = (32, 64, 128, 256), image_channels: int = 3
                 ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = image_channels
        for width in channels:
            layers.append(nn.Sequential(
                spectral_norm(nn.Conv2d(previous, width, 4, stride=2, padding=1)),
                nn.LeakyReLU(0.2),
            ))
            previous = width
        self.layers = nn.ModuleList(layers)
        self.to_logits = spectral_norm(nn.Conv2d(previous, 1, 4, padding=1))

    def forward(self, image: torch.Tensor) -> DiscriminatorScaleOutput:
        x = image * 2.0 - 1.0
        features: list[torch.Tensor] = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return DiscriminatorScaleOutput(features=features, logits=self.to_logits(x))


class MultiScalePatchDiscriminator(nn.Module):
    """D: one :class:`PatchDiscriminator` per scale (full, 1/2, 1/4 …).

    B×3×H×W in [0, 1] -> list of ``num_scales`` :class:`DiscriminatorScaleOutput`,
    finest first. Used for the hinge GAN loss and feature matching.
    """

    def __init__(self, num_scales: int = 2, channels: tuple[int, ...] = (32, 64, 128, 256),
                 image_channels: int = 3) -> None:
        super().__init__()
        self.scales = nn.ModuleList(PatchDiscriminator(channels, image_channels)
                                    for _ in range(num_scales))

    def forward(self, image: torch.Tensor) -> list[DiscriminatorScaleOutput]:
        outputs: list[DiscriminatorScaleOutput] = []
        for index, discriminator in enumerate(self.scales):
            if index > 0:
                image = F.avg_pool2d(image, 2)  # anti-aliased halving
            outputs.append(discriminator(image))
        return outputs
