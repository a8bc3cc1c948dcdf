"""The one seam between the codec and its models.

The API, calls, benchmarks and sources talk to a :class:`TalkingHeadModel` only:

- sender: ``motion_tracker()`` → a per-stream :class:`MotionTracker` that turns each square
  RGB crop into a flat motion vector, and describes a keyframe (``keyframe_info``) with
  whatever the receiver needs beside its pixels;
- receiver: ``prepare_source(keyframe, info)`` → a cached source state, then
  ``render(source, motions, view)`` → frames;
- capabilities: ``free_view`` (the head can be re-posed at the receiver).

A motion vector is ``[yaw, pitch, roll, t0, t1, t2, e_0 … e_{N-1}]`` (float32): three
angles in degrees, three translation values and N expression values, whose meaning the
family defines (:class:`ModelFamily`); the stream header names the family and N.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np

from codec.errors import BitstreamError


class ModelFamily(IntEnum):
    """Which model made a stream; fixes the meaning of the motion vector's values.

    VID2VID: translation = t (x, y, z) in the feature-volume cube; expression = K×3
        keypoint deltas δ (N = 3K).
    LANDMARK: translation = (t_x, t_y) in normalised crop units and ln(scale);
        expression = N coefficients of the expression basis (:mod:`codec.face3d`).
    """

    VID2VID = 1
    LANDMARK = 2


NUM_POSE_VALUES = 6  # yaw, pitch, roll and three translation values


@dataclass(frozen=True)
class MotionLayout:
    """Shape of one frame's motion vector: 6 pose values then ``expression_count``."""

    family: ModelFamily
    expression_count: int

    @property
    def vector_length(self) -> int:
        return NUM_POSE_VALUES + self.expression_count


@dataclass
class ViewControl:
    """Free-view controls applied at the receiver: optional frontalization, then extra
    yaw/pitch/roll (degrees) and a translation (x, y, z; the family's translation units)."""

    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    translation: tuple[float, float, float] = (0.0, 0.0, 0.0)
    frontalize: bool = False

    @property
    def is_identity(self) -> bool:
        return (not self.frontalize and self.yaw == self.pitch == self.roll == 0.0
                and not any(self.translation))


class MotionTracker(ABC):
    """Sender-side state of one stream (e.g. the last landmarks, to track instead of detect).

    ``face_seen``: whether the last :meth:`motion` call found a face by detection, not only by
    tracking from the frame before (the closed loop falls back to H.264 when it stays False)."""

    face_seen: bool = True

    @abstractmethod
    def motion(self, image: np.ndarray) -> np.ndarray:
        """One square RGB crop (S×S×3 uint8, S = the model's size) → float32 motion vector.

        Values the tracker could not measure (no face) are NaN: the coder holds the
        previous frame's values for them."""

    def keyframe_info(self, image: np.ndarray) -> bytes:
        """What the receiver needs about a keyframe beside its pixels (the crop that was
        last passed to :meth:`motion`). Empty by default."""
        return b""


@dataclass(frozen=True)
class PatchCandidate:
    """One reference patch: the region and slot (see :class:`codec.bitstream.PatchPacket`),
    where it sat in its frame, its pixels (h×w×3 uint8 RGB) and the family's placement info."""

    region: int
    slot: int
    x0: int
    y0: int
    image: np.ndarray
    info: bytes


class TalkingHeadModel(ABC):
    """A model family's inference side. Attributes identify it in a stream header."""

    name: str
    sha256: str
    untrained: bool
    family: ModelFamily
    image_size: int
    layout: MotionLayout
    free_view: bool = True

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) of the pictures it takes and renders (a family that renders only
        its own square size: image_size × image_size)."""
        return (self.image_size, self.image_size)

    whole_frame: bool = False  # True: its pictures are the camera's whole frame, not a face crop

    def at_size(self, width: int, height: int, whole_frame: bool = False) -> TalkingHeadModel:
        """This model for pictures of width×height (a whole frame or a square crop); ValueError
        where the family cannot render them."""
        if (int(width), int(height)) == self.frame_size and bool(whole_frame) == self.whole_frame:
            return self
        kind = "whole frames" if whole_frame else "crops"
        raise ValueError(f"model {self.name!r} renders only {self.image_size}×{self.image_size} crops, "
                         f"not {width}×{height} {kind}")

    @property
    def sha256_prefix(self) -> bytes:
        """First 8 bytes of the weights' sha256, as carried in the stream header."""
        return bytes.fromhex(self.sha256[:16])

    @abstractmethod
    def motion_tracker(self) -> MotionTracker:
        """A fresh sender-side tracker for one stream."""

    @abstractmethod
    def prepare_source(self, image: np.ndarray, info: bytes = b"") -> Any:
        """Keyframe (S×S×3 uint8 RGB) and its info bytes → cached source state.

        Raises :class:`codec.errors.BitstreamError` when ``info`` is malformed."""

    @abstractmethod
    def render(self, source: Any, motions: np.ndarray, view: ViewControl | None = None) -> list[np.ndarray]:
        """N×L motion vectors → N frames (S×S×3 uint8 RGB) rebuilt from ``source``."""

    def default_keyframe_info(self) -> bytes:
        """Keyframe info for a keyframe nobody analysed (a speed check, a blank frame)."""
        return b""

    def plain(self) -> TalkingHeadModel:
        """This model without receiver-side learned refinement: for renders that must be cheap
        (a sender's own checks, an input generator). The stream is the same either way."""
        return self

    def neutral_motion(self, source: Any) -> np.ndarray:
        """A motion vector that re-renders the keyframe as it is (for speed checks)."""
        return np.zeros(self.layout.vector_length, np.float32)

    # Reference patches (codec.reference_patches): real pixels of regions the keyframe lacks.
    # A family that cannot place them keeps these defaults, and its streams carry none.
    supports_patches: bool = False

    def patch_candidates(self, source: Any, crop: np.ndarray, motion: np.ndarray) -> list[PatchCandidate]:
        """Sender side: the patches of ``crop`` (this frame, S×S×3 uint8) worth sending,
        given what ``source`` (the receiver's state, references included) holds and the
        frame's decoded ``motion``. Each goes out only if the byte budget allows."""
        return []

    def add_patch(self, source: Any, candidate: PatchCandidate) -> None:
        """Both sides: ``source`` holds the (decoded) patch from now on, until the next keyframe.

        Raises :class:`codec.errors.BitstreamError` when the patch does not fit the family."""
        raise BitstreamError(f"the {self.family.name.lower()} family takes no patches")
