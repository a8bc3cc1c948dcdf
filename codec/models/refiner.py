"""A small U-Net that refines the landmark family's analytic warp (:mod:`codec.families.landmark`).

The mesh warp moves the keyframe's pixels; it cannot make what the keyframe lacks (the
inside of an opened mouth, eyes that closed or opened, skin uncovered on a head turn,
background behind a moved head). The refiner sees the warped keyframe, the keyframe
itself, the warp's flow and soft masks of the driving mouth and eyes, and predicts a
correction that a learned gate blends in:

    out = warp + sigmoid(mask_logit) · (rgb − warp),   rgb = warp + residual

The head conv that makes (residual, mask_logit) starts at zero weights, with the mask
bias at −2, so a fresh refiner returns the warp exactly: training can only start from
the warp, never below it.

Imports torch, and numpy + OpenCV through :mod:`codec.face_masks` (the masks it is fed,
built on the CPU), so the receiver and the accelerator machine load it with nothing else.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from codec.errors import WeightsError
from codec.face_masks import LANDMARK_CHANNELS, landmark_masks
from codec.weights_io import verified_sha256

__all__ = ["LANDMARK_CHANNELS", "MASK_BIAS", "REFINER_FORMAT", "Refiner", "frozen_refiner", "landmark_masks",
           "load_refiner", "native_bfloat16"]

REFINER_FORMAT = "facecodec-refiner-v1"

# Gate bias at init: sigmoid(−2) ≈ 0.12, so the residual gets a gradient from step one while
# the gate's own weights wait until the residual is non-zero.
MASK_BIAS = -2.0


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    # No normalisation: batch-1 inference on the receiver must match training exactly, and
    # this net is shallow enough to train with Adam without it.
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.LeakyReLU(0.2, inplace=True))


class Refiner(nn.Module):
    """U-Net refiner of a warped keyframe.

    Input channels: warped keyframe (3), keyframe (3), flow (2), landmark masks
    (``landmark_channels``) = 8 + landmark_channels. The first conv has stride 2, so
    every layer but the last two runs at ≤ half resolution (speed on the receiver's CPU).

    The defaults have 0.59 M parameters (1.2 MB as fp16) and ~0.76 GMAC per 256-px frame
    (its render time is in ``benchmarks/results/landmark-speed-refiner-cpu.json``).

    Args:
        widths: channels at 1/2, 1/4, 1/8, 1/16 of the input size.
        head_width: channels of the full-resolution conv before the output conv.
        landmark_channels: channels of the landmark-mask input (:func:`landmark_masks`).
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128), head_width: int = 8,
                 landmark_channels: int = LANDMARK_CHANNELS) -> None:
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"need at least two levels, got widths {widths}")
        self.config = {"widths": list(widths), "head_width": head_width,
                       "landmark_channels": landmark_channels}
        inputs = 8 + landmark_channels
        self.encoders = nn.ModuleList()
        previous = inputs
        for width in widths:
            self.encoders.append(nn.Sequential(_conv(previous, width, stride=2), _conv(width, width)))
            previous = width
        self.bottleneck = _conv(widths[-1], widths[-1])
        self.decoders = nn.ModuleList()
        for skip in reversed(widths[:-1]):
            self.decoders.append(_conv(previous + skip, skip))
            previous = skip
        self.full = _conv(previous + inputs, head_width)
        # (residual RGB, mask logit); zero weights -> residual 0 and the warp passes through.
        self.head = nn.Conv2d(head_width, 4, 3, padding=1)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()
            self.head.bias[3] = MASK_BIAS

    @staticmethod
    def flow_input(maps: torch.Tensor) -> torch.Tensor:
        """B×2×H×W (map_x, map_y) sampling positions in pixels -> displacement / (W/2).

        The displacement from the identity grid, in half-image units (÷128 at 256 px), so it
        is O(1) and independent of the image size.
        """
        _, _, height, width = maps.shape
        ys = torch.arange(height, device=maps.device, dtype=maps.dtype).view(1, height, 1)
        xs = torch.arange(width, device=maps.device, dtype=maps.dtype).view(1, 1, width)
        identity = torch.stack([xs.expand(1, height, width), ys.expand(1, height, width)], dim=1)
        return (maps - identity) / (width / 2.0)

    def forward(self, warped: torch.Tensor, keyframe: torch.Tensor, maps: torch.Tensor,
                landmarks: torch.Tensor) -> torch.Tensor:
        """Refine a warped keyframe.

        Args:
            warped: B×3×H×W in [0, 1], the keyframe remapped by ``maps``.
            keyframe: B×3×H×W in [0, 1].
            maps: B×2×H×W float (map_x, map_y): where each output pixel samples the keyframe,
                in pixels (``LandmarkModel.warp_maps``).
            landmarks: B×L×H×W soft masks of the driving face (:func:`landmark_masks`).
        H and W must be divisible by 2**len(widths) (16 with the defaults).

        Returns:
            B×3×H×W in [0, 1]; equals ``warped`` exactly while the head is at its init.
        """
        return self.blend(warped, self.trunk(self.inputs(warped, keyframe, maps, landmarks)))

    def inputs(self, warped: torch.Tensor, keyframe: torch.Tensor, maps: torch.Tensor,
               landmarks: torch.Tensor) -> torch.Tensor:
        """``forward``'s arguments -> the U-Net's input, B×(8 + L)×H×W."""
        return torch.cat([warped * 2.0 - 1.0, keyframe * 2.0 - 1.0, self.flow_input(maps), landmarks], dim=1)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """The U-Net: B×(8 + L)×H×W input -> B×4×H×W (residual RGB, mask logit)."""
        skips = []
        h = x
        for encoder in self.encoders:
            h = encoder(h)
            skips.append(h)
        h = self.bottleneck(h)
        for decoder, skip in zip(self.decoders, reversed(skips[:-1])):
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = decoder(torch.cat([h, skip], dim=1))
        h = F.interpolate(h, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(self.full(torch.cat([h, x], dim=1)))

    @staticmethod
    def blend(warped: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """B×3×H×W warp and the trunk's B×4×H×W -> the refined B×3×H×W, in ``warped``'s dtype."""
        out = out.to(warped.dtype)
        residual, gate = out[:, :3], torch.sigmoid(out[:, 3:4])
        # rgb − warp = residual; the clamp is the identity on a warp already in [0, 1].
        return (warped + gate * residual).clamp(0.0, 1.0)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


class _Bfloat16Trunk(nn.Module):
    """A refiner whose U-Net runs in bfloat16, while its input (the flow is in pixels, which
    bfloat16's 8-bit mantissa would round to a pixel or two) and the final blend stay float32."""

    def __init__(self, refiner: Refiner) -> None:
        super().__init__()
        self.refiner = refiner.to(torch.bfloat16)

    def forward(self, warped: torch.Tensor, keyframe: torch.Tensor, maps: torch.Tensor,
                landmarks: torch.Tensor) -> torch.Tensor:
        x = self.refiner.inputs(warped, keyframe, maps, landmarks).to(torch.bfloat16)
        return self.refiner.blend(warped, self.refiner.trunk(x))


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), where oneDNN runs
    bfloat16 convolutions about twice as fast as float32; elsewhere they are emulated, slower."""
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(check() for check in checks if check is not None)
    except RuntimeError:
        return False


def frozen_refiner(refiner: Refiner, size: int, bfloat16: bool | None = None) -> Any:
    """``refiner`` made ready for inference on the CPU: a copy in channels_last, traced and
    frozen (TorchScript), so oneDNN gets its weights packed once and each convolution fused
    with its activation. Same call, same output within a level of 255, and faster on this
    project's 2-core CPU (``benchmarks.decompress_speed``).

    ``bfloat16``: run the U-Net in bfloat16 (:class:`_Bfloat16Trunk`, about twice as fast
    again, frames within a few levels of 255 of float32); None: where the CPU has it
    natively (:func:`native_bfloat16`). Returns ``refiner`` itself on another device,
    while it trains, or where tracing fails (a torch without TorchScript). ``size``: the
    side of the frames it will refine; any batch size runs."""
    import copy
    import logging
    import warnings

    device = next(refiner.parameters()).device
    if device.type != "cpu" or refiner.training:
        return refiner
    if bfloat16 is None:
        bfloat16 = native_bfloat16()
    planes = torch.zeros(1, 3, size, size)
    example = (planes, planes, torch.zeros(1, 2, size, size),
               torch.zeros(1, refiner.config["landmark_channels"], size, size))
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            # TorchScript is deprecated in favour of torch.compile, which gives the same speed
            # here but takes ~30 s to compile on 2 cores and needs a C++ compiler.
            warnings.simplefilter("ignore")
            network = copy.deepcopy(refiner).to(memory_format=torch.channels_last)
            if bfloat16:
                network = _Bfloat16Trunk(network)
            example = tuple(x.contiguous(memory_format=torch.channels_last) for x in example)
            return torch.jit.freeze(torch.jit.trace(network.eval(), example, check_trace=False))
    except Exception as exc:  # noqa: BLE001 (any failure: the eager module still works)
        logging.getLogger(__name__).warning("refiner runs eager, tracing failed: %s", exc)
        return refiner


def load_refiner(path: Any, device: Any = "cpu", expected_sha256: str | None = None
                 ) -> tuple[Refiner, dict[str, Any]]:
    """(fp32 Refiner in eval mode, its metadata) from a ``training.refiner`` export:
    fp16 safetensors whose metadata key ``facecodec`` is JSON {format, config, trained}.

    ``expected_sha256``: the file's registered digest, checked before anything is read
    (WeightsError on a mismatch, a missing file or a file that is not a refiner)."""
    import json
    from pathlib import Path

    from safetensors import SafetensorError, safe_open

    path = Path(path)
    verified_sha256(path, expected_sha256, "refiner weights")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = json.loads((f.metadata() or {}).get("facecodec", "{}"))
            state = {k: f.get_tensor(k).float() for k in f.keys()}  # noqa: SIM118 (no __iter__)
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"refiner weights {path} are not readable safetensors: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != REFINER_FORMAT:
        raise WeightsError(f"{path} is not a {REFINER_FORMAT} file")
    try:
        config = meta["config"]
        refiner = Refiner(tuple(config["widths"]), config["head_width"], config["landmark_channels"])
        refiner.load_state_dict(state, strict=True)
    except (KeyError, TypeError, RuntimeError) as exc:
        raise WeightsError(f"refiner weights {path} do not match their config: {exc}") from exc
    return refiner.to(device).eval(), meta
