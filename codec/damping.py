"""The sender's measured fallback for frames its reference cannot show: damped motion.

A warp can only move the keyframe's pixels. A head turned far past the keyframe's view
stretches the near cheek out of a sliver and tears the mesh; a face that leaves a fixed crop
drags the neck and the background along with it. Until a better reference arrives (the closed
loop's refresh, :mod:`codec.refresh`), the sender may code other motion than the tracker's:
the same motion with yaw and pitch drawn part of the way back to the reference's pose, or the
reference's head pose with the frame's expression, or the reference as it is. The receiver
renders whatever motion it gets, so nothing in the stream changes and receivers need nothing.

The choice is measured, not guessed: the sender renders what the receiver would show for
each candidate (its copy of the receiver's source state, the motion as quantized, the plain
warp the closed loop scores) and keeps the one whose :func:`codec.rebuild_score.rebuild_error`
against the real frame is lowest, the undamped motion unless another beats it by ``margin``.
A fixed limit on the turn (``codec.families.landmark.limit_turn``) made LPIPS p95 worse on
every turning dev clip; a measured choice never codes motion whose rebuild scored worse than
the tracker's own. To bound the sender's cost the candidates are tried only on frames whose
head pose is ``turn_deg`` or more from the reference's, or whose face points leave the
picture (``inside``): elsewhere the warp serves (benchmarks.pose_breaks: breaks past ~30°).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from codec.families.base import TalkingHeadModel
from codec.rebuild_score import rebuild_error
from codec.reference_memory import pose_distance

__all__ = ["DampingChoice", "DampingPolicy", "MotionDamper"]

# The motion vector's head pose: yaw, pitch, roll, t_x, t_y, ln s (codec.families.landmark);
# the expression coefficients follow.
_POSE = slice(0, 6)
_TURN = slice(0, 2)


@dataclass(frozen=True)
class DampingPolicy:
    """When and how the sender damps motion (:class:`MotionDamper`).

    turn_deg: try damping when yaw or pitch is this far from the reference's (degrees;
        :func:`codec.reference_memory.pose_distance`);
    inside: ... or when less than this share of the face's 68 points, drawn with the frame's
        motion, lie inside the picture (a face leaving a fixed crop);
    factors: the shares of the turn (yaw and pitch away from the reference's) tried besides the
        whole turn; roll passes, the warp turns the picture in its plane exactly;
    head: also try the reference's head pose (turn, position and scale) with the frame's
        expression; still: also try the reference as it is (every value the reference's);
    margin: a damped motion is coded only when its rebuild error is this much below the
        undamped one's (the proxy's noise: no flicker between near-equal candidates).
    """

    turn_deg: float = 20.0
    inside: float = 0.9
    factors: tuple[float, ...] = (0.66, 0.33, 0.0)
    head: bool = True
    still: bool = True
    margin: float = 0.005


@dataclass(frozen=True)
class DampingChoice:
    """What the damper coded for one frame: ``label`` ("" undamped, "turn×0.66", "head",
    "still"), the motion chosen, and the rebuild errors of the undamped and the chosen one
    (None where no candidate was tried)."""

    label: str
    motion: np.ndarray
    undamped_error: float | None = None
    error: float | None = None

    @property
    def damped(self) -> bool:
        return bool(self.label)


class MotionDamper:
    """One stream's damping under a :class:`DampingPolicy` (landmark family only: its motion
    vector holds the head pose and the reference's pose is the keyframe's fitted one)."""

    def __init__(self, policy: DampingPolicy, model: TalkingHeadModel) -> None:
        self.policy = policy
        self._model = model.plain()
        self.tried = 0  # frames whose candidates were rendered
        self.damped = 0  # frames coded with damped motion

    @staticmethod
    def applies_to(model: TalkingHeadModel) -> bool:
        """Whether ``model``'s motion can be damped (it draws its face points from motion)."""
        return hasattr(model, "driving_points") and hasattr(model, "neutral_motion")

    def _inside_share(self, source: Any, motion: np.ndarray) -> float:
        """Share of the face's 68 points drawn with ``motion`` that lie inside the picture."""
        points = self._model.driving_points(source, motion)[0][:68]
        width, height = self._model.frame_size
        inside = (points[:, 0] >= 0) & (points[:, 0] < width) & (points[:, 1] >= 0) & (points[:, 1] < height)
        return float(np.mean(inside))

    def needed(self, source: Any, motion: np.ndarray) -> bool:
        """Whether the frame is far enough from what the reference shows to try candidates."""
        reference = self._model.neutral_motion(source)
        return (pose_distance(motion, reference) >= self.policy.turn_deg
                or self._inside_share(source, motion) < self.policy.inside)

    def candidates(self, source: Any, motion: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """(label, motion) of the damped motions tried for ``motion`` from ``source``."""
        policy = self.policy
        reference = np.asarray(self._model.neutral_motion(source), np.float32)
        found: list[tuple[str, np.ndarray]] = []
        for factor in policy.factors:
            damped = motion.copy()
            damped[_TURN] = reference[_TURN] + np.float32(factor) * (motion[_TURN] - reference[_TURN])
            found.append((f"turn×{factor:g}", damped))
        if policy.head:
            damped = motion.copy()
            damped[_POSE] = reference[_POSE]
            found.append(("head", damped))
        if policy.still:
            found.append(("still", reference.copy()))
        return found

    def choose(self, source: Any, crop: np.ndarray, motion: np.ndarray,
               decoded: Callable[[np.ndarray], np.ndarray]) -> DampingChoice:
        """The motion to code for the frame ``crop`` whose undamped motion, as the receiver
        would decode it, is ``motion``; ``decoded`` maps a vector to what the receiver would
        decode (the motion coder's quantization), so the errors compared are exactly those of
        the frames the receiver would show."""
        motion = np.asarray(motion, np.float32)
        if source is None or not np.all(np.isfinite(motion)) or not self.needed(source, motion):
            return DampingChoice("", motion)
        self.tried += 1
        tried = [("", motion)] + [(label, np.asarray(decoded(vector), np.float32))
                                  for label, vector in self.candidates(source, motion)]
        rebuilt = self._model.render(source, np.stack([vector for _, vector in tried]))
        errors = [rebuild_error(image, crop) for image in rebuilt]
        best = int(np.argmin(errors))
        if errors[best] > errors[0] - self.policy.margin:
            best = 0
        self.damped += int(best > 0)
        return DampingChoice(tried[best][0], tried[best][1], errors[0], errors[best])
