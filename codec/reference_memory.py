"""The sender's record of the references (keyframes) the receiver holds: K slots.

The receiver keeps up to K keyframes, each with its landmarks, its pose and its patches
(:class:`codec.decoder.HeldReference`). The sender keeps the same K slots here, each with its
copy of that reference's source state (the decoded keyframe plus the patches sent for it),
so that for every frame it can warp from the held reference that rebuilds it best
(:class:`codec.refresh.RefreshLoop` chooses) and send a new keyframe only when none does. A
head that turns away and back reuses the reference it already sent.

*Held* means received: in files and benchmarks every keyframe sent is held at once; in a
call (``acknowledged=True``) only those the receiver reported (the control channel's
``HeldReferences``), so a lost keyframe is never named by a motion packet.

Replacement, when every slot is full (``policy``): ``lru`` frees the slot used least
recently; ``coverage`` frees the slot whose pose is nearest another held reference's (or
the new keyframe's), the most redundant one, keeping the poses spread out. Neither frees the
current reference, nor a keyframe still waiting for the receiver's report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["REPLACEMENT_POLICIES", "ReferenceMemory", "SentReference", "pose_distance"]

REPLACEMENT_POLICIES = ("lru", "coverage")


def pose_distance(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """Degrees between two motion vectors' head poses: the larger of |Δyaw| and |Δpitch| (inf
    when either is unknown; roll is left out: a warp turns the picture in its plane well).
    The cheap prefilter of the reference choice, and the closed loop's head-turn measure."""
    if a is None or b is None:
        return float("inf")
    return float(np.max(np.abs(np.asarray(a[:2], np.float64) - np.asarray(b[:2], np.float64))))


@dataclass
class SentReference:
    """One slot as the sender knows it."""

    slot: int
    seq: int  # the keyframe's frame (the receiver reports it back with the slot)
    source: Any  # the receiver's source state: the decoded keyframe and the patches sent for it
    received: bool  # the receiver holds it (files: at once; calls: once reported)
    pose: np.ndarray | None = None  # the decoded motion vector of its frame (set by the Encoder)
    last_used: int = -1  # the newest frame warped from it
    uses: int = 0  # switches back to it after it was sent: reuses for free


class ReferenceMemory:
    """K slots of :class:`SentReference`; ``policy`` picks the slot a new keyframe fills."""

    def __init__(self, slots: int, policy: str = "lru", *, acknowledged: bool = False) -> None:
        if not 1 <= slots <= 16:
            raise ValueError("reference slots must be 1 … 16")
        if policy not in REPLACEMENT_POLICIES:
            raise ValueError(f"replacement policy must be one of {REPLACEMENT_POLICIES}")
        self.policy = policy
        self.acknowledged = acknowledged
        self.slots: list[SentReference | None] = [None] * slots

    def __len__(self) -> int:
        return len(self.slots)

    def clear(self) -> None:
        """The receiver holds nothing (a new stream: it starts a fresh Decoder)."""
        self.slots = [None] * len(self.slots)

    def held(self) -> list[SentReference]:
        """The references the receiver holds, by slot."""
        return [ref for ref in self.slots if ref is not None and ref.received]

    def get(self, slot: int | None) -> SentReference | None:
        return None if slot is None else self.slots[slot]

    def slot_for_new(self, current: int | None, pose: np.ndarray | None) -> int:
        """The slot the next keyframe fills: an empty one, else by the replacement policy
        among held slots that are not ``current``; K = 1 always slot 0."""
        if len(self.slots) == 1:
            return 0
        for k, ref in enumerate(self.slots):
            if ref is None:
                return k
        # A keyframe still waiting for its report is taken only when nothing else is free.
        candidates = [ref for ref in self.slots if ref.slot != current and ref.received] \
            or [ref for ref in self.slots if ref.slot != current]
        if self.policy == "lru":
            return min(candidates, key=lambda ref: (ref.last_used, ref.seq)).slot
        poses = [ref.pose for ref in self.slots if ref.pose is not None] + ([pose] if pose is not None else [])

        def redundancy(ref: SentReference) -> float:
            others = [p for p in poses if p is not ref.pose]
            return min((pose_distance(ref.pose, p) for p in others), default=float("inf"))

        return min(candidates, key=lambda ref: (redundancy(ref), ref.last_used)).slot

    def sent(self, slot: int, seq: int, source: Any) -> SentReference:
        """A keyframe of frame ``seq`` went out into ``slot`` (its old reference is gone on
        both sides); held at once unless the receiver must report it."""
        ref = SentReference(slot, seq, source, received=not self.acknowledged)
        self.slots[slot] = ref
        return ref

    def report(self, held: dict[int, int]) -> list[int]:
        """The receiver holds ``held`` (slot -> its keyframe's frame). A slot is held when the
        receiver holds the very keyframe the sender last put there; a slot the receiver no
        longer holds is dropped. The slots newly held, in order."""
        newly = []
        for k, ref in enumerate(self.slots):
            if ref is None:
                continue
            holds = held.get(k) == ref.seq
            if holds and not ref.received:
                ref.received = True
                newly.append(k)
            elif not holds and ref.received:
                # Only a restarted receiver forgets a keyframe it reported (a report that
                # predates the keyframe never matched it): it is lost to the sender too.
                self.slots[k] = None
        return newly
