"""The streaming codec's API: Encoder / Decoder, packet by packet (files: :mod:`codec.files`).
The Encoder is here, the Decoder in :mod:`codec.decoder`.

Encoder (sender side): square face crops in, packets out. The first frame (and any
frame after ``request_keyframe``) also yields a keyframe packet; every frame yields
one motion packet with its head pose and expression. A real-time sender codes keyframes
off its frame loop (``keyframe_worker=True``, :mod:`codec.keyframe_worker`): the keyframe
packet of a frame then comes out with a later frame's packets.

Decoder (receiver side, :mod:`codec.decoder`): packets in, rebuilt frames out, through
the model interface of :mod:`codec.families`, so either family works. Sequence numbers are
frame numbers, shared by a frame's keyframe and motion packets, so the motion prediction
chain is never broken by a keyframe. Motion packets are compact where the receiver can
recover what they leave out (:mod:`codec.bitstream.sequencing`); the Encoder writes K = 1
reference slot and fills slot 0. What the packets cost on a call's wire is
:mod:`rtc.wire_cost`'s business.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from codec.bitstream import HeaderFlags, KeyframePacket, MotionFramer, StreamHeader

# The receiving half lives in codec.decoder; its names are the API's too.
from codec.decoder import DecodedFrame, Decoder, DecoderStats, HeldReference, stamp_untrained
from codec.families.base import TalkingHeadModel, ViewControl
from codec.keyframe import (
    DEFAULT_KEYFRAME_CODEC,
    KEYFRAME_CODEC_IDS,
    default_keyframe_quality,
    fit_frame,
    fit_square,
)
from codec.keyframe_worker import CodedKeyframe, KeyframeJob, KeyframeWorker, code_keyframe
from codec.motion_coding import DEFAULT_QUALITY, MotionEncoder, quant_table_for
from codec.reference_patches import DEFAULT_PATCH_KBPS, DEFAULT_PATCH_QUALITY, PatchSender
from codec.refresh import LoopEvent, RefreshLoop, RefreshPolicy
from codec.zoo import DEFAULT_MODEL, resolve_model

log = logging.getLogger(__name__)

__all__ = ["DecodedFrame", "Decoder", "DecoderStats", "Encoder", "EncoderStats", "HeldReference", "RefreshPolicy",
           "ViewControl", "fit_frame", "fit_square", "stamp_untrained"]

DEFAULT_INTRA_PERIOD = 25  # one absolute motion packet a second at 25 fps bounds drift after a loss
DEFAULT_TIMEBASE = 1000  # timestamps in milliseconds


@dataclass
class EncoderStats:
    frames: int = 0
    keyframes: int = 0
    keyframe_bytes: int = 0
    motion_packets: int = 0
    motion_bytes: int = 0  # whole motion packets: framing and range-coded payload
    intra_packets: int = 0
    patches: int = 0
    patch_bytes: int = 0
    patches_over_budget: int = 0  # wanted, but the byte budget said wait
    skipped: int = 0  # frames sent without motion: the receiver held no keyframe to render them from
    keyframe_reasons: list[tuple[int, str]] = field(default_factory=list)  # (seq, why) of every keyframe
    refreshes: list[tuple[int, str]] = field(default_factory=list)  # (seq, why) of closed-loop keyframes
    fallbacks: list[tuple[int, str]] = field(default_factory=list)  # (seq, why): keyframes stopped helping
    returns: list[tuple[int, str]] = field(default_factory=list)  # (seq, why): a keyframe holds again
    last_rebuild_error: float | None = None  # the closed loop's last score


class Encoder:
    """Sender side of the codec: RGB pictures -> packets (bytes). The pictures are square face
    crops at the model's size, or, for a model ``at_size(width, height, whole_frame=True)``,
    the camera's whole frame at that size; the stream header carries the size."""

    def __init__(self, model: TalkingHeadModel, *, quality: int = DEFAULT_QUALITY,
                 intra_period: int = DEFAULT_INTRA_PERIOD, keyframe_codec: str = DEFAULT_KEYFRAME_CODEC,
                 keyframe_quality: int | None = None, timebase: int = DEFAULT_TIMEBASE,
                 frame_rate: float = 25.0, refresh: RefreshPolicy | None = None, patches: bool = True,
                 patch_quality: int = DEFAULT_PATCH_QUALITY, patch_kbps: float = DEFAULT_PATCH_KBPS,
                 keyframe_worker: bool = False) -> None:
        """``keyframe_worker``: code keyframes on a background thread (a call: ``encode`` never
        waits for the ~110 ms of an AV1 keyframe; the keyframe packet comes out with the first
        frame encoded after it is done, and until the receiver holds a first keyframe — or a
        fresh one after ``request_keyframe(restart=True)`` — frames send no motion). Without
        it (files, benchmarks) the keyframe goes out with its own frame and the packets are
        deterministic."""
        if keyframe_codec not in KEYFRAME_CODEC_IDS:
            raise ValueError(f"keyframe codec must be one of {sorted(KEYFRAME_CODEC_IDS)}")
        self.model = model
        self.quality = quality
        self.table = quant_table_for(model.layout, quality)
        self.intra_period = intra_period
        self.keyframe_codec = keyframe_codec
        # None: the codec's default (codec.keyframe.DEFAULT_KEYFRAME_QUALITY)
        self.keyframe_quality = keyframe_quality if keyframe_quality is not None else \
            default_keyframe_quality(keyframe_codec)
        self.timebase = timebase
        self.frame_rate = frame_rate
        self._tracker = model.motion_tracker()
        self._motion = MotionEncoder(self.table, model.layout.expression_count, intra_period)
        self._seq = 0
        self._keyframe_requested = True
        self._worker = KeyframeWorker() if keyframe_worker else None
        # The receiver holds no keyframe fit to render from until one of this frame or later
        # is out (None: it does).
        self._restart_from: int | None = 0
        self.stats = EncoderStats()
        self.refresh = refresh
        # The closed loop (codec.refresh), or None: keyframes only when asked for.
        # The loop codes keyframes only for its fallback probe, on the frame loop: a real-time
        # sender's probe uses WebP (the default qualities rebuild alike; AV1 would stall it).
        probe_codec = "webp" if keyframe_worker else keyframe_codec
        self._loop = None if refresh is None else RefreshLoop(
            refresh, model, self._tracker, frame_rate=frame_rate, keyframe_codec=probe_codec,
            keyframe_quality=self.keyframe_quality if probe_codec == keyframe_codec
            else default_keyframe_quality(probe_codec))
        self._local_source = None  # the receiver's source state, for the closed loop and patches
        self._next_keyframe_reason = "stream start"
        self.last_keyframe_reason = ""  # why the newest keyframe was sent (a call's viewer shows it)
        # Reference patches need the receiver's state too: its keyframe and patches.
        self.patches = patches and model.supports_patches
        # Patches are small crops of the mouth and eyes: WebP also when keyframes are AV1 (an AV1
        # encoder per patch would cost ~70 ms; each patch packet names its own codec).
        patch_codec = "webp" if keyframe_codec == "av1" else keyframe_codec
        self._patch_sender = (PatchSender(model, patch_codec, patch_quality, patch_kbps)
                              if self.patches else None)
        # Compact motion packets where the receiver can recover the rest (one reference: slot 0).
        self._framer = MotionFramer(self.stream_header())

    @classmethod
    def from_pretrained(cls, name: str = DEFAULT_MODEL, *, untrained: bool = False,
                        weights: Path | str | None = None, seed: int = 0,
                        device: str = "cpu", **settings) -> Encoder:
        # No refiner: the sender only renders the plain warp, so encoding needs no torch.
        return cls(resolve_model(name, untrained=untrained, weights=weights, seed=seed,
                                 device=device, refiner=False), **settings)

    def stream_header(self) -> StreamHeader:
        model = self.model
        return StreamHeader(
            model_name=model.name,
            weights_sha256_prefix=model.sha256_prefix,
            width=model.frame_size[0],
            height=model.frame_size[1],
            family=int(model.family),
            expression_count=model.layout.expression_count,
            timebase=self.timebase,
            quality=self.quality,
            intra_period=self.intra_period,
            quant_table=self.table,
            keyframe_codec=KEYFRAME_CODEC_IDS[self.keyframe_codec],
            flags=(int(HeaderFlags.UNTRAINED) if model.untrained else 0)
            | (int(HeaderFlags.WHOLE_FRAME) if model.whole_frame else 0),
            frame_rate_millihz=int(round(self.frame_rate * 1000)),
        )

    def header(self) -> bytes:
        """The stream header, sent once before any packet (and again to a rejoining peer)."""
        return self.stream_header().pack()

    def request_keyframe(self, reason: str = "requested", *, restart: bool = False) -> None:
        """Send a keyframe of the next frame (start of call, receiver request, face moved);
        ``reason`` is recorded with it (``last_keyframe_reason``, ``stats.keyframe_reasons``).
        ``restart``: the receiver holds no keyframe fit to render from (a new stream, back from
        H.264, a new crop box); with the keyframe worker, frames send no motion until it is out."""
        if not self._keyframe_requested:
            self._next_keyframe_reason = reason
        self._keyframe_requested = True
        if restart:
            self._restart_from = self._seq

    @property
    def keyframe_pending(self) -> bool:
        """A keyframe is asked for, or being coded off the frame loop."""
        return self._keyframe_requested or (self._worker is not None and self._worker.busy)

    def wait_keyframe(self, timeout: float | None = None) -> bool:
        """Block until the keyframe being coded off the loop is done (up to ``timeout`` s), so
        that the next ``encode`` sends it; whether one is. (``encode`` itself never waits.)"""
        return self._worker is not None and self._worker.wait(timeout)

    def close(self) -> None:
        """Stop the keyframe worker's thread (a keyframe being coded is dropped)."""
        if self._worker is not None:
            self._worker.close()

    @property
    def fallback(self) -> str | None:
        """Why keyframes stopped helping (a call sends H.264 meanwhile), or None while they help."""
        return None if self._loop is None else self._loop.fallback

    @property
    def face_seen(self) -> bool:
        """Whether the tracker found a face by detection in the last encoded frame."""
        return bool(self._tracker.face_seen)

    def request_intra(self) -> None:
        """Make the next motion packet absolute (the receiver lost one; no keyframe needed)."""
        self._motion.force_intra()

    def encode(self, frame: np.ndarray, timestamp: float | None = None) -> list[bytes]:
        """One RGB picture (H×W×3 uint8: a square face crop, or the whole frame for a model
        ``at_size(..., whole_frame=True)``), resized to the model's ``frame_size``, at
        ``timestamp`` seconds -> its packets.

        Without a timestamp, frames are taken to be evenly spaced at the frame rate."""
        if timestamp is None:
            timestamp = self._seq / self.frame_rate
        crop = fit_frame(frame, self.model.frame_size)
        seq = self._seq
        self._seq += 1
        ticks = max(0, int(round(timestamp * self.timebase)))
        vector = self._tracker.motion(crop)
        worker = self._worker
        # A keyframe the worker finished goes out before this frame's motion, which it serves.
        coded = worker.take() if worker is not None else None
        packets = [] if coded is None else [self._keyframe_out(coded)]
        if self._keyframe_requested and not (worker is not None and worker.busy):
            job = self._keyframe_job(crop, seq, ticks, copy=worker is not None)
            if worker is None:
                packets.append(self._keyframe_out(code_keyframe(job)))
            else:
                worker.submit(job)
        if self._restart_from is not None:
            self.stats.skipped += 1  # the receiver could render nothing from this motion
            return packets
        intra, payload = self._motion.encode_vector(vector, seq)
        packet = self._framer.pack(seq, ticks, intra, payload)
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
        if self._loop is not None:
            for event in self._loop.check(seq, crop, vector, decoded, self._local_source,
                                          keyframe_pending=self.keyframe_pending):
                self._act_on(event)
            self.stats.last_rebuild_error = self._loop.last_error
        return packets

    def _keyframe_job(self, crop: np.ndarray, seq: int, ticks: int, copy: bool) -> KeyframeJob:
        """The keyframe asked for, taken now: the frame the closed loop tried and chose (one
        frame back), else this one (``copy``: the worker's own copy of the caller's crop)."""
        chosen = self._loop.take_keyframe() if self._loop is not None else None
        image, info = (chosen.crop, chosen.info) if chosen else (crop, self._tracker.keyframe_info(crop))
        job = KeyframeJob(seq, ticks, image.copy() if copy and not chosen else image, info,
                          self._next_keyframe_reason, self.keyframe_codec, self.keyframe_quality,
                          self.model.frame_size, decode=self._loop is not None or self.patches)
        self._keyframe_requested = False
        self._next_keyframe_reason = "requested"
        return job

    def _keyframe_out(self, coded: CodedKeyframe) -> bytes:
        """The packet of a coded keyframe, with the sender's record of what the receiver holds."""
        job = coded.job
        keyframe = KeyframePacket(seq=job.seq, timestamp=job.ticks, codec_id=KEYFRAME_CODEC_IDS[job.codec],
                                  image_bytes=coded.data, info=job.info)
        packet = keyframe.pack()
        self._framer.keyframe(keyframe.slot)  # the slot a compact intra packet now implies
        if coded.received is not None:
            # Exactly what the receiver will hold: the decoded image, not the crop.
            self._local_source = self.model.prepare_source(coded.received, job.info)
        if self._loop is not None:
            self._loop.keyframe_sent(job.seq, len(packet))
        self.stats.keyframes += 1
        self.stats.keyframe_bytes += len(packet)
        self.last_keyframe_reason = job.reason
        self.stats.keyframe_reasons.append((job.seq, job.reason))
        if self._restart_from is not None and job.seq >= self._restart_from:
            self._restart_from = None
        # A fresh keyframe is a natural resync point for the motion chain too.
        self._motion.force_intra()
        return packet

    def _act_on(self, event: LoopEvent) -> None:
        if event.kind == "fallback":
            self.stats.fallbacks.append((event.seq, event.why))
            log.info("keyframes stopped helping at frame %d: %s", event.seq, event.why)
        else:
            self.stats.refreshes.append((event.seq, event.why))
            log.info("keyframe refresh at frame %d: %s", event.seq, event.why)
            self.request_keyframe(event.why)

    def probe(self, frame: np.ndarray) -> str | None:
        """While in ``fallback`` (a call sends H.264): would a keyframe of the camera hold now?
        Why, once one would (:meth:`codec.refresh.RefreshLoop.probe`), and a keyframe is
        requested; None meanwhile. Probed frames are not sent."""
        if self._loop is None or self._loop.fallback is None:
            return None
        why = self._loop.probe(fit_frame(frame, self.model.frame_size))
        if why is not None:
            self.stats.returns.append((self._seq, why))
            self.request_keyframe(f"back from fallback: {why}")
        return why
