"""Predicted keyframes: a closed-loop refresh coded against what the receiver already holds.

A refresh replaces the reference the receiver warps from with a newer frame. The receiver
already holds an older reference, and warping it with the new frame's motion gives a picture
close to the new frame everywhere the head did not show something new; the sender renders
the same warp. So the sender codes only the difference (:class:`PredictedKeyframePacket`):
the new frame minus that warp, halved, offset to 128 and coded as an image with the
keyframe codec; 16×16 blocks whose mean difference is small are sent as 0 (the warp is kept
there, and a flat block costs the image codec almost nothing). Both sides then build the
new reference the same way:

    prediction = the PLAIN warp (patches included, no refiner) of the base reference with
                 the motion vector the packet carries (float16, so both read the same values)
    reference  = clip(prediction + 2·(decoded residual − 128), 0, 255)    (integers)

The receiver may run the refiner on its frames; the reference never goes through it, since
the sender does not run it. Everything after the warp is integer arithmetic on decoded uint8
images, and image decoders (dav1d, libwebp) are bit-exact, so the two references are
byte-identical as long as the warp is: cv2.remap with float maps rounds every map entry to
1/32 pixel and interpolates in fixed point; the maps come from a few float64 numpy
operations (sines, a 3×3 solve per triangle). tests/test_predicted_keyframe.py checks the
bytes against a decoder in a second process; across machines whose maths libraries round a
sine differently a map entry could land on the other side of a 1/32-pixel step, which is
why the sender still re-sends a whole keyframe when the receiver asks for one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from codec.bitstream import KeyframePacket, PredictedKeyframePacket
from codec.errors import BitstreamError
from codec.keyframe import KEYFRAME_CODEC_IDS, decode_keyframe, encode_keyframe
from codec.keyframe_worker import KeyframeJob, code_keyframe
from codec.rebuild_score import rebuild_error

__all__ = [
    "BLOCK",
    "DEFAULT_RESIDUAL_QUALITY",
    "DEFAULT_THRESHOLD",
    "ERROR_TOLERANCE",
    "PredictedKeyframe",
    "RefreshChoice",
    "apply_residual",
    "code_predicted",
    "code_refresh",
    "motion_info",
    "predict",
    "read_motion_info",
    "rebuild_reference",
    "residual_image",
]

BLOCK = 16  # blocks whose mean |difference| is under the threshold keep the warp
DEFAULT_THRESHOLD = 3.0  # mean |new − warp| per block, in 8-bit levels over the block's pixels
# The residual image's quality (the keyframe codec's 1–100 scale).
DEFAULT_RESIDUAL_QUALITY = {"av1": 66, "webp": 90, "jpeg": 90}
_OFFSET = 128


def motion_info(motion: np.ndarray) -> tuple[bytes, np.ndarray]:
    """(the motion vector as float16 bytes, the vector both sides warp with: float32)."""
    info = np.asarray(motion, "<f2").tobytes()
    return info, np.frombuffer(info, "<f2").astype(np.float32)


def read_motion_info(info: bytes, length: int) -> np.ndarray:
    """The warp's motion vector from a packet's float16 bytes; BitstreamError when it is
    not ``length`` finite values."""
    if len(info) != 2 * length:
        raise BitstreamError(f"predicted keyframe motion of {len(info)} bytes; this model's motion "
                             f"vector is {2 * length} (float16)")
    motion = np.frombuffer(info, "<f2").astype(np.float32)
    if not np.all(np.isfinite(motion)):
        raise BitstreamError("predicted keyframe motion is not finite")
    return motion


def predict(model: Any, source: Any, motion: np.ndarray) -> np.ndarray:
    """The plain warp (no refiner) of ``source`` with ``motion``: S×S×3 uint8."""
    return model.plain().render(source, np.asarray(motion, np.float32)[None])[0]


def residual_image(frame: np.ndarray, prediction: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """What is coded: 128 + (frame − prediction)/2 (S×S×3 uint8), flat 128 in the blocks
    whose mean |frame − prediction| is under ``threshold``."""
    difference = frame.astype(np.int16) - prediction.astype(np.int16)
    size = frame.shape[0]
    blocks = np.abs(difference).reshape(size // BLOCK, BLOCK, size // BLOCK, BLOCK, 3).mean(axis=(1, 3, 4))
    keep = np.repeat(np.repeat(blocks >= threshold, BLOCK, axis=0), BLOCK, axis=1)
    halved = np.floor_divide(difference + 1, 2)  # round half up: -255..255 -> -127..128
    return np.clip(np.where(keep[..., None], halved, 0) + _OFFSET, 0, 255).astype(np.uint8)


def apply_residual(prediction: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """The new reference: clip(prediction + 2·(residual − 128), 0, 255), in integers."""
    if prediction.shape != residual.shape:
        raise BitstreamError(f"predicted keyframe residual of shape {residual.shape}; the reference "
                             f"is {prediction.shape}")
    out = prediction.astype(np.int16) + 2 * (residual.astype(np.int16) - _OFFSET)
    return np.clip(out, 0, 255).astype(np.uint8)


def rebuild_reference(prediction: np.ndarray, data: bytes, codec: str | int) -> np.ndarray:
    """The receiver's (and the sender's) new reference from the coded residual's bytes.
    KeyframeDecodeError / BitstreamError on corrupt bytes or the wrong size."""
    return apply_residual(prediction, decode_keyframe(data, codec))


@dataclass(frozen=True)
class PredictedKeyframe:
    """A refresh coded against a warp: its residual's bytes and the reference they rebuild."""

    data: bytes  # the residual image, coded
    codec: str
    motion_info: bytes  # the warp's motion vector (float16), as the packet carries it
    prediction: np.ndarray  # S×S×3 uint8, the warp both sides start from
    received: np.ndarray  # S×S×3 uint8, the reference both sides hold afterwards
    error: float  # rebuild_error(received, frame)
    changed_blocks: float  # share of blocks that carry a difference


