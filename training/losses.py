"""The training losses of face vid2vid, one small function each (torch only).

Paper (Wang et al., CVPR 2021, sec. 3.3 + appendix): the generator minimises

    L = λ_P·L_P + λ_G·L_G + λ_E·L_E + λ_L·L_L + λ_H·L_H + λ_Δ·L_Δ

with (λ_P, λ_G, λ_E, λ_L, λ_H, λ_Δ) = (10, 1, 20, 10, 20, 5) (:class:`LossWeights`).
L_G is the hinge GAN loss of a multi-scale patch discriminator plus feature matching
(pix2pixHD); the paper gives no separate weight for feature matching, so we use the
common pix2pixHD/face-vid2vid-reimplementation value 10 (``LossWeights.feature_matching``).

Exact definitions are in each function's docstring. Shapes: B batch, K keypoints,
H×W image size, S discriminator scales.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from codec.keypoints import POSE_BINS, degrees_to_bin
from codec.models.discriminator import DiscriminatorScaleOutput

# Paper: hinge on squared pairwise distance below D_t, and mean keypoint depth pulled to z_t.
KEYPOINT_SPREAD = 0.1
KEYPOINT_MEAN_DEPTH = 0.33


@dataclass(frozen=True)
class LossWeights:
    """λ of each term. Defaults are the paper's (10, 1, 20, 10, 20, 5) plus feature matching 10.

    ``discriminator`` scales the discriminator's own hinge loss (its only loss).
    """

    perceptual: float = 10.0
    gan: float = 1.0
    feature_matching: float = 10.0
    equivariance: float = 20.0
    keypoint_prior: float = 10.0
    head_pose: float = 20.0
    deformation_prior: float = 5.0
    discriminator: float = 1.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


# ---------------------------------------------------------------------------- perceptual
def perceptual_loss(vgg: nn.Module, prediction: torch.Tensor, target: torch.Tensor,
                    scales: Sequence[float] = (1.0, 0.5, 0.25, 0.125)) -> torch.Tensor:
    """Multi-scale VGG perceptual loss L_P (scalar).

    prediction, target: B×3×H×W in [0, 1]. Delegates to
    :func:`training.perceptual.multiscale_perceptual_loss` (L1 between VGG19/16 feature
    maps of both images at each scale of an image pyramid); imported lazily so this module
    stays importable without the backbone code.
    """
    from training.perceptual import multiscale_perceptual_loss

    return multiscale_perceptual_loss(vgg, prediction, target.detach(), scales=tuple(scales))


# ---------------------------------------------------------------------------- GAN
def discriminator_hinge_loss(real: Sequence[DiscriminatorScaleOutput],
                             fake: Sequence[DiscriminatorScaleOutput]) -> torch.Tensor:
    """Hinge loss of D, averaged over scales (scalar).

    For each scale with patch logits D(x) of shape B×1×h×w:
    mean(relu(1 − D(real))) + mean(relu(1 + D(fake))). Zero once every real patch
    scores ≥ 1 and every fake patch ≤ −1. ``fake`` must come from detached images.
    """
    if len(real) != len(fake) or not real:
        raise ValueError(f"need the same non-zero number of scales, got {len(real)} and {len(fake)}")
    total = real[0].logits.new_zeros(())
    for r, f in zip(real, fake):
        total = total + F.relu(1.0 - r.logits.float()).mean() + F.relu(1.0 + f.logits.float()).mean()
    return total / len(real)


def generator_hinge_loss(fake: Sequence[DiscriminatorScaleOutput]) -> torch.Tensor:
    """Generator side of the hinge GAN, averaged over scales: mean(−D(fake)) (scalar).

    Unbounded below by design (the generator keeps pushing its patches to look real).
    """
    if not fake:
        raise ValueError("no discriminator scales")
    return sum(-f.logits.float().mean() for f in fake) / len(fake)


def feature_matching_loss(real: Sequence[DiscriminatorScaleOutput],
                          fake: Sequence[DiscriminatorScaleOutput]) -> torch.Tensor:
    """pix2pixHD feature matching: L1 between D's activations on real and fake (scalar).

    For each scale, mean absolute difference of every intermediate feature map
    (B×C_l×h_l×w_l), summed over layers, then averaged over scales. Real features are
    detached: the loss only moves the generator.
    """
    if len(real) != len(fake) or not real:
        raise ValueError(f"need the same non-zero number of scales, got {len(real)} and {len(fake)}")
    total = real[0].logits.new_zeros((), dtype=torch.float32)
    for r, f in zip(real, fake):
        for fr, ff in zip(r.features, f.features):
            total = total + F.l1_loss(ff.float(), fr.detach().float())
    return total / len(real)


# ---------------------------------------------------------------------------- equivariance
def random_affine(batch: int, *, max_rotation_degrees: float = 15.0, max_scale: float = 0.1,
                  max_translation: float = 0.1, generator: torch.Generator | None = None
                  ) -> torch.Tensor:
    """B×2×3 random 2D similarity transforms T in normalised [-1, 1] image coordinates.

    T maps a point p of the *transformed* image to where it comes from in the original:
    transformed(p) = original(T·[p, 1]) — the grid_sample / affine_grid convention.
    Sampled on the CPU from ``generator`` (or the global CPU RNG), so training stays
    reproducible whatever the device. Rotation uniform in ±max_rotation_degrees, scale
    in 1 ± max_scale, translation in ±max_translation per axis.
    """
    angle = (torch.rand(batch, generator=generator) * 2 - 1) * math.radians(max_rotation_degrees)
    scale = 1.0 + (torch.rand(batch, generator=generator) * 2 - 1) * max_scale
    shift = (torch.rand(batch, 2, generator=generator) * 2 - 1) * max_translation
    cos, sin = angle.cos() * scale, angle.sin() * scale
    return torch.stack([torch.stack([cos, -sin, shift[:, 0]], -1),
                        torch.stack([sin, cos, shift[:, 1]], -1)], dim=1)


def warp_image(image: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Apply T (B×2×3, see :func:`random_affine`) to B×3×H×W images -> B×3×H×W.

    align_corners=True matches the keypoint grid (``linspace(-1, 1, n)`` voxel centres);
    reflection padding avoids black borders the network could key on.
    """
    theta = theta.to(device=image.device, dtype=image.dtype)
    grid = F.affine_grid(theta, list(image.shape), align_corners=True)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="reflection", align_corners=True)


