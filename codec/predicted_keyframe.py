"""Predicted keyframes: a closed-loop refresh coded against what the receiver already holds.

A refresh replaces the reference the receiver warps from with a newer frame. The receiver
already holds an older reference, and warping it with the new frame's motion gives a picture
close to the new frame wherever the head shows nothing new; the sender renders the same
warp. So the sender codes the new frame as an INTER frame predicted from that warp
(:class:`~codec.bitstream.PredictedKeyframePacket`, method 1): both sides run the same
H.264 encoder (x264, one thread, zero latency, CRF from the packet) on the warp, which gives
both the same intra frame; the sender then codes the new frame after it and sends only that
second frame. The receiver decodes its own intra frame followed by the received one. x264's
motion search repairs where the warp is a few pixels off, and its skip blocks cost nothing
where the warp is right.

    prediction = the PLAIN warp (patches included, no refiner) of the base reference with
                 the motion vector the packet carries (float16, so both read the same values)
    intra      = x264(prediction)                            (both sides; identical bytes)
    reference  = YUV→RGB(H.264 decode(intra, packet's frame))  (OpenCV's integer conversion)

The receiver may run the refiner on its frames; the reference never goes through it, since
the sender does not run it. The references are byte-identical when the warp and the intra
frame are: cv2.remap with float maps rounds every map entry to 1/32 pixel and interpolates in
fixed point, the maps come from a few float64 numpy operations (sines, a 3×3 solve per
triangle), x264 with one thread is deterministic and H.264 decoding is exact.
tests/test_predicted_keyframe.py checks the bytes against a decoder in a second process, and
every packet carries a sha256 prefix of the reference the sender built (``check``): a
receiver that builds another one (its warp differs: another machine's maths library rounding
a sine the other way across a 1/32-pixel step; or corrupt data, which an H.264 decoder may
conceal rather than refuse) gets a typed error, empties the slot and asks for a whole
keyframe: it never warps from a reference the sender does not have.

Measured (benchmarks/results/predicted-refresh-cost-dev.json: the 20 dev clips, a refresh at
frame 50 from a keyframe at frame 0, scored by the LPIPS of the next 2 s rebuilt from it):
CRF 18 rebuilds as well as a whole AV1 q66 keyframe (0.1342 vs 0.1346) for as many bytes on
average (3262 vs 3254), but it is the smaller one on 11 of 20 clips, and the Encoder sends
the smaller: -12.4 % bytes for +0.0008. At lower qualities the gain grows (CRF 26: 1278 B
where whole AV1 needs 1713 B for the same 0.1465). Refreshes come when the warp has drifted
far from the frame (the warp alone: 0.1931), which is why the prediction saves no more.
Coding the difference as an image instead (new − warp, halved, offset to 128, AV1 intra q66;
commit 8da2007; a scratch run on 4 dev clips) was far worse: 2.2 kB for a reference LPIPS of
0.091 where the whole AV1 q66 keyframe gave 0.014 at 3.5 kB (unhalved: 3.9 kB for 0.064).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import cv2
import numpy as np

from codec.bitstream import KeyframePacket, PredictedKeyframePacket
from codec.errors import BitstreamError, CodecError
from codec.keyframe import KEYFRAME_CODEC_IDS
from codec.keyframe_worker import KeyframeJob, code_keyframe
from codec.rebuild_score import rebuild_error

__all__ = [
    "DEFAULT_CRF",
    "ERROR_TOLERANCE",
    "METHOD_H264_OVER_WARP",
    "PredictedKeyframe",
    "RefreshChoice",
    "code_predicted",
    "code_refresh",
    "motion_info",
    "predict",
    "read_motion_info",
    "rebuild_reference",
    "reference_check",
]

METHOD_H264_OVER_WARP = 1  # the packet's method byte: an H.264 inter frame over the warp's intra frame
DEFAULT_CRF = 18  # x264 CRF of both frames (the packet's quality byte): rebuilt LPIPS matched to whole AV1 q66
# With K = 4 and the closed loop (a0.1@3) CRF 22 cut the rate by 10-11 % against 18 but cost LPIPS on
# both splits (dev 0.1146 -> 0.1161, held-out train20 0.1098 -> 0.1111; AKD a little better):
# benchmarks/results/rd-{dev,train}-combo.json. 18 stays.
MAX_CRF = 51
CHECK_BYTES = 4  # sha256 prefix of the reference both sides build
_X264_OPTIONS = {"preset": "slow", "tune": "zerolatency", "threads": "1", "bframes": "0"}


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


def _x264_frames(images: list[np.ndarray], crf: int) -> list[bytes]:
    """Each image's H.264 access unit from one zero-latency x264 context (the first intra)."""
    import av

    height, width = images[0].shape[:2]
    if width % 2 or height % 2:
        raise CodecError(f"a predicted keyframe needs even sides (4:2:0), got {width}×{height}")
    context = av.CodecContext.create("libx264", "w")
    context.width, context.height = width, height
    context.pix_fmt = "yuv420p"
    context.time_base = Fraction(1, 25)
    context.options = {**_X264_OPTIONS, "crf": str(int(crf))}
    out = []
    try:
        for index, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2YUV_I420),
                                               format="yuv420p")
            frame.pts = index
            out.append(b"".join(bytes(p) for p in context.encode(frame)))
        out[-1] += b"".join(bytes(p) for p in context.encode(None))
    except av.FFmpegError as exc:
        raise CodecError(f"x264 failed on a predicted keyframe: {exc}") from exc
    if not all(out):
        raise CodecError("x264 held a frame back (zero latency expected)")
    return out


