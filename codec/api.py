"""The streaming codec: Encoder / Decoder, packet by packet (files: :mod:`codec.files`).

Encoder (sender side): square face crops in, packets out. The first frame (and any
frame after ``request_keyframe``) also yields a keyframe packet; every frame yields
one motion packet with its head pose and expression.

Decoder (receiver side): packets in, rebuilt frames out. A keyframe packet sets the
cached source state (``model.prepare_source``); each motion packet is rendered from it
(``model.render``). Both go through the model interface of :mod:`codec.families`, so
either family works. Sequence numbers are frame numbers, shared by a frame's keyframe
and motion packets, so the motion prediction chain is never broken by a keyframe. In a
call, keyframes and patches travel as data-channel messages (``data_channel_message_wire_bytes``)
and motion packets ride on the audio RTP packets (``motion_on_audio_wire_bytes``), or, without
audio, as one data-channel message each.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from codec.bitstream import (
    FramePacket,
    HeaderFlags,
    KeyframePacket,
    MotionPacket,
    PatchPacket,
    StreamHeader,
    parse_packet,
)
from codec.errors import MissingReferenceError, ModelMismatchError
from codec.families.base import PatchCandidate, TalkingHeadModel, ViewControl
from codec.keyframe import KEYFRAME_CODEC_IDS, decode_keyframe, default_keyframe_quality, encode_keyframe
from codec.motion_coding import DEFAULT_QUALITY, MotionDecoder, MotionEncoder, quant_table_for
from codec.rebuild_score import rebuild_error
from codec.reference_patches import DEFAULT_PATCH_KBPS, DEFAULT_PATCH_QUALITY, PatchSender
from codec.zoo import DEFAULT_MODEL, resolve_model

log = logging.getLogger(__name__)

__all__ = ["DATA_CHANNEL_OVERHEAD_BYTES", "DecodedFrame", "Decoder", "DecoderStats", "Encoder",
           "EncoderStats", "RefreshPolicy", "ViewControl", "data_channel_wire_kbps", "fit_square",
           "stamp_untrained"]

DEFAULT_INTRA_PERIOD = 25  # one absolute motion packet a second at 25 fps bounds drift after a loss
DEFAULT_TIMEBASE = 1000  # timestamps in milliseconds
# Bytes a WebRTC data-channel message costs on the wire beyond its payload:
# IPv4 20 + UDP 8 + DTLS record 13 + AES-GCM nonce/tag 24 + SCTP common header 12
# + DATA chunk 16 = 93, before padding to 4 bytes. Used for on-wire estimates only.
DATA_CHANNEL_OVERHEAD_BYTES = 93
# SCTP splits a longer message into DATA chunks of at most this much user data, one datagram
# each (aiortc's USERDATA_MAX_LENGTH: a 1189-byte SCTP packet fits the IPv6 minimum MTU).
DATA_CHANNEL_CHUNK_BYTES = 1160
# The header extension elements aiortc already puts in every Opus packet: mid "0" (1 + 1 bytes)
# and the audio level (1 + 1), 4 bytes, a multiple of 4 so no padding.
AUDIO_PACKET_ELEMENT_BYTES = 4


def data_channel_wire_kbps(payload_bytes: int, messages: int, seconds: float) -> float:
    """kbit/s on the wire of ``messages`` data-channel messages carrying ``payload_bytes`` in
    all over ``seconds``: the payload plus DATA_CHANNEL_OVERHEAD_BYTES per message."""
    return 8.0 * (payload_bytes + messages * DATA_CHANNEL_OVERHEAD_BYTES) / max(seconds, 1e-9) / 1000.0


def data_channel_message_wire_bytes(payload_bytes: int) -> int:
    """On-wire bytes of one data-channel message: its payload plus the per-datagram overhead
    of every SCTP chunk it is split into (a keyframe of 7 KB takes 7 datagrams)."""
    datagrams = max(1, -(-payload_bytes // DATA_CHANNEL_CHUNK_BYTES))
    return payload_bytes + datagrams * DATA_CHANNEL_OVERHEAD_BYTES


def motion_on_audio_wire_bytes(packet_bytes: int) -> int:
    """What one motion packet of ``packet_bytes`` adds to the Opus RTP packet it rides on as a
    header extension element (rtc.motion_over_audio): the element and its header, and the
    padding of the extension block to 4 bytes. Up to 16 bytes every element keeps the one-byte
    header; a longer one moves them all to the two-byte form (RFC 8285)."""
    if packet_bytes <= 16:
        block = AUDIO_PACKET_ELEMENT_BYTES + 1 + packet_bytes
    else:
        block = AUDIO_PACKET_ELEMENT_BYTES + 2 + 2 + packet_bytes  # mid and level gain a byte each
    return -(-block // 4) * 4 - AUDIO_PACKET_ELEMENT_BYTES


def fit_square(image: np.ndarray, size: int) -> np.ndarray:
    """An H×W×3 uint8 RGB image resized to size×size (unchanged when it already is)."""
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3
            and image.dtype == np.uint8):
        raise ValueError(f"expected an H×W×3 uint8 RGB image, got {getattr(image, 'shape', None)} "
                         f"{getattr(image, 'dtype', None)}")
    if image.shape[:2] == (size, size):
        return np.ascontiguousarray(image)
    shrinking = image.shape[0] > size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def stamp_untrained(image: np.ndarray) -> np.ndarray:
    """Burn an 'UNTRAINED MODEL' banner into a frame so nobody mistakes it for codec output."""
    out = image.copy()
    h, w = out.shape[:2]
    scale = max(w / 400.0, 0.3)
    cv2.rectangle(out, (0, 0), (w, int(22 * scale) + 4), (0, 0, 0), thickness=-1)
    cv2.putText(out, "UNTRAINED MODEL", (4, int(18 * scale)), cv2.FONT_HERSHEY_SIMPLEX,
                0.6 * scale, (255, 64, 64), max(1, int(scale)), cv2.LINE_AA)
    return out


@dataclass(frozen=True)
class RefreshPolicy:
    """Closed-loop keyframe refresh: the sender renders what the receiver will show (the
    decoded keyframe and the quantized motion, through the same model, without the refiner)
    and scores it against the real crop with :func:`codec.rebuild_score.rebuild_error`.

    The rule asks the question a refresh answers: would the frame at hand, sent as the
    keyframe, have rebuilt the last seconds better than the keyframe the receiver holds? Every
    ``candidate_every`` frames the sender takes the current crop as a trial keyframe, renders
    from it the frames of the last ``window_s`` seconds (every ``window_step``-th, leaving out
    the last ``window_gap_s``, which any neighbour rebuilds well) and compares their mean error
    with what the held keyframe gave on the same frames. When the trial does better by
    ``gain`` or more, the trial frame itself is sent. Recent frames stand in for the coming
    ones: a still talker whose keyframe already serves is left alone, whatever its error; a
    keyframe caught mid-blink or mid-word is replaced by one that serves the talker's usual
    face; a turned head or a new scene is caught as soon as the new view has lasted long
    enough to be worth a keyframe. ``gain`` is the rate knob. (An error threshold refreshes
    forever on a noisy webcam whose rebuild is never sharp; a debt of error above the floor
    right after the keyframe, the rule before this one, refreshes a steady talker whose error
    plateaus, and sends whatever frame is at hand: benchmarks.refresh_oracle and README.)

    gain: mean rebuild error over the window a trial keyframe must save (lower: more keyframes);
    window_s / window_gap_s / window_step / candidate_every: the trial's frames and how often
        one is tried (sender CPU: one source and window_s·fps/window_step warps per trial);
    jump: ... or refresh at once when the error stands this far above the first check after
        the keyframe for ``hold_checks`` checks (a cut, a light switched on: no need to wait);
    pose_limit_deg: ... or when yaw or pitch stays this far from the keyframe's for
        ``hold_checks`` checks (a turned head shows sides of the face the keyframe lacks);
    check_every: render and score every N-th frame (sender CPU: one warp, ~3 ms at 256 px);
    min_interval_s: never two keyframes closer than this;
    max_keyframe_kbps: keyframe bits per second over the stream so far stay under this,
        after the first keyframe and one refresh of credit;
    fallback_refreshes / fallback_window_s: when that many refreshes in a row each come due
        within this many seconds of the keyframe before, a keyframe no longer helps (a hand
        over the face, someone walking through): the Encoder says so in ``fallback`` and a
        call switches to H.264; so does a face missing for ``face_lost_frames`` frames;
    probe_s / probe_excess: while in fallback the sender tries a local keyframe (nothing is
        sent) and returns when, for ``probe_s``, the rebuild's error stays on average less
        than ``probe_excess`` above its first check and a face is seen.
    """

    gain: float = 0.1
    window_s: float = 2.0
    window_gap_s: float = 0.2
    window_step: int = 5
    candidate_every: int = 5
    jump: float = 0.45
    pose_limit_deg: float = 25.0
    hold_checks: int = 3
    check_every: int = 1
    min_interval_s: float = 1.0
    max_keyframe_kbps: float = 16.0
    fallback_refreshes: int = 3
    fallback_window_s: float = 2.0
    face_lost_frames: int = 25
    probe_s: float = 1.0
    probe_excess: float = 0.25


@dataclass
class EncoderStats:
    frames: int = 0
    keyframes: int = 0
    keyframe_bytes: int = 0
    motion_packets: int = 0
    motion_bytes: int = 0  # whole motion packets: type byte, varints and range-coded payload
    intra_packets: int = 0
    patches: int = 0
    patch_bytes: int = 0
    patches_over_budget: int = 0  # wanted, but the byte budget said wait
    keyframe_reasons: list[tuple[int, str]] = field(default_factory=list)  # (seq, why) of every keyframe
    refreshes: list[tuple[int, str]] = field(default_factory=list)  # (seq, why) of closed-loop keyframes
    fallbacks: list[tuple[int, str]] = field(default_factory=list)  # (seq, why): keyframes stopped helping
    returns: list[tuple[int, str]] = field(default_factory=list)  # (seq, why): a keyframe holds again
    last_rebuild_error: float | None = None  # the closed loop's last score


class Encoder:
    """Sender side of the codec: square RGB face crops -> packets (bytes)."""

    def __init__(self, model: TalkingHeadModel, *, quality: int = DEFAULT_QUALITY,
                 intra_period: int = DEFAULT_INTRA_PERIOD, keyframe_codec: str = "webp",
                 keyframe_quality: int | None = None, timebase: int = DEFAULT_TIMEBASE,
                 frame_rate: float = 25.0, refresh: RefreshPolicy | None = None, patches: bool = True,
                 patch_quality: int = DEFAULT_PATCH_QUALITY, patch_kbps: float = DEFAULT_PATCH_KBPS) -> None:
        if keyframe_codec not in KEYFRAME_CODEC_IDS:
            raise ValueError(f"keyframe codec must be one of {sorted(KEYFRAME_CODEC_IDS)}")
        self.model = model
        self.quality = quality
        self.table = quant_table_for(model.layout, quality)
        self.intra_period = intra_period
        self.keyframe_codec = keyframe_codec
        # None: the codec's default (WebP q90; AV1 q78, which matched WebP q90's rebuilt frames)
        self.keyframe_quality = keyframe_quality if keyframe_quality is not None else \
            default_keyframe_quality(keyframe_codec)
        self.timebase = timebase
        self.frame_rate = frame_rate
        self._tracker = model.motion_tracker()
        self._motion = MotionEncoder(self.table, model.layout.expression_count, intra_period)
        self._seq = 0
        self._keyframe_requested = True
        self.stats = EncoderStats()
        self.refresh = refresh
        # The closed loop scores the receiver's picture without the learned refiner: on a CPU
        # it costs ~10× the warp per check, and it moves PSNR by 0.05 dB on average on dev
        # (benchmarks/results/rd-dev-refiner.json against rd-dev-warp.json).
        self._check_model = model.plain()
        self._local_source = None  # the receiver's source state, for the closed loop
        self._last_keyframe_seq: int | None = None
        self._next_keyframe_reason = "stream start"
        self.last_keyframe_reason = ""  # why the newest keyframe was sent (a call's viewer shows it)
        self._floor: float | None = None  # the first check's error after the last keyframe
        self._keyframe_pose: np.ndarray | None = None  # yaw, pitch of the last keyframe
        self._turned_checks = 0
        self._jump_checks = 0
        # The checked frames since the last keyframe, within the trial window: (seq, crop,
        # decoded motion, rebuild error from the held keyframe).
        self._window: collections.deque = collections.deque()
        self._trial_keyframe: tuple[np.ndarray, bytes] | None = None  # (crop, info) the loop chose to send
        self._quick_refreshes = 0  # refreshes in a row that came due within fallback_window_s
        self._frames_without_face = 0
        self.fallback: str | None = None  # set when keyframes stopped helping: why (a call goes H.264)
        self._probe = None  # while in fallback: [source, first probe frame, floor, debt] of a trial keyframe
        self._probe_frames = 0
        # Reference patches need the receiver's state too: its keyframe and patches.
        self.patches = patches and model.supports_patches
        # Patches are small crops of the mouth and eyes: WebP also when keyframes are AV1 (an AV1
        # encoder per patch would cost ~70 ms; each patch packet names its own codec).
        patch_codec = "webp" if keyframe_codec == "av1" else keyframe_codec
        self._patch_sender = (PatchSender(model, patch_codec, patch_quality, patch_kbps)
                              if self.patches else None)

    @classmethod
    def from_pretrained(cls, name: str = DEFAULT_MODEL, *, untrained: bool = False,
                        weights: Path | str | None = None, seed: int = 0,
                        device: str = "cpu", **settings) -> Encoder:
        return cls(resolve_model(name, untrained=untrained, weights=weights, seed=seed,
                                 device=device), **settings)

    def stream_header(self) -> StreamHeader:
        model = self.model
        return StreamHeader(
            model_name=model.name,
            weights_sha256_prefix=model.sha256_prefix,
            width=model.image_size,
            height=model.image_size,
            family=int(model.family),
            expression_count=model.layout.expression_count,
            timebase=self.timebase,
            quality=self.quality,
            intra_period=self.intra_period,
            quant_table=self.table,
            keyframe_codec=KEYFRAME_CODEC_IDS[self.keyframe_codec],
            flags=int(HeaderFlags.UNTRAINED) if model.untrained else 0,
            frame_rate_millihz=int(round(self.frame_rate * 1000)),
        )

    def header(self) -> bytes:
        """The stream header, sent once before any packet (and again to a rejoining peer)."""
        return self.stream_header().pack()

    def request_keyframe(self, reason: str = "requested") -> None:
        """Send a keyframe with the next frame (start of call, receiver request, face moved);
        ``reason`` is recorded with it (``last_keyframe_reason``, ``stats.keyframe_reasons``)."""
        if not self._keyframe_requested:
            self._next_keyframe_reason = reason
        self._keyframe_requested = True

    @property
    def face_seen(self) -> bool:
        """Whether the tracker found a face by detection in the last encoded frame."""
        return bool(self._tracker.face_seen)

    def request_intra(self) -> None:
        """Make the next motion packet absolute (the receiver lost one; no keyframe needed)."""
        self._motion.force_intra()

    def encode(self, frame: np.ndarray, timestamp: float | None = None) -> list[bytes]:
        """One square RGB crop (H×W×3 uint8) at ``timestamp`` seconds -> its packets.

        Without a timestamp, frames are taken to be evenly spaced at the frame rate."""
        if timestamp is None:
            timestamp = self._seq / self.frame_rate
        crop = fit_square(frame, self.model.image_size)
        seq = self._seq
        self._seq += 1
        ticks = max(0, int(round(timestamp * self.timebase)))
        vector = self._tracker.motion(crop)
        packets: list[bytes] = []
        if self._keyframe_requested:
            # The frame the closed loop tried and chose (one frame back), else this one.
            image, info = self._trial_keyframe or (crop, self._tracker.keyframe_info(crop))
            self._trial_keyframe = None
            data = encode_keyframe(image, self.keyframe_codec, self.keyframe_quality)
            packet = KeyframePacket(seq=seq, timestamp=ticks,
                                    codec_id=KEYFRAME_CODEC_IDS[self.keyframe_codec],
                                    image_bytes=data, info=info).pack()
            if self.refresh is not None or self.patches:
                # Exactly what the receiver will hold: the decoded image, not the crop.
                decoded = fit_square(decode_keyframe(data, KEYFRAME_CODEC_IDS[self.keyframe_codec]),
                                     self.model.image_size)
                self._local_source = self.model.prepare_source(decoded, info)
            self._last_keyframe_seq = seq
            self._floor, self._turned_checks, self._jump_checks = None, 0, 0
            self._window.clear()
            self._keyframe_pose = None
            packets.append(packet)
            self.stats.keyframes += 1
            self.stats.keyframe_bytes += len(packet)
            self.last_keyframe_reason = self._next_keyframe_reason
            self.stats.keyframe_reasons.append((seq, self.last_keyframe_reason))
            self._keyframe_requested = False
            self._next_keyframe_reason = "requested"
            # A fresh keyframe is a natural resync point for the motion chain too.
            self._motion.force_intra()
        intra, payload = self._motion.encode_vector(vector, seq)
        packet = MotionPacket(seq=seq, timestamp=ticks, intra=intra, payload=payload).pack()
        decoded = self._motion.last_decoded
        if self._patch_sender is not None and self._local_source is not None and decoded is not None:
            # Before the motion packet: they apply to this frame.
            sender = self._patch_sender
            packets += sender.packets(self._local_source, crop, decoded, seq, ticks, timestamp)
            self.stats.patches, self.stats.patch_bytes = sender.sent, sender.sent_bytes
            self.stats.patches_over_budget = sender.over_budget
        packets.append(packet)
        self.stats.frames += 1
        self.stats.motion_packets += 1
        self.stats.motion_bytes += len(packet)
        self.stats.intra_packets += int(intra)
        if self._keyframe_pose is None and decoded is not None:
            self._keyframe_pose = decoded[:2].copy()
        if self.refresh is not None:
            self._watch_face(vector, seq)
            if seq % self.refresh.check_every == 0:
                self._check_rebuild(crop, seq)
        return packets

    def _watch_face(self, vector: np.ndarray, seq: int) -> None:
        """Fallback when the tracker has detected no face for ``face_lost_frames`` frames."""
        lost = np.isnan(vector[:2]).all() or not self.face_seen
        self._frames_without_face = self._frames_without_face + 1 if lost else 0
        if self.fallback is None and self._frames_without_face > self.refresh.face_lost_frames:
            self._enter_fallback(seq, f"no face for {self._frames_without_face} frames")

    def _enter_fallback(self, seq: int, why: str) -> None:
        self.fallback = why
        self._probe = None
        self.stats.fallbacks.append((seq, why))
        log.info("keyframes stopped helping at frame %d: %s", seq, why)

    def _rebuild_error(self, source, motion: np.ndarray, crop: np.ndarray) -> float:
        return rebuild_error(self._check_model.render(source, motion[None])[0], crop)

    def _check_rebuild(self, crop: np.ndarray, seq: int) -> None:
        """The closed loop: score the receiver's rebuild of this frame, refresh when due."""
        policy = self.refresh
        decoded = self._motion.last_decoded
        if policy is None or self._local_source is None or decoded is None or seq == self._last_keyframe_seq:
            return  # (the keyframe's own frame rebuilds to itself: the floor is the next one's)
        error = self._rebuild_error(self._local_source, decoded, crop)
        self.stats.last_rebuild_error = error
        if self._floor is None:
            self._floor = error
        # A copy: fit_square hands back the caller's array, which a camera may fill again.
        self._window.append((seq, crop.copy(), decoded.copy(), error))
        while seq - self._window[0][0] > round(policy.window_s * self.frame_rate):
            self._window.popleft()
        turn = float(np.max(np.abs(decoded[:2] - self._keyframe_pose))) if self._keyframe_pose is not None else 0.0
        self._turned_checks = self._turned_checks + 1 if turn > policy.pose_limit_deg else 0
        self._jump_checks = self._jump_checks + 1 if error - self._floor > policy.jump else 0
        if self._keyframe_requested:
            return
        since = (1e9 if self._last_keyframe_seq is None
                 else (seq - self._last_keyframe_seq) / self.frame_rate)
        elapsed = (seq + 1) / self.frame_rate
        # Budget: the first keyframe and one refresh of credit, then max_keyframe_kbps.
        average_keyframe = self.stats.keyframe_bytes / max(self.stats.keyframes, 1)
        budget_bytes = 2 * average_keyframe + policy.max_keyframe_kbps * 1000.0 / 8.0 * elapsed
        if since < policy.min_interval_s or self.stats.keyframe_bytes + average_keyframe > budget_bytes:
            return
        if self._jump_checks >= policy.hold_checks:
            why = f"rebuild error {error:.2f} jumped over the keyframe's first check {self._floor:.3f}"
        elif not self.face_seen:
            return  # a keyframe without a detected face serves nothing after it
        elif seq % policy.candidate_every == 0 and (trial := self._trial(crop, seq)) is not None:
            held, fresh, info = trial
            # A head turned far from the keyframe's pose lowers the bar to any gain: the trial
            # still has to do better, which a frame caught mid-turn (blurred, half way) does not.
            turned = self._turned_checks >= policy.hold_checks
            if held - fresh < (0.0 if turned else policy.gain):
                return
            window = (seq - self._window[0][0]) / self.frame_rate
            why = (f"head turned {turn:.0f}° from the keyframe; " if turned else "") + \
                f"this frame rebuilds the last {window:.1f} s better: error {fresh:.3f}, not {held:.3f}"
            self._trial_keyframe = (self._window[-1][1], info)  # this crop, as copied above
        else:
            return
        self._quick_refreshes = self._quick_refreshes + 1 if since <= policy.fallback_window_s else 0
        if self._quick_refreshes >= policy.fallback_refreshes and self.fallback is None:
            # A call switches to H.264 now; a file (no H.264 in it) goes on refreshing.
            self._trial_keyframe = None
            self._enter_fallback(seq, f"{self._quick_refreshes} keyframes in a row each lasted "
                                      f"under {policy.fallback_window_s:g} s")
            return
        self.stats.refreshes.append((seq, why))
        log.info("keyframe refresh at frame %d: %s", seq, why)
        self.request_keyframe(why)

    def _trial(self, crop: np.ndarray, seq: int) -> tuple[float, float, bytes] | None:
        """This crop as a trial keyframe: the mean error of the window's frames rebuilt from
        it and from the held keyframe, and its keyframe info; None when the window is short.

        The trial source is the crop itself, not its coded image: coding it would cost an
        encode per trial (~100 ms for AV1), and WebP q90's loss is small against ``gain``."""
        policy = self.refresh
        gap = round(policy.window_gap_s * self.frame_rate)
        frames = [entry for entry in reversed(self._window) if seq - entry[0] >= gap][::policy.window_step]
        if len(frames) < 2:
            return None
        info = self._tracker.keyframe_info(crop)
        source = self._check_model.prepare_source(crop, info)
        rebuilt = self._check_model.render(source, np.stack([motion for _, _, motion, _ in frames]))
        fresh = float(np.mean([rebuild_error(image, real) for image, (_, real, _, _) in zip(rebuilt, frames)]))
        held = float(np.mean([error for _, _, _, error in frames]))
        return held, fresh, info

    def probe(self, frame: np.ndarray) -> str | None:
        """While in ``fallback`` (a call sends H.264): would a keyframe of the camera hold now?

        Tries a local keyframe (coded and decoded as the receiver would get it; nothing is
        sent) and scores the frames after it as the closed loop does. Returns why, and leaves
        fallback with a keyframe requested, once the trial keyframe's error has stayed on
        average less than ``probe_excess`` above its first check for ``probe_s`` seconds, with
        a face in every frame; None meanwhile."""
        policy = self.refresh
        if self.fallback is None or policy is None:
            return None
        crop = fit_square(frame, self.model.image_size)
        # Probed frames are not sent: they take no sequence number (the receiver would count
        # the gap as lost packets), only a count of their own for the probe's clock.
        seq = self._probe_frames
        self._probe_frames += 1
        vector = self._tracker.motion(crop)
        if np.isnan(vector).any() or not self.face_seen:
            self._probe = None
            return None
        if self._probe is None:
            data = encode_keyframe(crop, self.keyframe_codec, self.keyframe_quality)
            decoded = fit_square(decode_keyframe(data, KEYFRAME_CODEC_IDS[self.keyframe_codec]),
                                 self.model.image_size)
            source = self._check_model.prepare_source(decoded, self._tracker.keyframe_info(crop))
            self._probe = [source, seq, None, 0.0]
            return None
        source, first, floor, debt = self._probe
        error = self._rebuild_error(source, vector, crop)
        floor = error if floor is None else floor
        debt += max(0.0, error - floor) / self.frame_rate
        self._probe = [source, first, floor, debt]
        if debt >= policy.probe_excess * policy.probe_s:
            self._probe = None  # this one did not hold: try a fresh one next frame
            return None
        if (seq - first) / self.frame_rate < policy.probe_s:
            return None
        why = f"a trial keyframe held for {policy.probe_s:g} s ({debt:.2f} error-s)"
        self.fallback, self._probe, self._quick_refreshes, self._frames_without_face = None, None, 0, 0
        self.stats.returns.append((self._seq, why))
        self.request_keyframe(f"back from fallback: {why}")
        return why


