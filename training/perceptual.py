"""The training's perceptual loss: multi-scale VGG16 features (the face vid2vid / FOMM loss).

Loads the ``vgg16`` file of :mod:`evaluation.backbones` (made once by
``python -m training.backbones setup``) and imports with torch alone. The parameters are
frozen and the module stays in eval mode; gradients still flow to the *inputs*.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from codec.errors import WeightsError
from evaluation.backbones import VGG16_PLAN, VGG16_RELUS, VGG_LAYERS, backbone_path, freeze, load_state

# ImageNet normalisation of [0, 1] inputs (the same as the LPIPS scaling layer's, see evaluation.lpips).
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGPerceptual(nn.Module):
    """VGG16 feature extractor for the perceptual loss.

    ``forward(x)``: x B×3×H×W RGB in [0, 1] (ImageNet normalisation is applied inside) -> list of
    feature maps at ``layers`` (default ``VGG_LAYERS`` = relu1_2, relu2_2, relu3_3, relu4_1:
    B×64×H×W, B×128×H/2×W/2, B×256×H/4×W/4, B×512×H/8×W/8). The file stores fp16 weights; they
    are upcast to fp32 on load (cast the module yourself for half-precision training).
    """

    def __init__(self, layers: Sequence[str] = VGG_LAYERS) -> None:
        super().__init__()
        unknown = [name for name in layers if name not in VGG16_RELUS]
        if unknown or not layers:
            raise ValueError(f"unknown VGG16 layers {unknown}; choose from {VGG16_RELUS}")
        self.layers = tuple(sorted(set(layers), key=VGG16_RELUS.index))
        deepest = VGG16_RELUS.index(self.layers[-1])
        # Plan up to the deepest requested ReLU; "M" entries become pools in forward.
        self._plan: list[tuple[str, int] | str] = []
        convs, cin = [], 3
        for step in VGG16_PLAN:
            if len(convs) > deepest:
                break
            self._plan.append(step)
            if step != "M":
                convs.append(nn.Conv2d(cin, step[1], 3, padding=1))
                cin = step[1]
        self.convs = nn.ModuleList(convs)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_file(cls, path: Path | str, layers: Sequence[str] = VGG_LAYERS) -> VGGPerceptual:
        """Build from a converted ``vgg16`` file (which must hold convs up to the deepest layer)."""
        model = cls(layers)
        state = load_state(Path(path))
        wanted = set(model.state_dict())
        missing = wanted - set(state)
        if missing:
            raise WeightsError(f"{path} lacks {sorted(missing)} for layers {model.layers}")
        # A file may hold more convs than a shallower layer set needs: take what the model has.
        model.load_state_dict({key: state[key].float() for key in wanted}, strict=True)
        freeze(model)
        return model

    @classmethod
    def from_cache(cls, layers: Sequence[str] = VGG_LAYERS) -> VGGPerceptual:
        """Frozen VGG16 features from ``backbone_path("vgg16")``."""
        return cls.from_file(backbone_path("vgg16"), layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: B×3×H×W in [0, 1] -> [feature map per entry of ``self.layers``], shallow to deep."""
        x = (x - self.mean) / self.std
        out: list[torch.Tensor] = []
        conv_index = 0
        for step in self._plan:
            if step == "M":
                x = F.max_pool2d(x, kernel_size=2, stride=2)
                continue
            x = F.relu(self.convs[conv_index](x))
            conv_index += 1
            if step[0] in self.layers:
                out.append(x)
        return out


def image_pyramid(x: torch.Tensor, scales: Sequence[float]) -> list[torch.Tensor]:
    """x: B×C×H×W -> [x resized by each scale] (scale 1 returns x itself).

    Downsampling is anti-aliased (bilinear with antialias=True) so the coarse levels compare
    content, not aliasing patterns.
    """
    out = []
    for scale in scales:
        if scale == 1:
            out.append(x)
        else:
            out.append(F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False,
                                     antialias=True, recompute_scale_factor=True))
    return out


def multiscale_perceptual_loss(vgg: VGGPerceptual, prediction: torch.Tensor, target: torch.Tensor,
                               scales: Sequence[float] = (1, 0.5, 0.25, 0.125),
                               weights: Sequence[float] | None = None) -> torch.Tensor:
    """Multi-scale VGG perceptual loss of face vid2vid (and FOMM): a scalar.

    prediction, target: B×3×H×W in [0, 1]. For every pyramid scale and every VGG layer, the mean
    absolute difference of the feature maps, times that layer's weight, all summed. ``weights``
    has one entry per ``vgg.layers`` (default all 1; the paper's overall weight of 10 is the
    trainer's to apply). The target's features are computed without gradient (it is the ground truth).
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ")
    weights = tuple(weights) if weights is not None else (1.0,) * len(vgg.layers)
    if len(weights) != len(vgg.layers):
        raise ValueError(f"{len(weights)} weights for {len(vgg.layers)} VGG layers {vgg.layers}")
    total = prediction.new_zeros(())
    for pred_level, target_level in zip(image_pyramid(prediction, scales), image_pyramid(target, scales)):
        pred_features = vgg(pred_level)
        with torch.no_grad():
            target_features = vgg(target_level)
        for weight, fp, ft in zip(weights, pred_features, target_features):
            total = total + weight * torch.mean(torch.abs(fp - ft))
    return total