def _decode_last(units: list[bytes], shape: tuple[int, ...]) -> np.ndarray:
    """The last picture of H.264 access units: H×W×3 uint8 RGB (``shape``'s first two);
    BitstreamError when they do not decode to as many pictures of that size."""
    import av

    pictures = []
    try:
        context = av.CodecContext.create("h264", "r")
        for unit in units:
            pictures += context.decode(av.Packet(unit))
        pictures += context.decode(None)
    except (av.FFmpegError, ValueError) as exc:
        raise BitstreamError(f"corrupt predicted keyframe: {exc}") from exc
    if len(pictures) != len(units):
        raise BitstreamError(f"predicted keyframe: {len(units)} access units decoded to {len(pictures)} pictures")
    last = pictures[-1]
    if (last.height, last.width) != tuple(shape[:2]) or last.format.name != "yuv420p":
        raise BitstreamError(f"predicted keyframe decoded to {last.width}×{last.height} {last.format.name}")
    return cv2.cvtColor(last.to_ndarray(), cv2.COLOR_YUV2RGB_I420)


def reference_check(reference: np.ndarray) -> bytes:
    """The packet's check of a reference image: its sha256 prefix."""
    return hashlib.sha256(np.ascontiguousarray(reference).tobytes()).digest()[:CHECK_BYTES]


def rebuild_reference(prediction: np.ndarray, data: bytes, crf: int, check: bytes) -> np.ndarray:
    """The receiver's new reference: the warp's intra frame, coded here, then the packet's
    inter frame. BitstreamError when the data is corrupt or the result is not the sender's
    reference (``check``)."""
    if not 0 <= crf <= MAX_CRF:
        raise BitstreamError(f"predicted keyframe CRF {crf} out of range")
    intra = _x264_frames([prediction], crf)[0]
    reference = _decode_last([intra, bytes(data)], prediction.shape)
    if reference_check(reference) != check:
        raise BitstreamError("the predicted keyframe rebuilds another reference than the sender's "
                             "(a warp computed differently, or corrupt data)")
    return reference


@dataclass(frozen=True)
class PredictedKeyframe:
    """A refresh coded against a warp: its inter frame and the reference it rebuilds."""

    data: bytes  # the inter frame (H.264 access unit)
    crf: int
    check: bytes  # sha256 prefix of ``received``
    motion_info: bytes  # the warp's motion vector (float16), as the packet carries it
    prediction: np.ndarray  # S×S×3 uint8, the warp both sides start from
    received: np.ndarray  # S×S×3 uint8, the reference both sides hold afterwards
    error: float  # rebuild_error(received, frame)


def code_predicted(model: Any, source: Any, frame: np.ndarray, motion: np.ndarray,
                   crf: int = DEFAULT_CRF) -> PredictedKeyframe:
    """Code ``frame`` (S×S×3 uint8) against the plain warp of the receiver's ``source``
    with ``motion`` (the frame's motion vector), and rebuild it as the receiver will."""
    info, warp_motion = motion_info(motion)
    prediction = predict(model, source, warp_motion)
    intra, inter = _x264_frames([prediction, frame], crf)
    received = _decode_last([intra, inter], frame.shape)
    return PredictedKeyframe(inter, int(crf), reference_check(received), info, prediction, received,
                             rebuild_error(received, frame))


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
    predicted_received: np.ndarray  # each one's reference (the benchmarks compare them)
    whole_received: np.ndarray
    prediction: np.ndarray  # the warp the predicted one was coded over


def code_refresh(model: Any, source: Any, base_slot: int, base_seq: int, job: KeyframeJob,
                 motion: np.ndarray, *, slot: int = 0, crf: int = DEFAULT_CRF,
                 tolerance: float = ERROR_TOLERANCE, always: bool = False) -> RefreshChoice:
    """A refresh of ``job``'s frame, coded whole and predicted from the receiver's reference
    (``source``, in ``base_slot``, the keyframe of frame ``base_seq``) with the frame's
    ``motion``; the predicted one when it is smaller and about as good (``always``: the
    predicted one, whatever it costs: benchmarks.refresh_drift's chains)."""
    whole = code_keyframe(dataclasses.replace(job, decode=True))
    whole_packet = KeyframePacket(job.seq, job.ticks, KEYFRAME_CODEC_IDS[job.codec], whole.data, job.info,
                                  slot).pack()
    whole_error = rebuild_error(whole.received, job.image)
    coded = code_predicted(model, source, job.image, motion, crf)
    packet = PredictedKeyframePacket(job.seq, job.ticks, base_slot, base_seq, METHOD_H264_OVER_WARP, coded.crf,
                                     coded.check, coded.data, job.info, coded.motion_info, slot).pack()
    predicted = always or (len(packet) < len(whole_packet) and coded.error <= whole_error + tolerance)
    return RefreshChoice(packet if predicted else whole_packet, predicted,
                         coded.received if predicted else whole.received, len(packet), len(whole_packet),
                         coded.error, whole_error, coded.received, whole.received, coded.prediction)
