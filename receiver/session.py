"""The receiving half of a call: packets in, rebuilt frames out.

A :class:`ReceiverSession` takes the peer's control messages and motion packets (routed here by
:mod:`app.call`), drives the codec's :class:`~codec.api.Decoder` on a render thread, and
hands every shown frame to its sinks (the newest-frame holder the viewer and window read, and
the MP4 recorder). H.264 frames from the RTP track are shown instead while the sender says the
call is in ``h264`` mode.

Robustness, by construction:
- malformed packets raise typed errors inside the decoder; they are counted and dropped;
- duplicated and reordered motion packets are dropped by the decoder (never move backwards);
- after a gap in motion sequence numbers or a run of undecodable packets the receiver holds
  its last frame and asks for a keyframe (rate-limited); the periodic intra packets also
  resynchronise the motion chain on their own;
- each motion packet's arrival time goes to the decoder with it: compact motion packets carry 6
  sequence bits, and after an arrival gap only an intra packet renumbers the stream
  (codec.bitstream.sequencing), so an outage of any length never misnumbers a frame;
- motion that names a reference slot the receiver does not hold asks for a keyframe;
- the render queue is bounded: in live mode only the newest decodable frame of each batch is
  rendered (older ones still advance the motion chain), so a slow receiver drops frames
  instead of falling behind.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from codec.bitstream.control import (
    ControlMessage,
    HeldReferences,
    IntraRequest,
    Keyframe,
    KeyframeRequest,
    ModeRequest,
    ModeSwitch,
    Patch,
    StreamStart,
)
from codec.errors import CodecError
from rtc.motion_bundle import is_bundle, split_bundle

if TYPE_CHECKING:
    from codec.api import Decoder
    from codec.families.base import TalkingHeadModel

log = logging.getLogger(__name__)
events = logging.getLogger("facecodec.call")  # the peer's mode: shown by `facecodec call` without -v

MAX_PENDING_PACKETS = 2_000  # ~80 s of motion at 25 fps; beyond this the oldest are dropped
GAP_FRAMES_FOR_KEYFRAME = 5  # a jump of more than this many sequence numbers asks for a keyframe
STALL_S_FOR_KEYFRAME = 1.0  # packets arrive but none decodes for this long: ask for a keyframe
KEYFRAME_REQUEST_INTERVAL_S = 1.0
INTRA_REQUEST_INTERVAL_S = 0.1  # about one round trip plus a frame on a LAN
FREEZE_GAP_S = 0.2  # no new picture for this long (5 frame intervals at 25 fps) is a freeze
LATENCY_SAMPLES = 20_000  # capture-to-render latencies kept for the percentiles (~13 min at 25 fps)
EVENTS_KEPT = 200  # freezes, keyframe recoveries and mode switches kept for the report


class FreezeMeter:
    """Gaps between shown pictures (neural or H.264), on the monotonic clock: the longest, the
    total time frozen (every gap longer than ``FREEZE_GAP_S``), the freezes themselves, and
    when the first picture came (seconds after ``start``, the call's connection)."""

    def __init__(self) -> None:
        self.start: float | None = None  # set by app.call once connected
        self.first: float | None = None
        self.last: float | None = None
        self.count = 0  # pictures shown
        self.longest_s = 0.0
        self.frozen_s = 0.0
        self.freezes: list[tuple[float, float]] = []  # (start s after connecting, length s)
        self._lock = threading.Lock()

    def shown(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self.count += 1
            if self.first is None:
                self.first = now
            elif self.last is not None:
                gap = now - self.last
                self.longest_s = max(self.longest_s, gap)
                if gap > FREEZE_GAP_S:
                    self.frozen_s += gap
                    if len(self.freezes) < EVENTS_KEPT:
                        self.freezes.append((round(self.last - (self.start or self.first), 3), round(gap, 3)))
            self.last = now

    def summary(self, now: float | None = None) -> dict[str, float | None]:
        """The figures so far; a picture still missing at ``now`` counts as a running freeze."""
        now = time.monotonic() if now is None else now
        with self._lock:
            longest, frozen = self.longest_s, self.frozen_s
            if self.last is not None and now - self.last > FREEZE_GAP_S:
                longest, frozen = max(longest, now - self.last), frozen + now - self.last
            first = None if self.first is None or self.start is None else self.first - self.start
            return {"shown": self.count, "first_picture_s": None if first is None else round(first, 3),
                    "longest_freeze_s": round(longest, 3), "frozen_s": round(frozen, 3)}


@dataclass
class ReceiverStats:
    motion_packets: int = 0
    motion_bytes: int = 0
    control_bytes: int = 0
    malformed: int = 0
    keyframes: int = 0  # whole and predicted
    predicted_keyframes: int = 0  # refreshes predicted from a held reference (codec.predicted_keyframe)
    patches: int = 0  # reference patches received
    rendered: int = 0
    render_skipped: int = 0  # decodable frames not rendered because newer ones were waiting
    queue_dropped: int = 0
    h264_frames: int = 0
    keyframe_requests: int = 0
    intra_requests: int = 0
    bundles: int = 0  # motion messages that carried several frames (rtc.motion_bundle)
    last_keyframe_seq: int = -1  # the newest keyframe's frame and wall-clock arrival: the
    last_keyframe_arrival: float = 0.0  # sender measures the link by them (sender.link_adapt)
    last_keyframe_reason: str = ""  # the sender's reason for the newest keyframe
    last_switch_reason: str = ""  # the sender's reason for the newest mode switch
    highest_seq: int = -1
    first_seq: int | None = None
    latencies_ms: collections.deque = field(default_factory=lambda: collections.deque(maxlen=250))
    # The same, over the whole call (bounded): the percentiles of the call report.
    all_latencies_ms: collections.deque = field(
        default_factory=lambda: collections.deque(maxlen=LATENCY_SAMPLES))
    # Seconds from this side's keyframe request to the first picture rendered from the keyframe
    # that answered it (the first keyframe after the request).
    keyframe_recovery_s: list = field(default_factory=list)
    # Seconds from a keyframe's capture (sender clock + its timestamp) to its arrival here: the
    # time a keyframe spends being coded, queued and carried; with its size in bytes.
    keyframe_delivery: list = field(default_factory=list)
    mode_switches: list = field(default_factory=list)  # (s after connecting, mode, why)
    render_ms: collections.deque = field(default_factory=lambda: collections.deque(maxlen=250))

    @property
    def loss(self) -> float:
        """Fraction of motion sequence numbers never received (0..1)."""
        if self.first_seq is None:
            return 0.0
        expected = self.highest_seq - self.first_seq + 1
        return max(0.0, 1.0 - self.motion_packets / expected) if expected > 0 else 0.0


class RateMeter:
    """Bytes and events per second over a sliding window (for the live stats)."""

    def __init__(self, window_s: float = 2.0) -> None:
        self.window_s = window_s
        self._events: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()

    def add(self, nbytes: int = 0) -> None:
        now = time.monotonic()
        with self._lock:
            self._events.append((now, nbytes))
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._events and now - self._events[0][0] > self.window_s:
            self._events.popleft()

    def rates(self) -> tuple[float, float]:
        """(events/s, kbit/s)."""
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            count = len(self._events)
            total = sum(n for _, n in self._events)
        return count / self.window_s, 8.0 * total / self.window_s / 1000.0


class ReceiverSession:
    """Receive one peer's video.

    Args:
        model: the codec model (``codec.families.TalkingHeadModel``), or None (H.264 only).
        show: called with (H×W×3 uint8 RGB frame, media time s) for every shown frame —
            typically ``LatestFrame.put`` plus the recorder.
        send_control: sends a control message back to the peer's sender.
        live: render only the newest frame of each batch (a call); False renders every frame
            (the demo's offline-quality recording and benchmarks).
    """

    def __init__(self, model: TalkingHeadModel | None, *, show: Callable[[np.ndarray, float], None],
                 send_control: Callable[[ControlMessage], None], live: bool = True) -> None:
        self.model = model
        self.show = show
        self.send_control = send_control
        self.live = live
        self.mode = "neural"
        self.decoder = None
        self.stats = ReceiverStats()
        self.clock: float | None = None
        self._view = None
        self.fps = 25.0
        self.motion_meter = RateMeter()
        self.render_meter = RateMeter()
        self._pending: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._spread: collections.deque = collections.deque()  # bundled packets not yet due
        self._closed = False
        self._working = False  # the render thread is decoding a batch
        self._last_request = -1e9
        self._last_intra_request = -1e9
        self._reported_references: dict[int, int] | None = None  # the last HeldReferences sent
        self._unnumbered = 0  # motion packets received since the last numbered one, not numbered
        self._last_decoded_at = time.monotonic()
        self._undecoded = 0  # motion packets received since the last rendered frame
        self.freeze = FreezeMeter()
        self._keyframe_walls: collections.deque = collections.deque(maxlen=64)  # (packet, arrival)
        self._keyframe_asked_at: float | None = None  # the oldest unanswered keyframe request
        self._keyframe_answered_at: float | None = None  # that request, once its keyframe came
        self._thread = threading.Thread(target=self._render_loop, name="receiver-render", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ input

    def on_control(self, message) -> None:
        if isinstance(message, StreamStart):
            self._start_stream(message)
        elif isinstance(message, Keyframe | Patch):
            if isinstance(message, Keyframe) and message.reason:
                self.stats.last_keyframe_reason = message.reason
                log.info("keyframe from the peer: %s", message.reason)
            if isinstance(message, Keyframe):  # its arrival, for its delivery time
                with self._cond:
                    self._keyframe_walls.append((message.packet, time.time()))
            self._enqueue(message.packet)
        elif isinstance(message, ModeSwitch):
            self.stats.last_switch_reason = f"{message.mode}: {message.reason}"
            if len(self.stats.mode_switches) < EVENTS_KEPT:
                since = time.monotonic() - (self.freeze.start or time.monotonic())
                self.stats.mode_switches.append((round(since, 3), message.mode, message.reason))
            if message.mode == "neural":
                # The sender switches back behind a fresh keyframe: the motion that stopped
                # during H.264 is no stall to ask a keyframe for.
                self._last_decoded_at = time.monotonic()
            if message.reason == "call start":
                events.info("the peer sends %s", message.mode)
            else:
                events.info("the peer switched to %s: %s", message.mode, message.reason)
            self.mode = message.mode

    @property
    def view(self):
        """The free-view controls (codec.api.ViewControl) applied to every rendered frame."""
        return self._view

    @view.setter
    def view(self, value) -> None:
        self._view = value
        if self.decoder is not None:
            self.decoder.view = value

    def _start_stream(self, message: StreamStart) -> None:
        from codec.api import Decoder

        self.clock, self.fps = message.clock, message.fps
        if self.model is None:
            self.send_control(ModeRequest(mode="h264", reason="receiver has no model"))
            return
        try:
            decoder = Decoder.from_header(message.header, model=self.model)
        except CodecError as exc:  # other weights, other geometry, bad header
            log.warning("cannot decode this stream (%s): asking for H.264", exc)
            self.stats.malformed += 1
            self.send_control(ModeRequest(mode="h264", reason=f"receiver cannot decode: {exc}"))
            return
        if self._view is not None:
            decoder.view = self._view
        with self._cond:
            self._pending.clear()
            self.decoder = decoder
            self._reported_references = None  # a new stream: report what it holds afresh

    def on_motion(self, data: bytes) -> None:
        """One message from the motion channel (any bytes: the decoder validates)."""
        if not isinstance(data, bytes):
            self.stats.malformed += 1
            return
        self.stats.motion_bytes += len(data)
        self.motion_meter.add(len(data))
        # A newer message never overtakes a bundle's frames still waiting their turn: a compact
        # inter packet that comes before its predecessor cannot be numbered (a bundle on the
        # audio packets is late frames catching up, and the next audio packet follows at once).
        self._release_spread()
        if is_bundle(data):  # several frames in one message (a slow link): shown 1/fps apart
            try:
                packets = split_bundle(data)
            except CodecError:
                self.stats.malformed += 1
                return
            self.stats.bundles += 1
            arrival = time.monotonic()
            self._enqueue(packets[0], arrival)
            with self._cond:
                for index, packet in enumerate(packets[1:], start=1):
                    due = arrival + index / self.fps
                    self._spread.append((packet, due))
                    timer = threading.Timer(index / self.fps, self._release_spread, (due,))
                    timer.daemon = True
                    timer.start()
            return
        self._enqueue(data, time.monotonic())

    def _release_spread(self, due: float = float("inf")) -> None:
        """Queue the bundled packets due by ``due`` (all of them by default), in order."""
        with self._cond:
            while self._spread and self._spread[0][1] <= due:
                self._enqueue(*self._spread.popleft())

    def _enqueue(self, data: bytes, arrival: float | None = None) -> None:
        """Queue one packet for the render thread; ``arrival``: when a motion packet came."""
        with self._cond:
            if len(self._pending) >= MAX_PENDING_PACKETS:
                self._pending.popleft()
                self.stats.queue_dropped += 1
            self._pending.append((data, arrival))
            self._cond.notify()

    def on_h264_frame(self, image: np.ndarray, media_time: float) -> None:
        """A decoded frame of the H.264 RTP track (shown only in h264 mode)."""
        self.stats.h264_frames += 1
        if self.mode == "h264":
            self.render_meter.add()
            self.freeze.shown()
            self.show(image, media_time)

    # ------------------------------------------------------------------ loss handling

    def _request_keyframe(self, reason: str) -> None:
        now = time.monotonic()
        if now - self._last_request < KEYFRAME_REQUEST_INTERVAL_S:
            return
        self._last_request = now
        self.stats.keyframe_requests += 1
        if self._keyframe_asked_at is None:
            self._keyframe_asked_at = now
        log.info("asking for a keyframe: %s", reason)
        self.send_control(KeyframeRequest(reason=reason))

    def _request_intra(self) -> None:
        now = time.monotonic()
        if now - self._last_intra_request < INTRA_REQUEST_INTERVAL_S:
            return
        self._last_intra_request = now
        self.stats.intra_requests += 1
        self.send_control(IntraRequest(reason="motion reference lost"))

    def _track_sequence(self, seq: int) -> None:
        stats = self.stats
        stats.motion_packets += 1
        if stats.first_seq is None:
            stats.first_seq = seq
        # Packets received but not numbered (compact inter packets after a loss) lie in the gap.
        lost = seq - stats.highest_seq - 1 - self._unnumbered
        self._unnumbered = 0
        if lost > GAP_FRAMES_FOR_KEYFRAME and stats.highest_seq >= 0:
            self._request_keyframe(f"{lost} motion packets lost")
        stats.highest_seq = max(stats.highest_seq, seq)

    # ------------------------------------------------------------------ rendering

    def _render_loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait(timeout=0.25)
                    self._check_stall()
                if self._closed:
                    return
                batch = list(self._pending)
                self._pending.clear()
                decoder = self.decoder
                self._working = True
            try:
                if decoder is not None:  # else: no stream header yet, or one we cannot decode
                    self._decode_batch(decoder, batch)
            finally:
                with self._cond:
                    self._working = False
            self._check_stall()

    def _keyframe_wall(self, data: bytes) -> float | None:
        """When the keyframe ``data`` arrived (time.time()), from the control channel's record."""
        with self._cond:
            while self._keyframe_walls:
                packet, wall = self._keyframe_walls.popleft()
                if packet is data:
                    return wall
        return None

    def _decode_batch(self, decoder: Decoder, batch: list[tuple[bytes, float | None]]) -> None:
        from codec.bitstream import KeyframePacket, MotionPacket, PatchPacket, PredictedKeyframePacket

        packets, motion_seqs = [], []
        unnumbered = False
        missing_before = decoder.stats.missing_reference  # the numbering counts some while parsing
        for data, arrival in batch:
            try:
                packet = decoder.parse(data, arrival)  # numbers compact motion packets, in order
            except CodecError:
                self.stats.malformed += 1
                continue
            if packet is None:  # a motion packet that cannot be numbered: the decoder counted it
                self.stats.motion_packets += 1  # received all the same (not a loss)
                self._unnumbered += 1
                self._undecoded += 1
                # After an arrival gap (an outage) compact packets wait for an intra one: ask
                # now rather than wait up to a second for the periodic one.
                unnumbered = True
                continue
            if isinstance(packet, MotionPacket):
                self._undecoded += 1
                self._track_sequence(packet.seq)
                motion_seqs.append(packet.seq)
            elif isinstance(packet, KeyframePacket | PredictedKeyframePacket):
                # A predicted refresh (codec.predicted_keyframe) comes as a Keyframe message too;
                # the decoder builds it from the held base, or empties its slot and says so
                # (needs_reference: a whole keyframe is asked for below).
                self.stats.keyframes += 1
                self.stats.predicted_keyframes += int(isinstance(packet, PredictedKeyframePacket))
                wall = self._keyframe_wall(data)
                if wall is not None and self.clock is not None and decoder.header.timebase and \
                        len(self.stats.keyframe_delivery) < EVENTS_KEPT:
                    captured = self.clock + packet.timestamp / decoder.header.timebase
                    self.stats.keyframe_delivery.append((round(wall - captured, 3), len(data)))
                if wall is not None and packet.seq > self.stats.last_keyframe_seq:
                    self.stats.last_keyframe_seq, self.stats.last_keyframe_arrival = packet.seq, wall
                if self._keyframe_asked_at is not None:
                    self._keyframe_answered_at, self._keyframe_asked_at = self._keyframe_asked_at, None
            elif isinstance(packet, PatchPacket):
                self.stats.patches += 1
            packets.append(packet)  # parsed once: the decoder takes it as it is
        newest = max(motion_seqs) if motion_seqs and self.live else None
        if newest is not None:
            self.stats.render_skipped += len(motion_seqs) - 1
        try:
            started = time.perf_counter()
            for frame in decoder.decode_stream(
                    packets, render=(lambda seq: seq == newest) if newest is not None else None):
                self.stats.render_ms.append(1000.0 * (time.perf_counter() - started))
                self._emit(frame)
                started = time.perf_counter()
        except CodecError as exc:  # e.g. a keyframe image that does not decode
            self.stats.malformed += 1
            log.warning("dropped a malformed packet: %s", exc)
        except Exception:
            log.exception("render failed")
        if decoder.stats.missing_reference > missing_before or unnumbered:
            self._request_intra()
        if decoder.needs_reference is not None:  # motion names a slot whose keyframe we lack
            self._request_keyframe(f"no keyframe in reference slot {decoder.needs_reference}")
        self._report_references(decoder)

    def _report_references(self, decoder: Decoder) -> None:
        """Tell the sender which keyframes this receiver holds whenever that changed: it warps
        only from those (codec.reference_memory)."""
        held = decoder.held_references()
        if held and held != self._reported_references and decoder is self.decoder:
            self._reported_references = held
            self.send_control(HeldReferences(held=held))

    def _emit(self, frame) -> None:
        now = self._last_decoded_at = time.monotonic()
        self._undecoded = 0
        self.stats.rendered += 1
        self.render_meter.add()
        if self._keyframe_answered_at is not None:
            if len(self.stats.keyframe_recovery_s) < EVENTS_KEPT:
                self.stats.keyframe_recovery_s.append(round(now - self._keyframe_answered_at, 3))
            self._keyframe_answered_at = None
        if self.clock is not None:
            latency = 1000.0 * (time.time() - (self.clock + frame.timestamp))
            self.stats.latencies_ms.append(latency)
            self.stats.all_latencies_ms.append(latency)
        if self.mode == "neural":
            # Every sink (recording, window, viewer) gets the banner: an untrained model's
            # frames must never pass for codec output.
            image = frame.image
            if frame.untrained:
                from codec.api import stamp_untrained  # lazy: only an untrained stream needs it

                image = stamp_untrained(image)
            self.freeze.shown(now)
            self.show(image, frame.timestamp)

    def _check_stall(self) -> None:
        decoder = self.decoder
        if decoder is None or self.mode != "neural":
            return
        # Only when motion came and did not decode: a sender that sends nothing (starved of CPU,
        # or an outage) gains nothing from a keyframe, which would only queue on the link.
        if time.monotonic() - self._last_decoded_at > STALL_S_FOR_KEYFRAME and self._undecoded:
            self._request_keyframe("no decodable motion for a while")
            self._last_decoded_at = time.monotonic()

    # ------------------------------------------------------------------ reporting

    def snapshot(self) -> dict[str, float | str | None]:
        """Live numbers for the viewer page and the sender (numbers and the mode only)."""
        stats = self.stats
        fps, _ = self.render_meter.rates()
        _, motion_kbps = self.motion_meter.rates()
        latencies = list(stats.latencies_ms)  # a copy: the render thread appends meanwhile
        latency = float(np.median(latencies)) if latencies else None
        decoder = self.decoder
        return {
            "mode": self.mode,
            "fps": round(fps, 2),
            "motion_kbps": round(motion_kbps, 3),
            "latency_ms": None if latency is None else round(latency, 1),
            "loss": round(stats.loss, 4),
            "rendered": stats.rendered,
            "h264_frames": stats.h264_frames,
            "malformed": stats.malformed,
            "stale": decoder.stats.stale if decoder is not None else 0,
            "missing_reference": decoder.stats.missing_reference if decoder is not None else 0,
            "keyframes": stats.keyframes,
            "predicted_keyframes": stats.predicted_keyframes,
            "last_keyframe_why": stats.last_keyframe_reason,
            "last_switch_why": stats.last_switch_reason,
            "keyframe_requests": stats.keyframe_requests,
            "intra_requests": stats.intra_requests,
            "queue_dropped": stats.queue_dropped,
            "bundles": stats.bundles,
            "keyframe_seq": stats.last_keyframe_seq,
            "keyframe_arrival": stats.last_keyframe_arrival,
            **self.freeze.summary(),
        }

    def call_figures(self) -> dict:
        """The call report's receiving figures beyond :meth:`snapshot`: latency percentiles over
        the whole call, the freezes, keyframe recoveries and deliveries, and mode switches."""
        stats = self.stats
        latencies = np.array(list(stats.all_latencies_ms), float)
        percentiles = np.percentile(latencies, [50, 95]).round(1).tolist() if latencies.size else [None, None]
        return {"latency_p50_ms": percentiles[0], "latency_p95_ms": percentiles[1],
                "freezes": list(self.freeze.freezes), "keyframe_recovery_s": list(stats.keyframe_recovery_s),
                "keyframe_delivery": list(stats.keyframe_delivery), "mode_switches": list(stats.mode_switches)}

    def wait_idle(self, timeout: float) -> bool:
        """Block until every queued packet has been decoded (tests, the demo's drain)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._cond:
                if not self._pending and not self._spread and not self._working:
                    return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5.0)
