"""The sender's answer to a slow link: keyframes sized to what the link carries, patches off
and motion bundled or thinned where the link cannot carry them, each change logged with why.

What the link carries is measured, not assumed: the sender stamps every keyframe it sends
(wall clock, bytes); the receiver reports, in its once-a-second stats, the sequence number
and wall-clock arrival of the newest keyframe it got (``keyframe_seq``, ``keyframe_arrival``).
The transfer time less the path's one-way delay (half SCTP's smoothed round trip) gives a
rate: a keyframe of N wire bytes that took T s to cross (less half the least round trip),
behind A wire bytes the sender had already put on the path (SCTP's unacknowledged and queued
chunks: motion, patches; they cross first), carried about 8·(N + A − B)/T bit/s, where B
(``BURST_BYTES``, left out of keyframes over two bursts) may have ridden a shaper's burst; the estimate is the median of the last three (one
keyframe held up by an outage says little of the rate after it). Without A, a keyframe sent
into a full queue measured the queue's drain, not the link (the matrix's 20 kbit/s cell: a
3193-byte keyframe "took 2.78 s: about 10 kbit/s"). Keyframes
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
bytes). Without audio, motion travels one data-channel message per frame, ~94 bytes of headers
each (~19 kbit/s at 25 fps): the sender bundles the fewest frames a message whose cost
(``motion_kbps``) fits ``MOTION_SHARE`` of the measured rate (the receiver renders them 1/fps
apart, every frame still shown); only when even ``MAX_BUNDLE`` frames a message do not fit is
the link too slow for every frame: motion for every second or third frame ("link too slow"
state, logged). Until a keyframe large enough to measure the link has crossed (a small one
rides the shaper's burst and says nothing), motion goes three frames a message, and keyframes
grow to at most ``PROBE_KEYFRAME_BYTES``: just large enough to measure (an unmeasured
3 KB keyframe on a 20 kbit/s link overfilled its 1 s queue). With audio, a measured rate below ``LONG_AUDIO_BELOW_KBPS`` puts audio in 40 ms packets
instead of 20 (:mod:`rtc.opus_encoder`: half the packet headers, ~13 kbit/s less on the wire
for 12 kbit/s of speech; the same speech, 20 ms later), and below ``LONGEST_AUDIO_BELOW_KBPS``
in 60 ms packets (~4 kbit/s less again); above ``SHORT_AUDIO_ABOVE_KBPS`` they go back to
20 ms. When the audio overfills the link (the receiver's capture-to-render latency at least
``CONGESTED_LATENCY_S`` while it loses ``CONGESTED_LOSS`` of the motion riding on the audio,
or twice that latency alone, or before any picture ``CONGESTED_LOSS_ALONE`` of the motion lost;
two reports running: a shaper's queue, not random loss), the packets grow one
step, up to 120 ms packets of at most 8 kbit/s of Opus (~12 kbit/s on the wire); from 120 ms
they go back to 60 once a keyframe measures 24 kbit/s or more beside the audio. Above 2 %
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
MESSAGE_OVERHEAD_BYTES = 94  # IPv4 20, UDP 8, DTLS 37, SCTP 12 and its DATA chunk 16, bundle marker 1
SCTP_CHUNK_BYTES = 1_200  # aiortc's user data per SCTP packet: a keyframe's wire bytes per chunk
# Motion on the data channel takes at most this share of the measured rate. Half, not 0.6:
# at 20 kbit/s two frames a message (58 % of the link) ran on the cliff's edge; once the
# queue overflowed, SCTP's FORWARD-TSNs for the lost motion (~8 kbit/s) kept it overfull for
# the rest of the call (the matrix's 20 kbit/s cell; three frames a message is ~43 %).
MOTION_SHARE = 0.5
MOTION_PACKET_BYTES = 10.0  # a motion packet's own bytes (mean; the session passes the measured one)
MAX_BUNDLE = 6  # frames a message at most: each waits for the last, ~200 ms at 25 fps
UNMEASURED_BUNDLE = 3  # before a keyframe has measured the link (a probe keyframe shares it)
DEFAULT_INTRA_PERIOD = 25  # codec.api's
LOSSY = 0.02  # motion loss above which intra packets come more often
MIN_INTRA_PERIOD = 4
MEASUREMENTS_KEPT = 3
BURST_BYTES = 1_200  # about one full packet
PROBE_KEYFRAME_BYTES = 2_600  # before a large keyframe has measured: over 2 bursts on the wire
KEYFRAME_SHARE = 0.25  # keyframes answering requests take at most this share of the link
UPGRADE_FACTOR = 1.5  # a better keyframe is worth sending when the budget is this much larger
# Bytes of an AV1 keyframe fall by about this factor per CRF step (SVT-AV1 at 256 px, the
# keyframe-codecs benchmark: CRF 14 → 32 took 5013 → 2263 bytes); WebP's per quality step.
AV1_LOG_BYTES_PER_CRF = 0.045
WEBP_LOG_BYTES_PER_QUALITY = 0.02
# The measured rate is what is left beside the audio: the matrix's 100 kbit/s cell measured
# ~60, its 50 kbit/s cell ~9-40. Below 64 kbit/s the 13 kbit/s that longer audio packets save
# is a fifth or more of it; the gap to 128 keeps one noisy estimate from flipping it back.
LONG_AUDIO_BELOW_KBPS = 64.0
LONGEST_AUDIO_BELOW_KBPS = 24.0
SHORT_AUDIO_ABOVE_KBPS = 128.0
SHORT_AUDIO_MS, LONG_AUDIO_MS, LONGEST_AUDIO_MS = 20, 40, 60
# The 20 kbit/s cell with audio: 60 ms packets of 12 kbit/s Opus are 23.8 kbit/s on the wire,
# 40 % of the motion riding on them was lost and its latency grew by the shaper's queue (p50
# 1.65 s). Random loss (the 20 % cell) loses half as much at a 20 ms latency; 300 ms of delay
# reads ~360 ms.
SLOWEST_AUDIO_MS = 120
CONGESTED_LOSS = 0.15
CONGESTED_LOSS_ALONE = 0.4
CONGESTED_LATENCY_S = 1.0
CONGESTED_REPORTS = 2


@dataclass
class LinkState:
    kbps: float | None = None  # the newest measured rate, or None before any
    keyframe_budget: int = FIRST_KEYFRAME_BYTES
    patches: bool = True
    motion_every: int = 1  # send motion for every N-th frame (1: all)
    bundle: int = 1  # motion packets per data-channel message (UNMEASURED_BUNDLE until measured)
    intra_period: int = 25  # motion packets between intra ones
    audio_packet_ms: int = SHORT_AUDIO_MS  # the audio's packet length, where the sender has audio


def wire_bytes(nbytes: int) -> int:
    """A control message of ``nbytes`` on the wire: its SCTP packets' headers added."""
    return nbytes + MESSAGE_OVERHEAD_BYTES * max(1, math.ceil(nbytes / SCTP_CHUNK_BYTES))


