"""Reference patches: real pixels of the mouth and eyes, sent when the keyframe lacks them.

A one-shot warp can only move the keyframe's pixels. When the mouth opens wider than in
the keyframe, there are no teeth or cavity to move; when the eyes close, no lids. The
sender knows which mouth and eye states the receiver holds (the keyframe's, plus the
patches it sent), so when a frame's state is far from all of them it sends a small patch of
that region, cut from the real crop. The receiver keeps a few per region and, for every
frame, warps the nearest one (by openness) onto the frame's landmarks and blends it over
the warp, before the refiner.

Geometry comes from the *decoded* motion on both sides (the 68 points the receiver draws
with), so a patch lands where it was cut when the motion is the same, and moves with the
landmarks otherwise. Which reference a region uses is decided from the openness alone, the
same way on both sides.

Landmark indices are dlib's 68: right eye 36–41, left eye 42–47, outer lips 48–59, inner
lips 60–67 (the subject's right is the image's left).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from codec.bitstream.packets import MAX_PATCH_SLOTS, PatchPacket
from codec.keyframe import KEYFRAME_CODEC_IDS, decode_keyframe, encode_keyframe

__all__ = ["REGIONS", "PatchBudget", "PatchSender", "Reference", "ReferenceSet", "Region",
           "blend_references", "openness", "patch_box"]



@dataclass(frozen=True)
class Region:
    """A part of the face that patches can repair.

    Attributes:
        id: its number on the wire.
        points: the landmark indices that place it (the patch transform is fitted on them).
        tolerance: send a patch when the frame's openness is further than this from every
            reference the receiver holds (openness is a ratio of landmark distances).
        box_margin: (left/right, up, down) margins of the patch box, as fractions of the
            region's width.
        mask_size: (width, height) of the blend ellipse, as fractions of the region's width
            (height also adds the region's own height).
    """

    name: str
    id: int
    points: tuple[int, ...]
    tolerance: float
    box_margin: tuple[float, float, float]
    mask_size: tuple[float, float]


MOUTH = Region("mouth", 0, tuple(range(48, 68)), 0.10, (0.22, 0.30, 0.35), (1.30, 0.35))
RIGHT_EYE = Region("right_eye", 1, tuple(range(36, 42)), 0.08, (0.35, 0.55, 0.35), (1.45, 0.55))
LEFT_EYE = Region("left_eye", 2, tuple(range(42, 48)), 0.08, (0.35, 0.55, 0.35), (1.45, 0.55))
REGIONS = (MOUTH, RIGHT_EYE, LEFT_EYE)
REGION_BY_ID = {region.id: region for region in REGIONS}


def _distance(points: np.ndarray, a: int, b: int) -> float:
    return float(np.hypot(*(points[a] - points[b])))


def openness(region: Region, points: np.ndarray) -> float:
    """How open the region is in 68×2 ``points``: the mouth's inner-lip gap over its width;
    an eye's lid gap over its width (the eye aspect ratio)."""
    if region is MOUTH:
        gap = (_distance(points, 61, 67) + _distance(points, 62, 66) + _distance(points, 63, 65)) / 3.0
        return gap / max(_distance(points, 48, 54), 1e-6)
    first = region.points[0]
    gap = (_distance(points, first + 1, first + 5) + _distance(points, first + 2, first + 4)) / 2.0
    return gap / max(_distance(points, first, first + 3), 1e-6)


def _width(region: Region, points: np.ndarray) -> float:
    first = region.points[0]
    return max(_distance(points, 48, 54) if region is MOUTH else _distance(points, first, first + 3), 1.0)


def patch_box(region: Region, points: np.ndarray, size: int | tuple[int, int]) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the patch to cut for ``region`` in a size×size crop (or a
    (width, height) picture), or None when the region is not inside it."""
    frame_w, frame_h = (size, size) if np.isscalar(size) else size
    own = points[list(region.points)]
    width = _width(region, points)
    side, up, down = region.box_margin
    x0, y0 = own.min(axis=0) - (side * width, up * width)
    x1, y1 = own.max(axis=0) + (side * width, down * width)
    if x0 < 0 or y0 < 0 or x1 > frame_w or y1 > frame_h:
        return None
    return int(x0), int(y0), int(np.ceil(x1)), int(np.ceil(y1))


@dataclass
class Reference:
    """One patch the receiver holds: the decoded image, where it was cut, and the 68
    decoded points of its frame."""

    region: Region
    image: np.ndarray  # h×w×3 uint8 RGB
    origin: tuple[int, int]  # (x0, y0) of the patch in its frame
    points: np.ndarray  # 68×2 float, crop pixels
    openness: float
    scale: tuple[float, float] = (1.0, 1.0)  # patch pixels per picture pixel (x, y): < 1 when shrunk


@dataclass
class ReferenceSet:
    """The references of one keyframe, per region: ``None`` in a slot is empty. The keyframe
    itself is every region's reference at ``keyframe_openness``."""

    keyframe_openness: dict[int, float]
    slots: dict[int, list[Reference | None]] = field(default_factory=dict)

    @classmethod
    def for_keyframe(cls, keyframe_points: np.ndarray) -> ReferenceSet:
        return cls({r.id: openness(r, keyframe_points) for r in REGIONS},
                   {r.id: [None] * MAX_PATCH_SLOTS for r in REGIONS})

    def put(self, slot: int, reference: Reference) -> None:
        self.slots[reference.region.id][slot] = reference

    def nearest(self, region: Region, value: float) -> tuple[Reference | None, float]:
        """(the reference nearest to ``value``, or None for the keyframe; its distance)."""
        best, distance = None, abs(value - self.keyframe_openness[region.id])
        for reference in self.slots[region.id]:
            if reference is not None and abs(value - reference.openness) < distance:
                best, distance = reference, abs(value - reference.openness)
        return best, distance

    def free_slot(self, region: Region, value: float) -> int:
        """The slot a new patch at ``value`` takes: an empty one, else the one whose
        reference is nearest to another reference (the least informative)."""
        slots = self.slots[region.id]
        for k, reference in enumerate(slots):
            if reference is None:
                return k
        values = [self.keyframe_openness[region.id]] + [ref.openness for ref in slots if ref is not None]
        redundancy = []
        for k, reference in enumerate(slots):
            others = [v for j, v in enumerate(values) if j != k + 1]
            redundancy.append(min(abs(reference.openness - v) for v in others))
        return int(np.argmin(redundancy))


# Reference patches: WebP at this quality is ~150-300 bytes for a 256-px crop's mouth or eye
# (a blurrier patch still shows teeth and a cavity), and they may take this many kbit/s on
# average (the token bucket of PatchBudget). Chosen on the dev
# segments: q45 at 0.3 kbit/s (900-byte burst) kept the mouth and eye gains of q60 at
# 0.8 kbit/s (1.5 kB burst) for a third fewer patch bits.
DEFAULT_PATCH_QUALITY = 45
DEFAULT_PATCH_KBPS = 0.3
PATCH_BURST_BYTES = 900.0


@dataclass
class PatchBudget:
    """A token bucket over patch bytes: ``rate_bps`` bits per second on average, at most
    ``burst_bytes`` at once. Patches that do not fit wait for a later frame."""

    rate_bps: float = 1000.0 * DEFAULT_PATCH_KBPS
    burst_bytes: float = PATCH_BURST_BYTES
    tokens: float = PATCH_BURST_BYTES

    def tick(self, seconds: float) -> None:
        self.tokens = min(self.burst_bytes, self.tokens + self.rate_bps / 8.0 * seconds)

    def spend(self, size: int) -> bool:
        if size > self.tokens:
            return False
        self.tokens -= size
        return True


class PatchSender:
    """The sender's side of reference patches: which to send, coded, within the budget.

    ``packets`` is called once per frame with the sender's copy of the receiver's source
    state; each patch that goes out is added to that copy exactly as the receiver will add
    it (the decoded image), so the two stay the same.
    """

    def __init__(self, model: Any, codec: str = "webp", quality: int = DEFAULT_PATCH_QUALITY,
                 kbps: float = DEFAULT_PATCH_KBPS) -> None:
        self.model = model
        self.codec = codec
        self.codec_id = KEYFRAME_CODEC_IDS[codec]
        self.quality = quality
        self.budget = PatchBudget(rate_bps=1000.0 * kbps)
        self.sent = 0
        self.sent_bytes = 0
        self.over_budget = 0  # wanted, but the byte budget said wait
        self._last_time: float | None = None

    def packets(self, source: Any, crop: np.ndarray, motion: np.ndarray, seq: int, ticks: int,
                time_s: float, reference: int = 0) -> list[bytes]:
        """The patch packets of this frame (``motion``: its decoded motion vector) for the
        reference ``source`` in slot ``reference``, which they belong to."""
        self.budget.tick(0.0 if self._last_time is None else max(0.0, time_s - self._last_time))
        self._last_time = time_s
        out = []
        for candidate in self.model.patch_candidates(source, crop, motion):
            data = encode_keyframe(candidate.image, self.codec, self.quality)
            packet = PatchPacket(seq=seq, timestamp=ticks, region=candidate.region, slot=candidate.slot,
                                 x0=candidate.x0, y0=candidate.y0, codec_id=self.codec_id, image_bytes=data,
                                 info=candidate.info, reference=reference).pack()
            if not self.budget.spend(len(packet)):
                self.over_budget += 1
                continue
            image = decode_keyframe(data, self.codec_id)
            self.model.add_patch(source, dataclasses.replace(candidate, image=image))
            out.append(packet)
            self.sent += 1
            self.sent_bytes += len(packet)
        return out


def _ellipse(region: Region, points: np.ndarray) -> tuple[tuple[float, float], tuple[float, float], float]:
    """(centre, half axes, angle in degrees) of where ``region``'s patch replaces the warp:
    an ellipse along the region's corners, sized from its width (robust to a closed eye,
    whose lid points collapse onto a line)."""
    first = region.points[0]
    corners = (points[48], points[54]) if region is MOUTH else (points[first], points[first + 3])
    own = points[list(region.points)]
    width = _width(region, points)
    axes = (region.mask_size[0] * width / 2.0, (region.mask_size[1] * width + np.ptp(own[:, 1])) / 2.0)
    angle = float(np.degrees(np.arctan2(corners[1][1] - corners[0][1], corners[1][0] - corners[0][0])))
    centre = own.mean(axis=0)
    return (float(centre[0]), float(centre[1])), (float(axes[0]), float(axes[1])), angle


def _blend_one(out: np.ndarray, reference: Reference, points: np.ndarray) -> None:
    """Warp ``reference`` onto ``points`` and blend it into ``out`` (S×S×3 uint8) in place,
    inside a feathered ellipse; only the ellipse's bounding box is computed."""
    region = reference.region
    height, width = out.shape[:2]
    source = reference.points[list(region.points)] - reference.origin
    if reference.scale != (1.0, 1.0):  # a shrunk patch: its own pixel centres
        source = (source + 0.5) * np.asarray(reference.scale) - 0.5
    target = points[list(region.points)]
    matrix, _ = cv2.estimateAffine2D(source.astype(np.float32), target.astype(np.float32), method=cv2.LMEDS)
    if matrix is None:
        return
    centre, axes, angle = _ellipse(region, points)
    sigma = max(1.0, 0.12 * _width(region, points))
    reach = max(axes) + 3.0 * sigma
    x0, y0 = max(0, int(centre[0] - reach)), max(0, int(centre[1] - reach))
    x1, y1 = min(width, int(np.ceil(centre[0] + reach))), min(height, int(np.ceil(centre[1] + reach)))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    matrix[:, 2] -= (x0, y0)  # into the box's own coordinates
    box = (x1 - x0, y1 - y0)
    warped = cv2.warpAffine(reference.image, matrix, box, flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE)
    # Only inside the patch's own footprint: outside it BORDER_REPLICATE is invented.
    footprint = cv2.warpAffine(np.ones(reference.image.shape[:2], np.float32), matrix, box,
                               flags=cv2.INTER_LINEAR, borderValue=0.0)
    mask = np.zeros((box[1], box[0]), np.float32)
    cv2.ellipse(mask, (int(round(centre[0] - x0)), int(round(centre[1] - y0))),
                (max(int(axes[0]), 1), max(int(axes[1]), 1)), angle, 0, 360, 1.0, -1, cv2.LINE_AA)
    mask = cv2.GaussianBlur(mask, (0, 0), sigma) * cv2.erode(footprint, np.ones((5, 5), np.uint8))
    mask = mask[..., None]
    blended = out[y0:y1, x0:x1] * (1.0 - mask) + warped * mask
    out[y0:y1, x0:x1] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def blend_references(frame: np.ndarray, references: ReferenceSet, points: np.ndarray) -> np.ndarray:
    """``frame`` (the warped keyframe, S×S×3 uint8) with, for each region whose nearest
    reference is a patch, that patch warped onto this frame's 68 ``points`` and blended in."""
    out = None
    for region in REGIONS:
        reference, _ = references.nearest(region, openness(region, points))
        if reference is None:
            continue
        if out is None:
            out = frame.copy()
        _blend_one(out, reference, points)
    return frame if out is None else out