def code_predicted(model: Any, source: Any, frame: np.ndarray, motion: np.ndarray, codec: str,
                   quality: int | None = None, threshold: float = DEFAULT_THRESHOLD) -> PredictedKeyframe:
    """Code ``frame`` (S×S×3 uint8) against the plain warp of the receiver's ``source``
    with ``motion`` (the frame's motion vector), and rebuild it as the receiver will."""
    if codec not in KEYFRAME_CODEC_IDS:
        raise ValueError(f"unknown codec {codec!r}")
    info, warp_motion = motion_info(motion)
    prediction = predict(model, source, warp_motion)
    residual = residual_image(frame, prediction, threshold)
    quality = DEFAULT_RESIDUAL_QUALITY[codec] if quality is None else quality
    data = encode_keyframe(residual, codec, quality)
    received = rebuild_reference(prediction, data, codec)
    changed = float(np.mean(np.any(residual != _OFFSET, axis=2)
                            .reshape(residual.shape[0] // BLOCK, BLOCK, -1, BLOCK).any(axis=(1, 3))))
    return PredictedKeyframe(data, codec, info, prediction, received, rebuild_error(received, frame), changed)


# A predicted refresh is sent when its packet is smaller than the whole keyframe's and its
# reference rebuilds the frame about as well (rebuild_error, the closed loop's score, no
# more than this above the whole keyframe's).
ERROR_TOLERANCE = 0.01


@dataclass(frozen=True)
class RefreshChoice:
    """A refresh coded both ways, and which one goes out."""

    packet: bytes  # what is sent
    predicted: bool  # whether that is the predicted keyframe
    received: np.ndarray  # S×S×3 uint8: the reference the receiver builds from it
    predicted_bytes: int  # the predicted packet's size
    whole_bytes: int  # the whole keyframe packet's size
    predicted_error: float  # rebuild_error of each one's reference against the frame
    whole_error: float


def code_refresh(model: Any, source: Any, base_slot: int, base_seq: int, job: KeyframeJob,
                 motion: np.ndarray, *, slot: int = 0, quality: int | None = None,
                 threshold: float = DEFAULT_THRESHOLD, tolerance: float = ERROR_TOLERANCE) -> RefreshChoice:
    """A refresh of ``job``'s frame, coded whole and predicted from the receiver's reference
    (``source``, in ``base_slot``, the keyframe of frame ``base_seq``) with the frame's
    ``motion``; the predicted one when it is smaller and about as good."""
    whole = code_keyframe(dataclasses.replace(job, decode=True))
    whole_packet = KeyframePacket(job.seq, job.ticks, KEYFRAME_CODEC_IDS[job.codec], whole.data, job.info,
                                  slot).pack()
    whole_error = rebuild_error(whole.received, job.image)
    coded = code_predicted(model, source, job.image, motion, job.codec, quality, threshold)
    packet = PredictedKeyframePacket(job.seq, job.ticks, base_slot, base_seq, KEYFRAME_CODEC_IDS[job.codec],
                                     coded.data, job.info, coded.motion_info, slot).pack()
    predicted = len(packet) < len(whole_packet) and coded.error <= whole_error + tolerance
    return RefreshChoice(packet if predicted else whole_packet, predicted,
                         coded.received if predicted else whole.received, len(packet), len(whole_packet),
                         coded.error, whole_error)
