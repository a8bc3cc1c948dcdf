"""The vid2vid family (the paper's learned keypoints) behind the model interface.

It stays trainable (:mod:`training`), but this project has no weights for it, so
it only runs as a seeded, untrained network whose output is marked UNTRAINED.
"""

from __future__ import annotations

import numpy as np
import torch

from codec.families.base import ModelFamily, MotionLayout, MotionTracker, TalkingHeadModel, ViewControl
from codec.keypoints import HeadMotion, angles_to_rotation, apply_free_view, frontalize
from codec.models import FaceVid2Vid
from codec.models.vid2vid import SourceState


def image_to_tensor(image: np.ndarray, size: int, device: torch.device | str) -> torch.Tensor:
    """H×W×3 uint8 RGB -> 1×3×size×size float in [0, 1]."""
    import cv2

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H×W×3 uint8 RGB image, got {image.shape} {image.dtype}")
    if image.shape[0] != size or image.shape[1] != size:
        shrinking = image.shape[0] > size
        image = cv2.resize(image, (size, size),
                           interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    tensor = torch.from_numpy(np.ascontiguousarray(image)).to(device)
    return tensor.permute(2, 0, 1)[None].float() / 255.0


def tensor_to_images(batch: torch.Tensor) -> list[np.ndarray]:
    """B×3×H×W in [0, 1] -> list of H×W×3 uint8 RGB."""
    array = (batch.detach().float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)
    return list(array.permute(0, 2, 3, 1).cpu().numpy())


class Vid2VidTracker(MotionTracker):
    """H/Δ on each crop (no state between frames)."""

    def __init__(self, model: Vid2VidModel) -> None:
        self.model = model

    @torch.inference_mode()
    def motion(self, image: np.ndarray) -> np.ndarray:
        net = self.model.network
        tensor = image_to_tensor(image, self.model.image_size, self.model.device)
        pose = net.estimate_motion(tensor)
        angles = torch.stack([pose.yaw, pose.pitch, pose.roll], dim=-1)
        return HeadMotion.from_tensors(angles, pose.translation, pose.expression)[0].to_vector()


class Vid2VidModel(TalkingHeadModel):
    """F, L, H/Δ, M and G of face vid2vid; ``network`` is the torch module."""

    family = ModelFamily.VID2VID
    free_view = True

    def __init__(self, network: FaceVid2Vid, *, name: str, sha256: str, untrained: bool) -> None:
        self.network = network
        self.name = name
        self.sha256 = sha256
        self.untrained = untrained
        self.config = network.config
        self.image_size = network.config.image_size
        self.num_kp = network.config.num_kp
        self.layout = MotionLayout(ModelFamily.VID2VID, 3 * self.num_kp)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def motion_tracker(self) -> Vid2VidTracker:
        return Vid2VidTracker(self)

    @torch.inference_mode()
    def prepare_source(self, image: np.ndarray, info: bytes = b"") -> SourceState:
        return self.network.prepare_source(image_to_tensor(image, self.image_size, self.device))

    def _driving(self, motions: np.ndarray, view: ViewControl | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        parts = [HeadMotion.from_vector(m, self.num_kp).to_tensors(self.device) for m in motions]
        rotation = torch.cat([p[0] for p in parts])
        translation = torch.cat([p[1] for p in parts])
        expression = torch.cat([p[2] for p in parts])
        if view is not None and not view.is_identity:
            if view.frontalize:
                rotation, translation = frontalize(rotation, translation)
            n = rotation.shape[0]
            full = torch.full((n,), 1.0, device=self.device)
            view_rotation = angles_to_rotation(full * view.yaw, full * view.pitch, full * view.roll)
            view_translation = torch.tensor(view.translation, device=self.device).expand(n, 3)
            rotation, translation = apply_free_view(rotation, translation, view_rotation, view_translation)
        return rotation, translation, expression

    @torch.inference_mode()
    def render(self, source: SourceState, motions: np.ndarray,
               view: ViewControl | None = None) -> list[np.ndarray]:
        motions = np.atleast_2d(np.asarray(motions, np.float32))
        rotation, translation, expression = self._driving(motions, view)
        return tensor_to_images(self.network.render(source, rotation, translation, expression))
