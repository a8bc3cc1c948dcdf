"""What the compact motion packet leaves out, on both sides (format version 4).

A compact motion packet (:mod:`codec.bitstream.packets`) carries the sequence number's low
6 bits (intra packets: all of it) and no timestamp or reference slot. The sender's
:class:`MotionFramer` writes it only when the receiver's :class:`MotionSequencer`, fed the
same stream, recovers exactly what was left out; otherwise it writes the extended form.

The rules (both classes implement them; the module docstring of packets.py states them
for the format):

- **sequence**: intra packets carry it whole. An inter packet is taken as the previous
  motion packet's sequence + 1 when its low bits say so, else it is dropped unnumbered (a
  predicted packet needs that predecessor anyway). Only 64·k lost packets since the previous
  numbered one could fake "+ 1": a receiver that numbered nothing for
  :data:`ALIAS_GUARD_FRAMES` frame intervals forgets its previous sequence (whatever else
  arrived meanwhile, unnumbered), so after an outage of any length or shape compact inter
  packets wait for an intra packet (which asks nothing of the receiver's memory).
- **timestamp**: the frame-rate grid, ``round(seq · timebase · 1000 / frame_rate_millihz)``
  in exact integers, plus the chain's *departure*: an extended packet's timestamp minus its
  grid value; a compact intra packet resets it to 0, a compact inter packet keeps its
  predecessor's.
- **reference**: resolved by the Decoder when it decodes (keyframes arrive on another
  channel): a compact intra packet warps from the slot of the newest keyframe, a compact
  inter packet from the slot the previous motion packet used (or the slot of a keyframe
  that arrived since), an extended packet from the slot it names.

Why intra packets must name any other slot: a receiver that lost the extended packet that
switched slots would otherwise warp the next intra from the wrong one; inter packets
cannot go wrong that way, they are dropped without their predecessor.
"""

from __future__ import annotations

from dataclasses import dataclass

from codec.bitstream.packets import (
    COMPACT_SEQ_BITS,
    CompactMotionPacket,
    MotionPacket,
    StreamHeader,
)
from codec.errors import BitstreamError

__all__ = ["ALIAS_GUARD_FRAMES", "MotionFramer", "MotionSequencer", "grid_ticks"]

# An arrival gap of this many frame intervals makes the receiver forget its last sequence
# number: half the 64-frame alias span, so a compact inter packet is never numbered across
# a burst of 64·k losses even when delays vary by up to 32 frames (1.28 s at 25 fps).
ALIAS_GUARD_FRAMES = 32
_SEQ_SPAN = 1 << COMPACT_SEQ_BITS


def grid_ticks(header: StreamHeader, seq: int) -> int | None:
    """The timestamp (timebase ticks) frame ``seq`` has at the header's constant frame rate,
    rounded half up in exact integer arithmetic; None when the header has no frame rate."""
    rate = header.frame_rate_millihz
    if rate == 0:
        return None
    return (2 * seq * header.timebase * 1000 + rate) // (2 * rate)


@dataclass(frozen=True)
class _Chain:
    """The last motion packet of the stream: what a compact inter packet after it implies."""

    seq: int
    departure: int | None  # its timestamp minus its grid timestamp (None: no grid)


