"""The streaming codec: Encoder / Decoder, packet by packet (files: :mod:`codec.files`).

Encoder (sender side): square face crops in, packets out. The first frame (and any
frame after ``request_keyframe``) also yields a keyframe packet; every frame yields
one motion packet with its head pose and expression. A real-time sender codes keyframes
off its frame loop (``keyframe_worker=True``, :mod:`codec.keyframe_worker`): the keyframe
packet of a frame then comes out with a later frame's packets.

Decoder (receiver side): packets in, rebuilt frames out. A keyframe packet sets the
cached source state (``model.prepare_source``); each motion packet is rendered from it
(``model.render``). Both go through the model interface of :mod:`codec.families`, so
either family works. Sequence numbers are frame numbers, shared by a frame's keyframe
and motion packets, so the motion prediction chain is never broken by a keyframe. What the
packets cost on a call's wire is :mod:`rtc.wire_cost`'s business.

Motion packets are compact where the receiver can recover what they leave out
(:mod:`codec.bitstream.sequencing`); the Decoder runs that recovery, so it must see packets
in arrival order, and in a call it is told when each motion packet arrived (``parse``). It
holds up to the header's K references (keyframe slots), each with its patches; the Encoder
writes K = 1 and fills slot 0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from codec.bitstream import (
    CompactMotionPacket,
    FramePacket,
    HeaderFlags,
    KeyframePacket,
    MotionFramer,
    MotionPacket,
    MotionSequencer,
    PatchPacket,
    StreamHeader,
    parse_packet,
)
from codec.errors import MissingReferenceError, ModelMismatchError, ReferenceSlotError
from codec.families.base import PatchCandidate, TalkingHeadModel, ViewControl
from codec.keyframe import (
    DEFAULT_KEYFRAME_CODEC,
    KEYFRAME_CODEC_IDS,
    decode_keyframe,
    default_keyframe_quality,
    fit_square,
    received_keyframe,
)
from codec.keyframe_worker import CodedKeyframe, KeyframeJob, KeyframeWorker, code_keyframe
from codec.motion_coding import DEFAULT_QUALITY, MotionDecoder, MotionEncoder, quant_table_for
from codec.reference_patches import DEFAULT_PATCH_KBPS, DEFAULT_PATCH_QUALITY, PatchSender
from codec.refresh import LoopEvent, RefreshLoop, RefreshPolicy
from codec.zoo import DEFAULT_MODEL, resolve_model

log = logging.getLogger(__name__)

__all__ = ["DecodedFrame", "Decoder", "DecoderStats", "Encoder", "EncoderStats", "HeldReference", "RefreshPolicy",
           "ViewControl", "fit_square", "stamp_untrained"]

DEFAULT_INTRA_PERIOD = 25  # one absolute motion packet a second at 25 fps bounds drift after a loss
DEFAULT_TIMEBASE = 1000  # timestamps in milliseconds


def stamp_untrained(image: np.ndarray) -> np.ndarray:
    """Burn an 'UNTRAINED MODEL' banner into a frame so nobody mistakes it for codec output."""
    out = image.copy()
    h, w = out.shape[:2]
    scale = max(w / 400.0, 0.3)
    cv2.rectangle(out, (0, 0), (w, int(22 * scale) + 4), (0, 0, 0), thickness=-1)
    cv2.putText(out, "UNTRAINED MODEL", (4, int(18 * scale)), cv2.FONT_HERSHEY_SIMPLEX,
                0.6 * scale, (255, 64, 64), max(1, int(scale)), cv2.LINE_AA)
    return out


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
    """Sender side of the codec: square RGB face crops -> packets (bytes)."""

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
        """One square RGB crop (H×W×3 uint8) at ``timestamp`` seconds -> its packets.

        Without a timestamp, frames are taken to be evenly spaced at the frame rate."""
        if timestamp is None:
            timestamp = self._seq / self.frame_rate
        crop = fit_square(frame, self.model.image_size)
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
                          self.model.image_size, decode=self._loop is not None or self.patches)
        self._keyframe_requested = False
        self._next_keyframe_reason = "requested"
        return job

    def _keyframe_out(self, coded: CodedKeyframe) -> bytes:
        """The packet of a coded keyframe, with the sender's record of what the receiver holds."""
        job = coded.job
        packet = KeyframePacket(seq=job.seq, timestamp=job.ticks, codec_id=KEYFRAME_CODEC_IDS[job.codec],
                                image_bytes=coded.data, info=job.info).pack()
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
        why = self._loop.probe(fit_square(frame, self.model.image_size))
        if why is not None:
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
    reference: int = 0  # the reference slot it was warped from


