"""Head-pose and keypoint geometry shared by the sender, the receiver and training.

Conventions (one place, so every module agrees):
- Angles are in degrees: yaw about the y axis, pitch about x, roll about z.
- R = R_z(roll) · R_y(yaw) · R_x(pitch); a keypoint moves as x = R·x_c + t + δ.
- Keypoint coordinates live in the normalised feature-volume cube [-1, 1]^3 in
  (x, y, z) order, matching ``torch.nn.functional.grid_sample``.
- The pose network predicts ``POSE_BINS`` bins of ``POSE_BIN_DEGREES`` each,
  centred on zero; the angle is the soft expectation over the bins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

POSE_BINS = 66
POSE_BIN_DEGREES = 3.0
# Bin i covers [-99 + 3i, -96 + 3i); its centre is used for the expectation.
_POSE_FIRST_CENTRE = -POSE_BINS * POSE_BIN_DEGREES / 2.0 + POSE_BIN_DEGREES / 2.0


def pose_bin_centres(device: torch.device | None = None) -> torch.Tensor:
    """Centres of the pose bins in degrees, shape POSE_BINS."""
    idx = torch.arange(POSE_BINS, dtype=torch.float32, device=device)
    return _POSE_FIRST_CENTRE + POSE_BIN_DEGREES * idx


def bins_to_degrees(logits: torch.Tensor) -> torch.Tensor:
    """Soft expectation over pose bins: B×POSE_BINS logits -> B angles in degrees."""
    probs = torch.softmax(logits.float(), dim=-1)
    return (probs * pose_bin_centres(logits.device)).sum(dim=-1)


def degrees_to_bin(angles: torch.Tensor) -> torch.Tensor:
    """Nearest bin index for each angle (for a cross-entropy pose loss), clamped to range."""
    idx = torch.round((angles - _POSE_FIRST_CENTRE) / POSE_BIN_DEGREES)
    return idx.clamp(0, POSE_BINS - 1).long()


def angles_to_rotation(yaw: torch.Tensor, pitch: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """B yaw, pitch, roll in degrees -> B×3×3 rotation matrices R_z(roll)·R_y(yaw)·R_x(pitch)."""
    y, p, r = (torch.deg2rad(a.float()) for a in (yaw, pitch, roll))
    one, zero = torch.ones_like(y), torch.zeros_like(y)
    rx = torch.stack([one, zero, zero,
                      zero, p.cos(), -p.sin(),
                      zero, p.sin(), p.cos()], dim=-1).view(-1, 3, 3)
    ry = torch.stack([y.cos(), zero, y.sin(),
                      zero, one, zero,
                      -y.sin(), zero, y.cos()], dim=-1).view(-1, 3, 3)
    rz = torch.stack([r.cos(), -r.sin(), zero,
                      r.sin(), r.cos(), zero,
                      zero, zero, one], dim=-1).view(-1, 3, 3)
    return rz @ ry @ rx


def rotation_to_angles(rotation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """B×3×3 rotations -> (yaw, pitch, roll) in degrees; exact inverse for |yaw| < 90°."""
    r = rotation.float()
    yaw = torch.atan2(-r[:, 2, 0], torch.sqrt(r[:, 0, 0] ** 2 + r[:, 1, 0] ** 2))
    pitch = torch.atan2(r[:, 2, 1], r[:, 2, 2])
    roll = torch.atan2(r[:, 1, 0], r[:, 0, 0])
    return torch.rad2deg(yaw), torch.rad2deg(pitch), torch.rad2deg(roll)


def transform_keypoints(
    canonical: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor,
    expression: torch.Tensor,
) -> torch.Tensor:
    """x = R·x_c + t + δ.

    canonical B×K×3, rotation B×3×3, translation B×3, expression B×K×3 -> B×K×3.
    """
    return canonical @ rotation.transpose(1, 2) + translation[:, None, :] + expression


def apply_free_view(
    rotation: torch.Tensor, translation: torch.Tensor,
    view_rotation: torch.Tensor, view_translation: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-pose a head for a user-chosen view: R ← R_u·R, t ← t_u + t (B×3×3, B×3)."""
    return view_rotation @ rotation, view_translation + translation


def frontalize(rotation: torch.Tensor, translation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The view that faces the camera: R_u = Rᵀ, so the rendered head has R = I.

    Translation is kept, so the head stays where it was in the frame.
    """
    view_rotation = rotation.transpose(1, 2)
    return apply_free_view(rotation, translation, view_rotation, torch.zeros_like(translation))


@dataclass
class HeadMotion:
    """What the sender transmits for one frame (one head, no batch).

    angles: 3 floats, degrees, (yaw, pitch, roll).
    translation: 3 floats, t in the normalised volume cube.
    expression: K×3 floats, the expression deltas δ.
    """

    angles: np.ndarray
    translation: np.ndarray
    expression: np.ndarray

    @property
    def num_kp(self) -> int:
        return int(self.expression.shape[0])

    def to_vector(self) -> np.ndarray:
        """Flat float32 vector [yaw, pitch, roll, tx, ty, tz, δ_0x, δ_0y, δ_0z, …]."""
        return np.concatenate([
            np.asarray(self.angles, np.float32).reshape(3),
            np.asarray(self.translation, np.float32).reshape(3),
            np.asarray(self.expression, np.float32).reshape(-1),
        ])

    @classmethod
    def from_vector(cls, vector: np.ndarray, num_kp: int) -> HeadMotion:
        vector = np.asarray(vector, np.float32)
        if vector.shape != (6 + 3 * num_kp,):
            raise ValueError(f"motion vector has shape {vector.shape}, expected ({6 + 3 * num_kp},)")
        return cls(vector[0:3].copy(), vector[3:6].copy(), vector[6:].reshape(num_kp, 3).copy())

    @classmethod
    def from_tensors(cls, angles: torch.Tensor, translation: torch.Tensor,
                     expression: torch.Tensor) -> list[HeadMotion]:
        """Split batched network outputs (B×3, B×3, B×K×3) into per-frame motions."""
        a = angles.detach().float().cpu().numpy()
        t = translation.detach().float().cpu().numpy()
        e = expression.detach().float().cpu().numpy()
        return [cls(a[i], t[i], e[i]) for i in range(a.shape[0])]

    def to_tensors(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rotation 1×3×3, translation 1×3, expression 1×K×3) ready for the renderer."""
        a = torch.as_tensor(np.asarray(self.angles, np.float32), device=device).view(1, 3)
        rotation = angles_to_rotation(a[:, 0], a[:, 1], a[:, 2])
        t = torch.as_tensor(np.asarray(self.translation, np.float32), device=device).view(1, 3)
        e = torch.as_tensor(np.asarray(self.expression, np.float32), device=device).view(1, -1, 3)
        return rotation, t, e