@dataclass
class DecodedFrame:
    seq: int
    timestamp: float  # seconds
    image: np.ndarray  # H×W×3 uint8 RGB
    motion: np.ndarray  # the decoded motion vector (6 + N float32)
    untrained: bool


@dataclass
class DecoderStats:
    keyframes: int = 0
    frames: int = 0
    missing_reference: int = 0  # inter packets dropped because their reference was lost
    before_keyframe: int = 0  # motion packets that arrived before any keyframe
    stale: int = 0  # duplicated or reordered motion packets older than the last decoded one
    patches: int = 0


class Decoder:
    """Receiver side of the codec: packets (bytes) -> rebuilt frames."""

    def __init__(self, header: StreamHeader, model: TalkingHeadModel) -> None:
        if header.model_name != model.name or header.weights_sha256_prefix != model.sha256_prefix:
            raise ModelMismatchError(
                f"stream was made with model {header.model_name!r} weights "
                f"{header.weights_sha256_prefix.hex()}, this receiver has {model.name!r} "
                f"weights {model.sha256_prefix.hex()}")
        if (header.family != int(model.family) or header.expression_count != model.layout.expression_count
                or header.width != model.image_size or header.height != model.image_size):
            raise ModelMismatchError("stream geometry (family, motion layout or size) does not match "
                                     "the receiver's model")
        self.header = header
        self.model = model
        self.untrained = header.untrained
        self._motion = MotionDecoder(header.quant_table, header.expression_count)
        self._source = None
        self.view = ViewControl()
        self.stats = DecoderStats()

    @classmethod
    def from_header(cls, header: bytes | StreamHeader, *, untrained: bool = False,
                    weights: Path | str | None = None, model: TalkingHeadModel | None = None,
                    seed: int = 0, device: str = "cpu", refiner: bool = True) -> Decoder:
        """A decoder for ``header``: ``model`` when given, else the model the header names,
        resolved with the other arguments (``refiner=False``: a landmark model's plain warp)."""
        if isinstance(header, (bytes, bytearray, memoryview)):
            header = StreamHeader.parse(bytes(header))
        if model is None:
            if header.untrained and not untrained and weights is None:
                raise ModelMismatchError(
                    "this stream was made with an UNTRAINED model; decoding it needs the same "
                    "untrained model: pass --untrained (API: untrained=True)")
            model = resolve_model(header.model_name, untrained=untrained, weights=weights,
                                  seed=seed, device=device, refiner=refiner)
        return cls(header, model)

    @property
    def has_keyframe(self) -> bool:
        return self._source is not None

    def _set_keyframe(self, packet: KeyframePacket) -> None:
        image = fit_square(decode_keyframe(packet.image_bytes, packet.codec_id), self.model.image_size)
        self._source = self.model.prepare_source(image, packet.info)
        self.stats.keyframes += 1

    def _add_patch(self, packet: PatchPacket) -> None:
        if self._source is None:
            return  # its keyframe was lost: the next keyframe starts a fresh reference set
        image = decode_keyframe(packet.image_bytes, packet.codec_id)
        self.model.add_patch(self._source, PatchCandidate(packet.region, packet.slot, packet.x0, packet.y0,
                                                          image, packet.info))
        self.stats.patches += 1

    def render(self, motions: list[np.ndarray]) -> list[np.ndarray]:
        """Render a batch of decoded motion vectors against the current keyframe."""
        if self._source is None:
            raise RuntimeError("render() before any keyframe")
        return self.model.render(self._source, np.stack(motions), self.view)

    def _decode_motion(self, packet: MotionPacket) -> np.ndarray | None:
        last = self._motion.last_seq
        if last is not None and packet.seq <= last:
            # Duplicated or late (reordered) packet: the motion channel is unordered, and an
            # old packet must never move the prediction chain backwards.
            self.stats.stale += 1
            return None
        try:
            motion = self._motion.decode_vector(packet.intra, packet.seq, packet.payload)
        except MissingReferenceError:
            self.stats.missing_reference += 1
            return None
        if self._source is None:
            self.stats.before_keyframe += 1
            return None
        return motion

    def decode(self, data: bytes) -> DecodedFrame | None:
        """One packet in; a rebuilt frame out for a decodable motion packet, else None.

        Raises a BitstreamError subclass for malformed input; a lost reference is not an
        error (it is counted and the caller holds its last frame until the next intra).
        """
        frames = list(self.decode_stream([data]))
        return frames[0] if frames else None

    def decode_stream(self, packets: Iterable[bytes | FramePacket], batch_size: int = 1,
                      render: Callable[[int], bool] | None = None) -> Iterator[DecodedFrame]:
        """Decode many packets (bytes, or packets the caller already parsed), rendering up to
        ``batch_size`` frames per generator call.

        ``render(seq)`` picks the frames to rebuild; the others still advance the motion
        prediction chain (so later frames decode exactly) but cost no generator call and are
        not yielded. A receiver that falls behind, or a benchmark that scores every k-th
        frame, uses it."""
        pending: list[MotionPacket] = []
        motions: list[np.ndarray] = []

        def flush() -> Iterator[DecodedFrame]:
            if not motions:
                return
            images = self.render(motions)
            for packet, motion, image in zip(pending, motions, images):
                self.stats.frames += 1
                yield DecodedFrame(seq=packet.seq, timestamp=packet.timestamp / self.header.timebase,
                                   image=image, motion=motion, untrained=self.untrained)
            pending.clear()
            motions.clear()

        for data in packets:
            packet = data if isinstance(data, FramePacket) else parse_packet(data)
            if isinstance(packet, KeyframePacket):
                yield from flush()  # frames before the new keyframe render against the old one
                self._set_keyframe(packet)
                continue
            if isinstance(packet, PatchPacket):
                yield from flush()  # a patch applies from its own frame on
                self._add_patch(packet)
                continue
            motion = self._decode_motion(packet)
            if motion is None or (render is not None and not render(packet.seq)):
                continue
            pending.append(packet)
            motions.append(motion)
            if len(motions) >= batch_size:
                yield from flush()
        yield from flush()