def motion_kbps(bundle: int, every: int, fps: float, packet_bytes: float) -> float:
    """What motion on the data channel costs: one message per ``bundle`` sent frames, every
    ``every``-th frame sent (a length byte per bundled packet)."""
    per_frame = packet_bytes + (1 if bundle > 1 else 0) + MESSAGE_OVERHEAD_BYTES / bundle
    return 8.0 * fps / every * per_frame / 1000.0


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


def audio_packet_ms(kbps: float, current: int) -> int:
    """The audio packet length for a link that carries ``kbps`` beside the audio: longer as
    the rate falls, shorter again only well above (no flapping). 120 ms packets come only from
    congestion (``LinkAdapter``); a rate measured at all leaves them only from 24 kbit/s."""
    if kbps < LONGEST_AUDIO_BELOW_KBPS:
        return max(current, LONGEST_AUDIO_MS)
    if kbps > SHORT_AUDIO_ABOVE_KBPS:
        return SHORT_AUDIO_MS
    current = min(current, LONGEST_AUDIO_MS)
    return max(current, LONG_AUDIO_MS) if kbps < LONG_AUDIO_BELOW_KBPS else current


def audio_packet_why(kbps: float, longer: bool) -> str:
    return f"about {kbps:.0f} kbit/s: " + ("fewer audio packet headers" if longer else "room for the shorter audio delay")