@dataclass
class DecoderStats:
    keyframes: int = 0
    frames: int = 0
    missing_reference: int = 0  # inter packets dropped because their predecessor was lost
    before_keyframe: int = 0  # motion packets that arrived before any keyframe
    stale: int = 0  # duplicated or reordered motion packets older than the last decoded one
    patches: int = 0
    unheld_reference: int = 0  # motion or patch packets naming a slot this receiver does not hold
    sequence_forgotten: int = 0  # arrival gaps after which compact packets waited for an intra


@dataclass
class HeldReference:
    """One reference slot: a keyframe's prepared source state (its patches are added to it,
    so they go with it) and its keyframe info."""

    seq: int  # the keyframe's frame
    source: object  # model.prepare_source(...)
    info: bytes
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
        self._sequencer = MotionSequencer(header)
        self.references: list[HeldReference | None] = [None] * header.reference_slots
        self._newest_slot: int | None = None  # the slot the newest keyframe filled
        self._current_slot: int | None = None  # the slot motion warps from now
        # A slot the stream uses and this receiver does not hold (its keyframe was lost, or
        # the receiver joined late): a call turns it into a keyframe request. None: none.
        self.needs_reference: int | None = None
        self.view = ViewControl()
        self.stats = DecoderStats()

    @classmethod
    def from_header(cls, header: bytes | StreamHeader, *, untrained: bool = False,
                    weights: Path | str | None = None, model: TalkingHeadModel | None = None,
                    seed: int = 0, device: str = "cpu", refiner: bool = True) -> Decoder:
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

    @property
    def _source(self):
        """The current reference's source state (None before its keyframe)."""
        held = None if self._current_slot is None else self.references[self._current_slot]
        return None if held is None else held.source

    def _slot(self, slot: int) -> int:
        if not 0 <= slot < len(self.references):
            raise ReferenceSlotError(f"reference slot {slot} out of range: the stream has "
                                     f"{len(self.references)}")
        return slot

    def _set_keyframe(self, packet: KeyframePacket) -> None:
        slot = self._slot(packet.slot)
        image = received_keyframe(packet.image_bytes, packet.codec_id, self.model.image_size)
        self.references[slot] = HeldReference(packet.seq, self.model.prepare_source(image, packet.info),
                                              packet.info)
        self._newest_slot = self._current_slot = slot  # a new keyframe makes its slot current
        if self.needs_reference == slot:
            self.needs_reference = None
        self.stats.keyframes += 1

    def _unheld(self, slot: int) -> None:
        self.stats.unheld_reference += 1
        self.needs_reference = slot

    def _add_patch(self, packet: PatchPacket) -> None:
        held = self.references[self._slot(packet.reference)]
        if held is None:
            self._unheld(packet.reference)  # its keyframe was lost: the next one starts afresh
            return
        image = decode_keyframe(packet.image_bytes, packet.codec_id)
        self.model.add_patch(held.source, PatchCandidate(packet.region, packet.slot, packet.x0, packet.y0,
                                                         image, packet.info))
        held.patches += 1
        self.stats.patches += 1

    def render(self, motions: list[np.ndarray]) -> list[np.ndarray]:
        """Render a batch of decoded motion vectors against the current reference."""
        if self._source is None:
            raise RuntimeError("render() before any keyframe")
        return self.model.render(self._source, np.stack(motions), self.view)

    def parse(self, data: bytes | bytearray | memoryview, arrival: float | None = None) -> FramePacket | None:
        """Parse one packet and recover what a compact motion packet leaves out; None for a
        motion packet dropped unnumbered (counted as stale or a lost reference).

        ``arrival``: when a motion packet arrived (time.monotonic() seconds). A receiver on
        a lossy transport must give it: when nothing was numbered for 32 frame intervals only
        an intra packet can renumber the stream (codec.bitstream.sequencing)."""
        packet = parse_packet(data, self.header)
        if arrival is not None and isinstance(packet, MotionPacket | CompactMotionPacket):
            forgotten = self._sequencer.forgotten
            self._sequencer.arrival(arrival)
            self.stats.sequence_forgotten += self._sequencer.forgotten - forgotten
        return self._sequence(packet)

    def _sequence(self, packet: FramePacket) -> FramePacket | None:
        if not isinstance(packet, MotionPacket | CompactMotionPacket):
            return packet
        sequencer = self._sequencer
        stale, unnumbered = sequencer.stale, sequencer.unnumbered
        resolved = sequencer.resolve(packet)
        self.stats.stale += sequencer.stale - stale
        self.stats.missing_reference += sequencer.unnumbered - unnumbered
        return resolved

    def _decode_motion(self, packet: MotionPacket) -> np.ndarray | None:
        last = self._motion.last_seq
        if last is not None and packet.seq <= last:
            # Duplicated or late (reordered) packet: the motion channel is unordered, and an
            # old packet must never move the prediction chain backwards.
            self.stats.stale += 1
            return None
        try:
            return self._motion.decode_vector(packet.intra, packet.seq, packet.payload)
        except MissingReferenceError:
            self.stats.missing_reference += 1
            return None

    def _motion_reference(self, packet: MotionPacket) -> HeldReference | None:
        """The reference a decoded motion packet warps from (it becomes the current one); None
        (counted) before any keyframe or when its slot is not held."""
        if packet.reference is not None:
            slot = self._slot(packet.reference)  # named (extended form)
        elif packet.intra:
            slot = self._newest_slot  # compact intra: the newest keyframe's
        else:
            slot = self._current_slot  # compact inter: its predecessor's, or a newer keyframe's
        if self._newest_slot is None or slot is None:
            self.stats.before_keyframe += 1
            return None
        self._current_slot = slot
        held = self.references[slot]
        if held is None:
            self._unheld(slot)
        return held

    def decode(self, data: bytes) -> DecodedFrame | None:
        """One packet in; a rebuilt frame out for a decodable motion packet, else None.

        Raises a BitstreamError subclass for malformed input; a lost reference is not an
        error (it is counted and the caller holds its last frame until the next intra).
        """
        frames = list(self.decode_stream([data]))
        return frames[0] if frames else None

    def decode_stream(self, packets: Iterable[bytes | FramePacket | None], batch_size: int = 1,
                      render: Callable[[int], bool] | None = None) -> Iterator[DecodedFrame]:
        """Decode many packets (bytes, or packets the caller already parsed, with
        :meth:`parse` or ``parse_packet``), in arrival order, rendering up to ``batch_size``
        frames per generator call.

        ``render(seq)`` picks the frames to rebuild; the others still advance the motion
        prediction chain (so later frames decode exactly) but cost no generator call and are
        not yielded. A receiver that falls behind, or a benchmark that scores every k-th
        frame, uses it."""
        pending: list[tuple[MotionPacket, int]] = []
        motions: list[np.ndarray] = []
        batch_reference: list[HeldReference | None] = [None]

        def flush() -> Iterator[DecodedFrame]:
            if not motions:
                return
            images = self.model.render(batch_reference[0].source, np.stack(motions), self.view)
            for (packet, slot), motion, image in zip(pending, motions, images):
                self.stats.frames += 1
                yield DecodedFrame(seq=packet.seq, timestamp=packet.timestamp / self.header.timebase,
                                   image=image, motion=motion, untrained=self.untrained, reference=slot)
            pending.clear()
            motions.clear()

        for data in packets:
            packet = self.parse(data) if isinstance(data, bytes | bytearray | memoryview) \
                else self._sequence(data) if data is not None else None
            if packet is None:
                continue
            if isinstance(packet, KeyframePacket):
                yield from flush()  # frames before the new keyframe render against the old one
                self._set_keyframe(packet)
                continue
            if isinstance(packet, PatchPacket):
                yield from flush()  # a patch applies from its own frame on
                self._add_patch(packet)
                continue
            motion = self._decode_motion(packet)
            if motion is None:
                continue
            held = self._motion_reference(packet)
            if held is None or (render is not None and not render(packet.seq)):
                continue
            if held is not batch_reference[0]:
                yield from flush()
                batch_reference[0] = held
            pending.append((packet, self._current_slot))
            motions.append(motion)
            if len(motions) >= batch_size:
                yield from flush()
        yield from flush()
