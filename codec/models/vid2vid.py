"""FaceVid2Vid: the five inference networks (F, L, H/Δ, M, G) and how they fit together."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from ..config import ModelConfig
from ..keypoints import angles_to_rotation, bins_to_degrees, transform_keypoints
from .appearance import AppearanceFeatureExtractor
from .generator import Generator
from .head_pose import HeadPoseExpressionEstimator
from .keypoint_detector import CanonicalKeypointDetector
from .motion import MotionFieldEstimator, MotionOutput


@dataclass
class PoseExpression:
    """Head motion of a batch of frames, as H/Δ estimates it.

    yaw, pitch, roll: B angles in degrees (soft expectation over the 66 bins).
    translation: B×3. expression: B×K×3 (δ).
    yaw_logits, pitch_logits, roll_logits: B×66 raw bin logits (for the pose loss).
    """

    yaw: torch.Tensor
    pitch: torch.Tensor
    roll: torch.Tensor
    translation: torch.Tensor
    expression: torch.Tensor
    yaw_logits: torch.Tensor
    pitch_logits: torch.Tensor
    roll_logits: torch.Tensor

    def angles(self) -> torch.Tensor:
        """B×3 (yaw, pitch, roll) in degrees, the layout of ``HeadMotion.angles``."""
        return torch.stack([self.yaw, self.pitch, self.roll], dim=-1)

    def rotation(self) -> torch.Tensor:
        """B×3×3 rotation R_z(roll)·R_y(yaw)·R_x(pitch)."""
        return angles_to_rotation(self.yaw, self.pitch, self.roll)


@dataclass
class SourceState:
    """Everything that depends only on the keyframe; the receiver caches it.

    feature_volume: B×C×D×h×w (F). canonical_keypoints: B×K×3 (L).
    rotation: B×3×3, translation: B×3, expression: B×K×3 (H/Δ on the keyframe).
    source_keypoints: B×K×3, x_s = R_s·x_c + t_s + δ_s.
    """

    feature_volume: torch.Tensor
    canonical_keypoints: torch.Tensor
    rotation: torch.Tensor
    translation: torch.Tensor
    expression: torch.Tensor
    source_keypoints: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.feature_volume.shape[0])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
           ) -> SourceState:
        """A copy on another device and/or floating dtype (e.g. fp16 on a GPU)."""
        return SourceState(**{f.name: getattr(self, f.name).to(device=device, dtype=dtype)
                              for f in fields(self)})

    def expand(self, batch: int) -> SourceState:
        """Broadcast a batch-1 state to ``batch`` (views, no copy); no-op at ``batch`` already."""
        if self.batch_size == batch:
            return self
        if self.batch_size != 1:
            raise ValueError(f"cannot broadcast a source of batch {self.batch_size} to {batch}")
        expanded = {}
        for f in fields(self):
            value = getattr(self, f.name)
            expanded[f.name] = value.expand(batch, *value.shape[1:])
        return SourceState(**expanded)


@dataclass
class Vid2VidOutput:
    """What :meth:`FaceVid2Vid.forward` returns for training.

    prediction: B×3×H×W in [0, 1], the driving frame rebuilt from the source.
    source_pose, driving_pose: :class:`PoseExpression` of each image.
    canonical_keypoints: B×K×3 x_c of the source image.
    source_keypoints, driving_keypoints: B×K×3 x_s and x_d.
    source_rotation, driving_rotation: B×3×3.
    deformation: B×D×h×w×3, occlusion: B×1×h×w, masks: B×(K+1)×D×h_m×w_m (from M).
    """

    prediction: torch.Tensor
    source_pose: PoseExpression
    driving_pose: PoseExpression
    canonical_keypoints: torch.Tensor
    source_keypoints: torch.Tensor
    driving_keypoints: torch.Tensor
    source_rotation: torch.Tensor
    driving_rotation: torch.Tensor
    deformation: torch.Tensor
    occlusion: torch.Tensor
    masks: torch.Tensor


class FaceVid2Vid(nn.Module):
    """The inference model of the codec, built from a :class:`ModelConfig`.

    Networks: ``appearance`` (F), ``canonical_kp`` (L), ``head_pose`` (H/Δ,
    the sender's only network), ``motion`` (M) and ``generator`` (G).
    Images are B×3×H×W RGB in [0, 1] with H = W = config.image_size.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.appearance = AppearanceFeatureExtractor(
            encoder_channels=c.appearance_channels, feature_channels=c.feature_channels,
            feature_depth=c.feature_depth, num_res_blocks=c.appearance_res_blocks)
        self.canonical_kp = CanonicalKeypointDetector(
            num_kp=c.num_kp, image_size=c.kp_image_size, hourglass_channels=c.kp_hourglass_channels,
            hourglass_max_channels=c.kp_hourglass_max_channels,
            hourglass_levels=c.kp_hourglass_levels, volume_channels=c.kp_volume_channels,
            depth=c.kp_depth, temperature=c.kp_temperature, anchor_sigma=c.kp_anchor_sigma)
        self.head_pose = HeadPoseExpressionEstimator(
            num_kp=c.num_kp, image_size=c.head_pose_image_size, channels=c.head_pose_channels,
            blocks_per_stage=c.head_pose_blocks_per_stage)
        self.motion = MotionFieldEstimator(
            feature_channels=c.feature_channels, feature_depth=c.feature_depth, num_kp=c.num_kp,
            compressed_channels=c.motion_compressed_channels,
            hourglass_channels=c.motion_hourglass_channels,
            hourglass_max_channels=c.motion_hourglass_max_channels,
            hourglass_levels=c.motion_hourglass_levels, downscale=c.motion_downscale,
            kp_variance=c.kp_variance)
        self.generator = Generator(
            feature_channels=c.feature_channels, feature_depth=c.feature_depth,
            channels=c.generator_channels, num_res_blocks=c.generator_res_blocks,
            up_channels=c.generator_up_channels)

    # ------------------------------------------------------------------ sender
    def estimate_motion(self, image: torch.Tensor) -> PoseExpression:
        """H/Δ on B×3×H×W in [0, 1] -> :class:`PoseExpression` (angles in degrees)."""
        raw = self.head_pose(image)
        return PoseExpression(
            yaw=bins_to_degrees(raw.yaw_logits), pitch=bins_to_degrees(raw.pitch_logits),
            roll=bins_to_degrees(raw.roll_logits), translation=raw.translation,
            expression=raw.expression, yaw_logits=raw.yaw_logits,
            pitch_logits=raw.pitch_logits, roll_logits=raw.roll_logits)

    # ------------------------------------------------------------------ receiver
    def prepare_source(self, image: torch.Tensor) -> SourceState:
        """F, L and H/Δ on the keyframe B×3×H×W -> :class:`SourceState` (cache it)."""
        return self._prepare_source(image, self.estimate_motion(image))

    def _prepare_source(self, image: torch.Tensor, pose: PoseExpression) -> SourceState:
        feature_volume = self.appearance(image)
        canonical = self.canonical_kp(image)
        rotation = pose.rotation().to(canonical.dtype)
        translation = pose.translation.to(canonical.dtype)
        expression = pose.expression.to(canonical.dtype)
        return SourceState(
            feature_volume=feature_volume, canonical_keypoints=canonical, rotation=rotation,
            translation=translation, expression=expression,
            source_keypoints=transform_keypoints(canonical, rotation, translation, expression))

    def render(self, source: SourceState, rotation: torch.Tensor, translation: torch.Tensor,
               expression: torch.Tensor) -> torch.Tensor:
        """Rebuild frames from the cached source and the driving motion.

        rotation B×3×3, translation B×3, expression B×K×3 -> B×3×H×W in [0, 1].
        A batch-1 ``source`` is broadcast against B driving motions.
        """
        return self._render(source, rotation, translation, expression)[0]

    def _render(self, source: SourceState, rotation: torch.Tensor, translation: torch.Tensor,
                expression: torch.Tensor) -> tuple[torch.Tensor, MotionOutput, torch.Tensor]:
        batch = rotation.shape[0]
        if translation.shape != (batch, 3) or expression.shape != (batch, self.config.num_kp, 3):
            raise ValueError(
                f"driving motion shapes {tuple(rotation.shape)}, {tuple(translation.shape)}, "
                f"{tuple(expression.shape)} do not match B×3×3, B×3, B×{self.config.num_kp}×3")
        source = source.expand(batch)
        dtype = source.canonical_keypoints.dtype
        rotation, translation, expression = (
            v.to(dtype) for v in (rotation, translation, expression))
        driving_kp = transform_keypoints(
            source.canonical_keypoints, rotation, translation, expression)
        motion = self.motion(source.feature_volume, source.source_keypoints, driving_kp,
                             source.rotation, rotation)
        image = self.generator(source.feature_volume, motion.deformation, motion.occlusion)
        return image, motion, driving_kp

    # ------------------------------------------------------------------ training
    def forward(self, source_image: torch.Tensor, driving_image: torch.Tensor) -> Vid2VidOutput:
        """Reconstruct ``driving_image`` from ``source_image`` (both B×3×H×W in [0, 1])."""
        source_pose = self.estimate_motion(source_image)
        driving_pose = self.estimate_motion(driving_image)
        source = self._prepare_source(source_image, source_pose)
        driving_rotation = driving_pose.rotation()
        prediction, motion, driving_kp = self._render(
            source, driving_rotation, driving_pose.translation, driving_pose.expression)
        return Vid2VidOutput(
            prediction=prediction, source_pose=source_pose, driving_pose=driving_pose,
            canonical_keypoints=source.canonical_keypoints,
            source_keypoints=source.source_keypoints, driving_keypoints=driving_kp,
            source_rotation=source.rotation, driving_rotation=driving_rotation,
            deformation=motion.deformation, occlusion=motion.occlusion, masks=motion.masks)

    # ------------------------------------------------------------------ bookkeeping
    def parameter_counts(self) -> dict[str, int]:
        """Parameters per network (F, L, H/Δ, M, G by attribute name) and their "total"."""
        counts = {name: sum(p.numel() for p in getattr(self, name).parameters())
                  for name in ("appearance", "canonical_kp", "head_pose", "motion", "generator")}
        counts["total"] = sum(counts.values())
        return counts

    def inference_parameter_count(self) -> int:
        """Parameters of F + L + H/Δ + M + G (what ships; the discriminator is not included)."""
        return self.parameter_counts()["total"]