def apply_affine_to_points(points: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """T·[p, 1] for B×K×2 points (x, y) and B×2×3 T -> B×K×2."""
    theta = theta.to(device=points.device, dtype=points.dtype)
    return points @ theta[:, :, :2].transpose(1, 2) + theta[:, None, :, 2]


def equivariance_loss(driving_keypoints: torch.Tensor, transformed_keypoints: torch.Tensor,
                      theta: torch.Tensor) -> torch.Tensor:
    """L_E: keypoints must move with a known 2D warp of the image (scalar).

    driving_keypoints: B×K×3, x_d of the driving image. transformed_keypoints: B×K×3,
    the keypoints the model gives for ``warp_image(driving, theta)`` (same canonical x_c,
    the warped image's own R, t, δ). theta: B×2×3.

    Our keypoints are 3D but the warp is 2D, so — as in the paper — we compare only the
    (x, y) projection: mean |x_d[..., :2] − T(x'_d[..., :2])| (a keypoint at p in the
    warped image sits at T·p in the original). Depth is left free.
    """
    mapped = apply_affine_to_points(transformed_keypoints[..., :2].float(), theta)
    return F.l1_loss(driving_keypoints[..., :2].float(), mapped)


# ---------------------------------------------------------------------------- priors
def keypoint_prior_loss(keypoints: torch.Tensor, spread: float = KEYPOINT_SPREAD,
                        mean_depth: float = KEYPOINT_MEAN_DEPTH) -> torch.Tensor:
    """L_L: keep the K keypoints apart and at a set mean depth (scalar).

    keypoints: B×K×3 (x, y, z) in the volume cube. Per sample:
    Σ_{i<j} max(0, D_t − ‖x_i − x_j‖²) + |mean_k z_k − z_t|, averaged over the batch,
    with D_t = 0.1 and z_t = 0.33 (paper). Zero for keypoints whose squared pairwise
    distances are all ≥ D_t and whose mean depth is exactly z_t.
    """
    kp = keypoints.float()
    sq_dist = ((kp[:, :, None, :] - kp[:, None, :, :]) ** 2).sum(-1)  # B×K×K
    num_kp = kp.shape[1]
    upper = torch.triu(torch.ones(num_kp, num_kp, dtype=torch.bool, device=kp.device), diagonal=1)
    spread_term = (F.relu(spread - sq_dist) * upper).sum(dim=(1, 2))
    depth_term = (kp[..., 2].mean(dim=1) - mean_depth).abs()
    return (spread_term + depth_term).mean()


def deformation_prior_loss(expression: torch.Tensor) -> torch.Tensor:
    """L_Δ: L1 on the expression deltas δ (B×K×3), mean over all entries (scalar).

    Keeps δ small, so rigid head motion is explained by R and t, not by δ.
    """
    return expression.float().abs().mean()


# ---------------------------------------------------------------------------- head pose
def head_pose_loss(yaw_logits: torch.Tensor, pitch_logits: torch.Tensor, roll_logits: torch.Tensor,
                   predicted_degrees: torch.Tensor, target_degrees: torch.Tensor,
                   ce_weight: float = 0.1) -> torch.Tensor:
    """L_H: predicted head pose against pseudo-labels (scalar).

    *_logits: B×66 bin logits; predicted_degrees, target_degrees: B×3 (yaw, pitch, roll)
    in degrees, our convention (codec.keypoints). The loss is

        mean |deg2rad(pred − target)|  +  ce_weight · mean_angle CE(logits, bin(target))

    L1 in radians keeps the term comparable to the others at λ_H = 20 (10° of error
    costs 0.17); the Hopenet-style cross-entropy on the 66 bins gives a gradient to far
    bins the soft expectation barely moves. Targets outside ±99° clamp to the end bins.
    """
    l1 = (torch.deg2rad(predicted_degrees.float() - target_degrees.float())).abs().mean()
    if ce_weight == 0.0:
        return l1
    ce = predicted_degrees.new_zeros((), dtype=torch.float32)
    for index, logits in enumerate((yaw_logits, pitch_logits, roll_logits)):
        if logits.shape[-1] != POSE_BINS:
            raise ValueError(f"pose logits must have {POSE_BINS} bins, got {logits.shape[-1]}")
        ce = ce + F.cross_entropy(logits.float(), degrees_to_bin(target_degrees[:, index].float()))
    return l1 + ce_weight * ce / 3.0
