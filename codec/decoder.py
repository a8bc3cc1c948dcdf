"""The receiving half of the streaming codec: packets in, rebuilt frames out (the sending
half and the public names: :mod:`codec.api`).

A keyframe packet sets the cached source state of its reference slot
(``model.prepare_source``); each motion packet is rendered from the current slot
(``model.render``), through the model interface of :mod:`codec.families`, so either family
works. Motion packets are compact where the receiver can recover what they leave out
(:mod:`codec.bitstream.sequencing`); the Decoder runs that recovery, so it must see packets in
arrival order, and in a call it is told when each motion packet arrived (``parse``). It holds
up to the header's K references (keyframe slots), each with its patches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from codec.bitstream import (
    CompactMotionPacket,
    FramePacket,
    KeyframePacket,
    MotionPacket,
    MotionSequencer,
    PatchPacket,
    PredictedKeyframePacket,
    StreamHeader,
    parse_packet,
)
from codec.errors import (
    CodecError,
    MissingReferenceError,
    ModelMismatchError,
    PictureTooLargeError,
    ReferenceSlotError,
)
from codec.families.base import PatchCandidate, TalkingHeadModel, ViewControl
from codec.keyframe import decode_keyframe, received_keyframe
from codec.motion_coding import MotionDecoder
from codec.predicted_keyframe import predict, read_motion_info, rebuild_reference
from codec.zoo import resolve_model

log = logging.getLogger(__name__)


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
    predicted_keyframes: int = 0  # refreshes built from a held reference (also in ``keyframes``)


@dataclass
class HeldReference:
    """One reference slot: a keyframe's prepared source state (its patches are added to it,
    so they go with it) and its keyframe info."""

    seq: int  # the keyframe's frame
    source: object  # model.prepare_source(...)
    info: bytes
    patches: int = 0


# The largest picture a receiver renders unless told otherwise: 4096 per side and 16 MP. The
# format allows 16384 per side; a header beyond the receiver's limit is refused before anything
# the size of the picture is allocated (a 16384² frame would be 805 MB of RGB).
MAX_PICTURE_SIDE = 4096
MAX_PICTURE_PIXELS = 16 * 1024 * 1024


def check_picture_size(header: StreamHeader, max_side: int = MAX_PICTURE_SIDE,
                       max_pixels: int = MAX_PICTURE_PIXELS) -> None:
    """Raise :class:`PictureTooLargeError` when the stream's picture is beyond this receiver."""
    if max(header.width, header.height) > max_side or header.width * header.height > max_pixels:
        raise PictureTooLargeError(
            f"stream picture {header.width}×{header.height} is beyond this receiver's limit "
            f"({max_side} per side, {max_pixels / 1e6:.1f} MP)")


class Decoder:
    """Receiver side of the codec: packets (bytes) -> rebuilt frames."""

    def __init__(self, header: StreamHeader, model: TalkingHeadModel) -> None:
        check_picture_size(header)
        if header.model_name != model.name or header.weights_sha256_prefix != model.sha256_prefix:
            raise ModelMismatchError(
                f"stream was made with model {header.model_name!r} weights "
                f"{header.weights_sha256_prefix.hex()}, this receiver has {model.name!r} "
                f"weights {model.sha256_prefix.hex()}")
        if header.family != int(model.family) or header.expression_count != model.layout.expression_count:
            raise ModelMismatchError("stream geometry (family or motion layout) does not match "
                                     "the receiver's model")
        try:  # the picture's size is the stream's (the landmark family renders any size)
            model = model.at_size(header.width, header.height, header.whole_frame)
        except ValueError as error:
            raise ModelMismatchError(f"stream size {header.width}×{header.height}: {error}") from error
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
        check_picture_size(header)  # before loading a model for it
        if model is None:
            if header.untrained and not untrained and weights is None:
                raise ModelMismatchError(
                    "this stream was made with an UNTRAINED model; decoding it needs the same "
                    "untrained model: pass --untrained (API: untrained=True)")
            model = resolve_model(header.model_name, untrained=untrained, weights=weights,
                                  seed=seed, device=device, refiner=refiner)
        return cls(header, model)

    def held_references(self) -> dict[int, int]:
        """The reference slots this receiver holds: slot -> its keyframe's frame (a call
        reports them to the sender, which names only these)."""
        return {slot: held.seq for slot, held in enumerate(self.references) if held is not None}

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
        image = received_keyframe(packet.image_bytes, packet.codec_id, self.model.frame_size)
        self.references[slot] = HeldReference(packet.seq, self.model.prepare_source(image, packet.info),
                                              packet.info)
        self._newest_slot = self._current_slot = slot  # a new keyframe makes its slot current
        if self.needs_reference == slot:
            self.needs_reference = None
        self.stats.keyframes += 1

    def _set_predicted(self, packet: PredictedKeyframePacket) -> None:
        """A refresh predicted from a held reference (codec.predicted_keyframe): the plain warp
        of the base with the packet's motion, corrected by its residual, fills the slot. When
        the base is not held (or holds another frame than the sender's base) the slot is
        emptied, never built from something else, and counted like motion naming an unheld
        slot: a call asks for a keyframe. So is a packet that fails to decode (raised)."""
        slot, base = self._slot(packet.slot), self._slot(packet.base)
        held = self.references[base]
        if held is None or held.seq != packet.base_seq:
            self.references[slot] = None
            self._unheld(slot)
            return
        try:
            motion = read_motion_info(packet.motion, self.model.layout.vector_length)
            image = rebuild_reference(predict(self.model, held.source, motion), packet.data, packet.quality,
                                      packet.check)
            source = self.model.prepare_source(image, packet.info)
        except CodecError:
            self.references[slot] = None  # the sender now predicts from a reference we lack
            self._unheld(slot)
            raise
        self.references[slot] = HeldReference(packet.seq, source, packet.info)
        self._newest_slot = self._current_slot = slot
        if self.needs_reference == slot:
            self.needs_reference = None
        self.stats.keyframes += 1
        self.stats.predicted_keyframes += 1

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
            if isinstance(packet, PredictedKeyframePacket):
                yield from flush()  # like a keyframe; its base may be the batch's reference
                self._set_predicted(packet)
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