class MotionFramer:
    """Sender side: one motion packet's bytes, compact where the receiver can recover the rest.

    ``keyframe(slot)`` must be called for every keyframe packet sent (before the motion
    packet of its frame), so the framer knows which slot a compact intra packet implies."""

    def __init__(self, header: StreamHeader) -> None:
        self.header = header
        self._previous: _Chain | None = None
        self._newest_keyframe_slot = 0
        self._current = 0  # the slot the receiver warps from after the previous packet
        self.compact = 0
        self.extended = 0

    def keyframe(self, slot: int) -> None:
        """A keyframe filled ``slot``: it becomes the current and the default reference."""
        self._newest_keyframe_slot = self._current = slot

    def pack(self, seq: int, timestamp: int, intra: bool, payload: bytes,
             reference: int | None = None) -> bytes:
        """The packet's bytes; ``reference`` None warps from the current slot."""
        reference = self._current if reference is None else reference
        if not 0 <= reference < self.header.reference_slots:
            raise ValueError(f"reference slot {reference} out of range")
        grid = grid_ticks(self.header, seq)
        departure = None if grid is None else timestamp - grid
        previous = self._previous
        if grid is None:
            compact = False
        elif intra:
            compact = departure == 0 and reference == self._newest_keyframe_slot
        else:
            compact = (previous is not None and seq == previous.seq + 1
                       and departure == previous.departure and reference == self._current)
        self._previous = _Chain(seq, departure)
        self._current = reference
        if compact:
            self.compact += 1
            return CompactMotionPacket.of(seq, intra, payload).pack()
        self.extended += 1
        return MotionPacket(seq, timestamp, intra, payload, reference).pack()


class MotionSequencer:
    """Receiver side: motion packets in arrival order -> packets with every field known.

    Feed it every motion packet, in the order the decoder will see them. Compact packets
    come back as :class:`MotionPacket` with ``reference=None`` (implied; the Decoder
    resolves it), or None when an inter packet does not follow the previous one (counted in
    ``stale`` or ``unnumbered``)."""

    def __init__(self, header: StreamHeader) -> None:
        self.header = header
        self._previous: _Chain | None = None
        self._previous_at: float | None = None  # when the packet that set _previous arrived
        self._now: float | None = None  # the arrival time of the packet being resolved
        self.guard_s = (ALIAS_GUARD_FRAMES / header.frame_rate if header.frame_rate > 0
                        else float("inf"))
        self.stale = 0  # compact inter packets whose low bits point at or before the previous one
        self.unnumbered = 0  # compact inter packets whose predecessor never came
        self.forgotten = 0  # times an arrival gap made it forget the previous sequence number

    def forget(self) -> None:
        """Drop the previous sequence number: compact inter packets wait for an intra one."""
        self._previous = self._previous_at = None

    def arrival(self, seconds: float) -> None:
        """The next motion packet arrived at ``seconds`` (a monotonic clock). When nothing was
        numbered for ALIAS_GUARD_FRAMES frame intervals, the previous number is forgotten:
        the sender may have moved on too far for 6 bits to say where to."""
        self._now = seconds
        if self._previous_at is not None and seconds - self._previous_at >= self.guard_s:
            self.forgotten += 1
            self.forget()

    def _set(self, seq: int, departure: int | None) -> None:
        self._previous = _Chain(seq, departure)
        self._previous_at = self._now

    def _advance(self, seq: int, departure: int | None) -> None:
        if self._previous is None or seq > self._previous.seq:
            self._set(seq, departure)

    def resolve(self, packet: MotionPacket | CompactMotionPacket) -> MotionPacket | None:
        """The packet with its sequence number and timestamp, or None (see the class doc)."""
        if isinstance(packet, MotionPacket):
            if packet.reference is not None:  # extended (or an older version): all fields given
                grid = grid_ticks(self.header, packet.seq)
                self._advance(packet.seq, None if grid is None else packet.timestamp - grid)
            return packet  # else recovered here before: already counted
        if self.header.frame_rate_millihz == 0:
            raise BitstreamError("compact motion packet in a stream without a frame rate")
        if packet.intra:
            seq = packet.seq
            self._advance(seq, 0)
            return MotionPacket(seq, grid_ticks(self.header, seq), True, packet.payload, None)
        previous = self._previous
        if previous is None or packet.seq_low != (previous.seq + 1) % _SEQ_SPAN:
            if previous is not None and (previous.seq - packet.seq_low) % _SEQ_SPAN < _SEQ_SPAN // 2:
                self.stale += 1  # a duplicate or a late packet of the last 32 frames
            else:
                self.unnumbered += 1
            return None
        seq = previous.seq + 1
        departure = previous.departure or 0  # None only after a gridless packet: unreachable here
        self._set(seq, departure)
        return MotionPacket(seq, grid_ticks(self.header, seq) + departure, False,
                            packet.payload, None)