def log_adaptation(adaptations: list, started: float, what: str, why: str) -> None:
    """Record one change the sender made for the link, (s since ``started``, what, why), in the
    report's list and the call's event log: the link adapter's and the audio's alike."""
    adaptations.append((round(time.monotonic() - started, 3), what, why))
    events.info("adapting to the link: %s (%s)", what, why)


class LinkAdapter:
    """Decides the sender's keyframe budget, patches and motion rate from the receiver's
    reports (see the module docstring). ``adaptations``: (s since start, what, why)."""

    def __init__(self, *, codec: str, default_quality: int, motion_on_channel: bool = True,
                 fps: float = 25.0) -> None:
        self.codec = codec
        self.fps = fps
        self.motion_packet_bytes = MOTION_PACKET_BYTES  # the session updates it from what it sent
        self.default_quality = default_quality
        self.motion_on_channel = motion_on_channel
        self.audio = False  # this side sends audio whose packet length it may change
        self.state = LinkState(bundle=UNMEASURED_BUNDLE if motion_on_channel else 1)
        self.adaptations: list[tuple[float, str, str]] = []
        self._sent: dict[int, tuple[float, int, int, int]] = {}  # seq -> (wall, bytes, quality, ahead)
        self._measured_seq = -1
        self._bounds: list[float] = []  # the newest keyframes' rate bounds (kbit/s)
        self._large_measured = False  # a keyframe larger than a shaper's burst has crossed
        self._rtt_floor: float | None = None  # the least round trip reported (s)
        self._congested_reports = 0  # reports in a row that read the audio overfilling the link
        self._started = time.monotonic()
        self._last_bytes_quality: tuple[int, int] | None = None  # (bytes, quality) of the newest keyframe

    def _log(self, what: str, why: str) -> None:
        log_adaptation(self.adaptations, self._started, what, why)

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
        # The next keyframe is coded to the budget: a large one sent before the link was
        # measured must not space the small ones after it (the CI cell: 7.5 s between keyframes
        # for a 2115-byte one at 9 kbit/s, where the next would be 591 bytes).
        nbytes = min(self._last_bytes_quality[0], self.state.keyframe_budget)
        return 8.0 * nbytes / (KEYFRAME_SHARE * self.state.kbps * 1000.0)

    def keyframe_sent(self, seq: int, nbytes: int, quality: int, ahead_bytes: int = 0) -> None:
        """Keyframe ``seq`` (``nbytes``) left now, behind ``ahead_bytes`` wire bytes of data
        the sender had put on the path that have not been acknowledged (they cross first)."""
        self._sent[seq] = (time.time(), nbytes, quality, max(0, ahead_bytes))
        self._last_bytes_quality = (nbytes, quality)
        for old in [s for s in self._sent if s < seq - 10_000]:
            del self._sent[old]

    def on_peer_stats(self, values: dict[str, float], rtt_s: float | None) -> bool:
        """The receiver's newest report; True when a better keyframe is now worth sending."""
        self._follow_loss(values.get("loss"))
        if rtt_s is not None:
            self._rtt_floor = rtt_s if self._rtt_floor is None else min(self._rtt_floor, rtt_s)
        if self.audio:
            self._audio_congestion(values.get("loss"), values.get("latency_ms"))
        seq = int(values.get("keyframe_seq", -1))
        arrival = values.get("keyframe_arrival")
        if seq < 0 or arrival is None or seq == self._measured_seq or seq not in self._sent:
            return False
        self._measured_seq = seq
        sent_at, nbytes, quality, ahead = self._sent[seq]
        # The path's own one-way delay is half the least round trip seen: SCTP's smoothed one
        # also holds the queue the keyframe waited in, which is part of its transfer (the 20
        # kbit/s cell: a 2785-byte keyframe behind a filling queue read as ~30 kbit/s).
        transfer = max(arrival - sent_at - (self._rtt_floor or 0.0) / 2, 0.02)
        # Every wire byte counts (SCTP/DTLS/UDP/IP headers included): the link carried them all,
        # and the bytes queued ahead of the keyframe crossed in the same time.
        sent = wire_bytes(nbytes)
        # A keyframe that fits in about one shaper burst may pass at once on a slow link: until
        # a larger one has crossed, motion stays bundled (_motion_rate); keyframes still grow
        # from it, at most doubling each time.
        # The first BURST_BYTES may ride a shaper's token bucket and cross at once: they are
        # left out of a large keyframe's bound (an underestimate only bundles motion more; an
        # overestimate overfills the link's queue).
        # A burst-sized keyframe before any large one counts alone: what was queued ahead of
        # it at a call's start (stream header, mode) rode the same burst (the 20 kbit/s cell:
        # an 844-byte keyframe "behind 469 bytes" read 26 kbit/s and bought a 1586-byte one).
        if sent > 2 * BURST_BYTES:
            crossed = sent + ahead - BURST_BYTES
        else:
            crossed = sent + ahead if self._large_measured else sent
        bound = min(8.0 * crossed / transfer / 1000.0, 10_000.0)
        if sent <= 2 * BURST_BYTES and self._large_measured and self.state.kbps is not None:
            # After a real measurement a burst-sized keyframe may only lower the estimate (the
            # matrix's 20 kbit/s cell: a 617-byte one "took 0.02 s" and unbundled motion).
            bound = min(bound, self.state.kbps)
        self._large_measured |= sent > 2 * BURST_BYTES
        self._bounds.append(bound)
        del self._bounds[:-MEASUREMENTS_KEPT]
        # One keyframe held up by an outage, or one that rode a burst, says little: the median
        # of the last three (the lower of two) is the estimate.
        kbps = float(sorted(self._bounds)[(len(self._bounds) - 1) // 2])
        previous = self.state.kbps
        self.state.kbps = kbps
        # Upwards one step at a time (at most doubling): a small keyframe that rode a burst
        # must not buy a large one on a slow link.
        budget = int(min(kbps * 1000 / 8 * KEYFRAME_SECONDS, 2 * max(nbytes, self.state.keyframe_budget)))
        if not self._large_measured:
            # Unmeasured: a keyframe just large enough to measure the link, no larger (it shares
            # the bottleneck's queue with motion at whatever rate the link really has).
            budget = min(budget, max(PROBE_KEYFRAME_BYTES, nbytes))
        upgrade = False
        if budget != self.state.keyframe_budget:
            old = self.state.keyframe_budget
            self.state.keyframe_budget = budget
            if previous is None or abs(math.log(max(budget, 1) / max(old, 1))) > 0.3:
                self._log(f"keyframes of at most {budget} bytes",
                          f"a {nbytes}-byte keyframe" + (f" behind {ahead} bytes" if ahead else "")
                          + f" took {transfer:.2f} s: about {kbps:.0f} kbit/s")
            # Worth a keyframe: a much better one, or (unmeasured) a probe large enough to
            # measure, when even the burst-sized keyframe read a link that carries it easily.
            probe = not self._large_measured and budget >= PROBE_KEYFRAME_BYTES > nbytes
            upgrade = (budget >= UPGRADE_FACTOR * nbytes or probe) and quality < self.default_quality
        patches = kbps >= PATCHES_MIN_KBPS
        if patches != self.state.patches:
            self.state.patches = patches
            self._log("reference patches " + ("on" if patches else "off"), f"about {kbps:.0f} kbit/s")
        if self.motion_on_channel:
            self._motion_rate(kbps if self._large_measured else min(kbps, self._unmeasured_ceiling()))
        if self.audio:
            self._audio_packets(kbps)
        return upgrade

    def _audio_congestion(self, loss: float | None, latency_ms: float | None) -> None:
        """Longer audio packets while the audio overfills the link (see the module docstring).
        The queue is read off the receiver's capture-to-render latency: motion rides the audio
        packets, so it waits in the same queue. (SCTP's round trip is no help there: it takes
        no sample from a chunk sent again, and on a link losing 40 % most are. An excess over
        the least latency reported is none either: on a link the audio overfills from its
        first packet, the first report already holds the queue.)"""
        latency = None if latency_ms is None else latency_ms / 1000.0
        lost = loss if loss is not None else 0.0
        # A queue on the path and motion lost from it; or a queue of two seconds or more alone
        # (motion then waits behind a keyframe on the data channel rather than being lost); or,
        # before any picture gave a latency, most of the motion lost (the 10 kbit/s cell: 70 %).
        queued = latency is not None and latency >= CONGESTED_LATENCY_S and (
            lost >= CONGESTED_LOSS or latency >= 2 * CONGESTED_LATENCY_S)
        congested = queued or (latency is None and lost >= CONGESTED_LOSS_ALONE)
        self._congested_reports = self._congested_reports + 1 if congested else 0
        longer = [ms for ms in (LONG_AUDIO_MS, LONGEST_AUDIO_MS, SLOWEST_AUDIO_MS) if ms > self.state.audio_packet_ms]
        if self._congested_reports >= CONGESTED_REPORTS and longer:
            self._congested_reports = 0  # the next step waits for two more reports
            self.state.audio_packet_ms = longer[0]
            self._log(f"audio in {longer[0]} ms packets",
                      f"{100 * lost:.0f} % of motion lost" + ("" if latency is None else
                                                              f" and a latency of {latency:.1f} s")
                      + ": the audio overfills the link")

    def _audio_packets(self, kbps: float) -> None:
        packet_ms = audio_packet_ms(kbps, self.state.audio_packet_ms)
        if packet_ms != self.state.audio_packet_ms:
            why = audio_packet_why(kbps, packet_ms > self.state.audio_packet_ms)
            self.state.audio_packet_ms = packet_ms
            self._log(f"audio in {packet_ms} ms packets", why)

    def _unmeasured_ceiling(self) -> float:
        """The highest rate a burst-sized keyframe may claim: just below where motion would go
        fewer than UNMEASURED_BUNDLE frames a message (until a larger keyframe measures the link)."""
        return 0.99 * motion_kbps(UNMEASURED_BUNDLE - 1, 1, self.fps, self.motion_packet_bytes) / MOTION_SHARE

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

    def motion_plan(self, kbps: float) -> tuple[int, int]:
        """(every, bundle): all frames in the fewest frames a message whose cost fits
        MOTION_SHARE of ``kbps``; else every 2nd or 3rd frame at MAX_BUNDLE a message."""
        budget = MOTION_SHARE * kbps
        for bundle in range(1, MAX_BUNDLE + 1):
            if motion_kbps(bundle, 1, self.fps, self.motion_packet_bytes) <= budget:
                return 1, bundle
        every = 2 if motion_kbps(MAX_BUNDLE, 2, self.fps, self.motion_packet_bytes) <= budget else 3
        return every, MAX_BUNDLE

    def _motion_rate(self, kbps: float) -> None:
        every, bundle = self.motion_plan(kbps)
        if (every, bundle) == (self.state.motion_every, self.state.bundle):
            return
        self.state.motion_every, self.state.bundle = every, bundle
        cost = motion_kbps(bundle, every, self.fps, self.motion_packet_bytes)
        if every > 1:
            self._log(f"link too slow: motion for every {'2nd' if every == 2 else '3rd'} frame only, "
                      f"{bundle} a message", f"about {kbps:.0f} kbit/s: even {MAX_BUNDLE} frames a message "
                      f"would take more than {100 * MOTION_SHARE:.0f} %")
        elif bundle > 1:
            self._log(f"motion bundled, {bundle} frames a data-channel message",
                      f"about {kbps:.0f} kbit/s: ~{cost:.1f} kbit/s of motion")
        else:
            self._log("motion one frame a message", f"about {kbps:.0f} kbit/s")
