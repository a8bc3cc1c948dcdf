"""The trainer's perceptual network replaced by a seeded random-weight stand-in, for tests.

The converted VGG16 may be absent where tests run, so in-process tests monkeypatch
``training.train_run.load_perceptual_backbone`` with :func:`stand_in_backbone`, and
subprocess tests run this file instead of ``python -m training`` (same arguments; it
installs the stand-in, then runs that CLI), e.g. under ``torchrun``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import torch
from torch import nn

log = logging.getLogger("training")


class RandomVGGStandIn(nn.Module):
    """A seeded random-weight net shaped like the perceptual VGG16 stack — for tests ONLY.

    The layout of ``training.perceptual.VGGPerceptual`` (3×3 conv + ReLU, 2× max-pool
    between stages) up to relu4_1, at ``width`` × VGG16's widths; returns the relu1_2,
    relu2_2, relu3_3 and relu4_1 activations (B×3×H×W -> 4 maps, names in ``layers``, as
    ``multiscale_perceptual_loss`` expects). Frozen. Random conv features still make a
    usable structural loss, but nothing trained with it is a product model;
    :func:`stand_in_backbone` logs a loud warning whenever it is used.
    """

    layers = ("relu1_2", "relu2_2", "relu3_3", "relu4_1")

    def __init__(self, seed: int = 0, width: float = 0.25) -> None:
        super().__init__()
        widths = [max(4, int(c * width)) for c in (64, 128, 256, 512)]
        blocks = []
        previous = 3
        generator = torch.Generator().manual_seed(seed)
        for index, (channels, depth) in enumerate(zip(widths, (2, 2, 3, 1))):
            layers: list[nn.Module] = [nn.MaxPool2d(2)] if index else []
            for _ in range(depth):
                conv = nn.Conv2d(previous, channels, 3, padding=1)
                with torch.no_grad():  # He init from our own generator: same net for a seed
                    conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator)
                                      * (2.0 / (9 * previous)) ** 0.5)
                    conv.bias.zero_()
                layers += [conv, nn.ReLU()]
                previous = channels
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(blocks)
        self.requires_grad_(False)
        self.eval()

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = image * 2.0 - 1.0
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features


def stand_in_backbone(cfg: Any) -> nn.Module:
    """Replaces ``load_perceptual_backbone``: the stand-in seeded with the run's seed."""
    log.warning("!" * 72)
    log.warning("PERCEPTUAL BACKBONE = RANDOM-WEIGHT VGG-SHAPED STAND-IN (seed %d). "
                "TEST/SMOKE USE ONLY: weights trained this way are not a product model.", cfg.seed)
    log.warning("!" * 72)
    return RandomVGGStandIn(seed=cfg.seed)


def install() -> None:
    """Make every later training run in this process use the stand-in."""
    from training import train_run

    train_run.load_perceptual_backbone = stand_in_backbone


if __name__ == "__main__":
    install()
    from training.__main__ import main

    sys.exit(main())
