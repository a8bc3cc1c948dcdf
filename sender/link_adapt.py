"""The sender's answer to a slow link: keyframes sized to what the link carries, patches off
and motion bundled or thinned where the link cannot carry them, each change logged with why.

What the link carries is measured, not assumed: the sender stamps every keyframe it sends
(wall clock, bytes); the receiver reports, in its once-a-second stats, the sequence number
and wall-clock arrival of the newest keyframe it got (``keyframe_seq``, ``keyframe_arrival``).
The transfer time less the path's one-way delay (half SCTP's smoothed round trip) gives a
rate: a keyframe of N bytes that took T s to cross carried about 8·(N − one packet)/T bit/s
(the first packet rides whatever burst the link allows); the estimate is the median of the
last three (one keyframe held up by an outage says little of the rate after it). Keyframes
that answer the receiver's requests are spaced so that they take at most a quarter of the
measured rate (``keyframe_interval``): on a slow link a burst of requests must not turn
into a queue of keyframes. A large
keyframe on a slow link is what queues motion behind it for seconds (motion and the keyframe
share the bottleneck's queue), so each keyframe is sized to cross in
``KEYFRAME_SECONDS`` at the measured rate (its AV1/WebP quality picked from the last
keyframe's bytes at its quality), and the first keyframe of a call, before anything is
known, is a cheap one (``FIRST_KEYFRAME_BYTES``); once a fast link is measured, one
keyframe at the codec's default quality follows ("the link allows a full keyframe").

Below ``PATCHES_MIN_KBPS`` reference patches stop (each is a control message of a few hundred
bytes). Without audio, motion travels one data-channel message per frame, ~20 kbit/s of
headers at 25 fps: below ``BUNDLE_BELOW_KBPS`` two frames share a message (the receiver
renders them 1/fps apart), and below ``LINK_TOO_SLOW_KBPS`` the link is too slow for every
frame: motion is sent for every third frame only ("link too slow" state, logged). Above 2 %
motion loss every ``0.5/loss``-th motion packet (at least every 4th) is intra, so a lost
packet costs a few frames without a round trip.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

events = logging.getLogger("facecodec.call")

KEYFRAME_SECONDS = 0.5  # a keyframe should cross the link in this long
FIRST_KEYFRAME_BYTES = 1_500  # before the link is measured: ~0.6 s at 20 kbit/s
MIN_KEYFRAME_QUALITY = 3
PATCHES_MIN_KBPS = 30.0
BUNDLE_BELOW_KBPS = 40.0  # motion on the data channel: two frames a message below this
LINK_TOO_SLOW_KBPS = 14.0  # motion on the data channel: every third frame only below this
DEFAULT_INTRA_PERIOD = 25  # codec.api's
LOSSY = 0.02  # motion loss above which intra packets come more often
MIN_INTRA_PERIOD = 4
MEASUREMENTS_KEPT = 3
BURST_BYTES = 1_200  # about one full packet
KEYFRAME_SHARE = 0.25  # keyframes answering requests take at most this share of the link
UPGRADE_FACTOR = 1.5  # a better keyframe is worth sending when the budget is this much larger
# Bytes of an AV1 keyframe fall by about this factor per CRF step (SVT-AV1 at 256 px, the
# keyframe-codecs benchmark: CRF 14 → 32 took 5013 → 2263 bytes); WebP's per quality step.
AV1_LOG_BYTES_PER_CRF = 0.045
WEBP_LOG_BYTES_PER_QUALITY = 0.02


@dataclass
class LinkState:
    kbps: float | None = None  # the newest measured rate, or None before any
    keyframe_budget: int = FIRST_KEYFRAME_BYTES
    patches: bool = True
    motion_every: int = 1  # send motion for every N-th frame (1: all)
    bundle: int = 1  # motion packets per data-channel message
    intra_period: int = 25  # motion packets between intra ones


def quality_for_bytes(codec: str, quality: int, nbytes: int, budget: int, default: int) -> int:
    """The keyframe quality whose bytes come nearest ``budget`` from below, given that
    ``quality`` gave ``nbytes`` for this face (never above ``default``)."""
    if nbytes <= 0 or budget <= 0:
        return quality
    ratio = math.log(budget / nbytes)
    if codec == "av1":  # quality q ↔ CRF 63·(100 - q)/100
        crf = 63 * (100 - quality) / 100 - ratio / AV1_LOG_BYTES_PER_CRF
        target = 100 - crf * 100 / 63
    else:
        target = quality + ratio / WEBP_LOG_BYTES_PER_QUALITY
    return int(max(MIN_KEYFRAME_QUALITY, min(default, math.floor(target))))


class LinkAdapter:
    """Decides the sender's keyframe budget, patches and motion rate from the receiver's
    reports (see the module docstring). ``adaptations``: (s since start, what, why)."""

    def __init__(self, *, codec: str, default_quality: int, motion_on_channel: bool = True) -> None:
        self.codec = codec
        self.default_quality = default_quality
        self.motion_on_channel = motion_on_channel
        self.state = LinkState()
        self.adaptations: list[tuple[float, str, str]] = []
        self._sent: dict[int, tuple[float, int, int]] = {}  # keyframe seq -> (wall, bytes, quality)
        self._measured_seq = -1
        self._bounds: list[float] = []  # the newest keyframes' rate bounds (kbit/s)
        self._started = time.monotonic()
        self._last_bytes_quality: tuple[int, int] | None = None  # (bytes, quality) of the newest keyframe

    def _log(self, what: str, why: str) -> None:
        self.adaptations.append((round(time.monotonic() - self._started, 3), what, why))
        events.info("adapting to the link: %s (%s)", what, why)

    def keyframe_quality(self) -> int:
        """The quality for the next keyframe under the current budget."""
        if self._last_bytes_quality is None:
            # Nothing coded yet: the codec's default gives ~4 KB at 256 px (AV1 q66); scale.
            nbytes, quality = 4_000, self.default_quality
        else:
            nbytes, quality = self._last_bytes_quality
        return quality_for_bytes(self.codec, quality, nbytes, self.state.keyframe_budget, self.default_quality)

    def keyframe_interval(self) -> float:
        """The least time between two requested keyframes on this link (s)."""
        if self.state.kbps is None or self._last_bytes_quality is None:
            return 0.0
        return 8.0 * self._last_bytes_quality[0] / (KEYFRAME_SHARE * self.state.kbps * 1000.0)

    def keyframe_sent(self, seq: int, nbytes: int, quality: int) -> None:
        self._sent[seq] = (time.time(), nbytes, quality)
        self._last_bytes_quality = (nbytes, quality)
        for old in [s for s in self._sent if s < seq - 10_000]:
            del self._sent[old]

    def on_peer_stats(self, values: dict[str, float], rtt_s: float | None) -> bool:
        """The receiver's newest report; True when a better keyframe is now worth sending."""
        self._follow_loss(values.get("loss"))
        seq = int(values.get("keyframe_seq", -1))
        arrival = values.get("keyframe_arrival")
        if seq < 0 or arrival is None or seq == self._measured_seq or seq not in self._sent:
            return False
        self._measured_seq = seq
        sent_at, nbytes, quality = self._sent[seq]
        transfer = max(arrival - sent_at - (rtt_s or 0.0) / 2, 0.02)
        # A link's first packet or so passes at once (a shaper's burst, a queue that was empty):
        # only the bytes beyond it measure the rate.
        measured = max(nbytes - BURST_BYTES, nbytes / 2)
        self._bounds.append(min(8.0 * measured / transfer / 1000.0, 10_000.0))
        del self._bounds[:-MEASUREMENTS_KEPT]
        # One keyframe held up by an outage, or one that rode a burst, says little: the median
        # of the last three (the lower of two) is the estimate.
        kbps = float(sorted(self._bounds)[(len(self._bounds) - 1) // 2])
        previous = self.state.kbps
        self.state.kbps = kbps
        # Upwards one step at a time (at most doubling): a small keyframe that rode a burst
        # must not buy a large one on a slow link.
        budget = int(min(kbps * 1000 / 8 * KEYFRAME_SECONDS, 2 * max(nbytes, self.state.keyframe_budget)))
        upgrade = False
        if budget != self.state.keyframe_budget:
            old = self.state.keyframe_budget
            self.state.keyframe_budget = budget
            if previous is None or abs(math.log(max(budget, 1) / max(old, 1))) > 0.3:
                self._log(f"keyframes of at most {budget} bytes",
                          f"a {nbytes}-byte keyframe took {transfer:.2f} s: about {kbps:.0f} kbit/s")
            upgrade = budget >= UPGRADE_FACTOR * nbytes and quality < self.default_quality
        patches = kbps >= PATCHES_MIN_KBPS
        if patches != self.state.patches:
            self.state.patches = patches
            self._log("reference patches " + ("on" if patches else "off"), f"about {kbps:.0f} kbit/s")
        if self.motion_on_channel:
            self._motion_rate(kbps)
        return upgrade

    def _follow_loss(self, loss: float | None) -> None:
        """A lossy link gets intra motion packets more often: a lost packet breaks the motion
        chain until the next intra, and asking for one costs a round trip on a lossy link."""
        if loss is None:
            return
        period = DEFAULT_INTRA_PERIOD if loss < LOSSY else max(MIN_INTRA_PERIOD, min(
            DEFAULT_INTRA_PERIOD, int(round(0.5 / loss))))
        if period != self.state.intra_period:
            self.state.intra_period = period
            self._log(f"an intra motion packet every {period} frames", f"{100 * loss:.1f} % of motion lost")

    def _motion_rate(self, kbps: float) -> None:
        every, bundle = (3, 1) if kbps < LINK_TOO_SLOW_KBPS else (1, 2) if kbps < BUNDLE_BELOW_KBPS else (1, 1)
        if (every, bundle) == (self.state.motion_every, self.state.bundle):
            return
        self.state.motion_every, self.state.bundle = every, bundle
        if every > 1:
            self._log(f"link too slow: motion for every {every}rd frame only",
                      f"about {kbps:.0f} kbit/s < {LINK_TOO_SLOW_KBPS:g}")
        elif bundle > 1:
            self._log(f"motion bundled, {bundle} frames a data-channel message",
                      f"about {kbps:.0f} kbit/s < {BUNDLE_BELOW_KBPS:g}")
        else:
            self._log("motion one frame a message", f"about {kbps:.0f} kbit/s")
