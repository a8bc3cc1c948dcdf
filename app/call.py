"""One peer of a two-party call: WebRTC set-up around a SenderSession and a ReceiverSession.

A :class:`Call` takes a connected signaling channel (the real server's client or the
in-memory pair), negotiates one RTCPeerConnection with

- a ``control`` data channel (reliable, ordered): header, keyframes, requests, stats;
- a ``motion`` data channel (unordered, maxRetransmits=0): one motion packet per frame;
- an H.264 video track (our own PyAV encoder: aiortc's clamps to >= 500 kbit/s), used in
  ``h264`` mode and for comparisons;
- an Opus audio track (aiortc's encoder),

and routes what arrives: control messages to the local sender or receiver (both peers share
the two channels, each message type has one reader), motion packets to the receiver, RTP video
and audio to the receiver and the recorder. ``auto`` mode picks ``neural`` when the peer holds
the same weights and renders at the call's frame rate, ``h264`` otherwise.

A call's milestones (connected, the mode chosen and why, each mode switch, the end) go to
the ``facecodec.call`` logger at INFO, which ``facecodec call`` shows without ``-v``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import numpy as np

from codec.bitstream.control import FOR_RECEIVER, FOR_SENDER, Bye, StatsReport, pack_control, parse_control
from codec.errors import CodecError

log = logging.getLogger(__name__)
events = logging.getLogger("facecodec.call")  # the few lines a user of `facecodec call` sees

MODES = ("neural", "h264", "auto")
CONNECT_TIMEOUT_S = 30.0
WAIT_S = 120.0  # how long a peer waits for the other to join before giving up
STATS_INTERVAL_S = 1.0
# Why this side ended a call (anything else means the peer or the network ended it).
DURATION_REACHED = "duration reached"
SOURCE_ENDED = "the source ended"


@dataclass
class CallOptions:
    fps: float = 25.0
    mode: str = "auto"
    h264_kbps: float = 30.0
    quality: int | None = None  # None: the codec's default motion quality
    compare: bool = False  # also send H.264 while in neural mode
    face_lost_frames: int = 25
    live: bool = True  # False: every frame is sent and rendered, however late (demo recordings)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")


def local_capabilities(loaded, fps: float, measure_frames: int = 3):
    """This peer's :class:`signaling.messages.Capabilities`, with a measured render rate
    (after :func:`fit_refiner_to_budget` has chosen what this peer renders)."""
    from signaling.messages import Capabilities

    if loaded is None:
        return Capabilities(has_weights=False, render_fps=0.0, codecs=["h264"])
    render_fps = fit_refiner_to_budget(loaded, fps, measure_frames)
    return Capabilities(has_weights=True, model=loaded.name,
                        weights_sha256_prefix=loaded.sha256_prefix.hex(),
                        untrained=bool(loaded.untrained),
                        render_fps=min(render_fps, 1000.0),
                        codecs=["neural", "h264"])


# Share of the frame interval a call's receiver may spend rendering with the learned
# refiner: the same machine also captures, tracks and encodes this peer's own video (about
# 16 ms a frame on 2 CPU cores) and renders the warp. A GPU (~1 ms) is far inside it; two
# CPU cores (24-47 ms measured) are far outside, whatever the moment's load.
REFINER_BUDGET = 0.25


def fit_refiner_to_budget(loaded, fps: float, frames: int = 3) -> float:
    """Drop the landmark family's learned refiner for this call when rendering with it takes
    more than ``REFINER_BUDGET`` of the frame interval: a live call then shows the plain warp
    at full rate rather than a refined picture at a falling rate. The stream is the same
    either way, so the sender never knows. Logged at INFO on ``facecodec.call``.

    Returns the measured render rate (frames/s) of what the model now renders."""
    render_fps = measure_render_fps(loaded, frames)
    if getattr(loaded, "refiner", None) is None:
        return render_fps
    budget_ms = 1000.0 * REFINER_BUDGET / fps
    took_ms = 1000.0 / render_fps
    if took_ms <= budget_ms:
        events.info("rendering with the refiner (%.0f ms a frame)", took_ms)
        return render_fps
    loaded.refiner = None
    events.info("rendering the plain warp: the refiner takes %.0f ms a frame here, over %.0f ms "
                "(a quarter of the frame interval)", took_ms, budget_ms)
    return measure_render_fps(loaded, frames)


def measure_render_fps(loaded, frames: int = 3) -> float:
    """Frames/s of rendering a motion vector against a keyframe, after one warm-up frame.

    The keyframe is a flat grey image with the model's default keyframe description, so
    the measurement needs no face and no sender."""
    size = loaded.image_size
    image = np.full((size, size, 3), 128, np.uint8)
    source = loaded.prepare_source(image, loaded.default_keyframe_info())
    motion = loaded.neutral_motion(source)[None]
    times = []
    for _ in range(frames + 1):
        started = time.perf_counter()
        loaded.render(source, motion)
        times.append(time.perf_counter() - started)
    return 1.0 / max(float(np.median(times[1:])), 1e-6)


def choose_mode(requested: str, loaded, peer, fps: float) -> tuple[str, str]:
    """(mode, why) for this peer's sending side, from what the receiving peer announced."""
    if requested == "h264":
        return "h264", "asked for h264"
    if loaded is None:
        return "h264", "this peer has no model"
    if requested == "neural":
        return "neural", "asked for neural"
    if peer is None or not peer.has_weights:
        return "h264", "the peer has no model"
    if peer.model != loaded.name or peer.weights_sha256_prefix != loaded.sha256_prefix.hex():
        return "h264", "the peer holds other weights"
    if peer.render_fps < 0.9 * fps:
        return "h264", f"the peer renders {peer.render_fps:.1f} frames/s < {fps:g}"
    return "neural", f"the peer holds the weights and renders {peer.render_fps:.1f} frames/s"


def prefer_h264(transceiver) -> None:
    """Offer only H.264 on a video transceiver: our track hands aiortc ready H.264 packets."""
    from aiortc import RTCRtpSender

    codecs = [c for c in RTCRtpSender.getCapabilities("video").codecs
              if c.mimeType in ("video/H264", "video/rtx")]
    transceiver.setCodecPreferences(codecs)


class CallEnded(Exception):
    """The peer left, said goodbye or the connection failed."""


class NobodyJoined(CallEnded):
    """No one joined the room within the wait: there was no call at all."""


class Call:
    """One side of a call.

    Args:
        signaling: a connected :class:`signaling.client.SignalingChannel` whose peer is there.
        loaded: the codec model (``codec.families.TalkingHeadModel``) or None (H.264 only).
        frames: what this peer sends (an iterator of RGB frames) or None (receive only).
        audio: an aiortc audio track to send, or None.
        show: gets every frame shown on this side (RGB, media time s).
        recorder: a :class:`receiver.sinks.Mp4Recorder` that also takes the peer's audio.
        on_sent_frame: gets every crop this peer sends (RGB, media time s).
    """

    def __init__(self, signaling, *, loaded, frames: Iterator[np.ndarray] | None, audio=None,
                 options: CallOptions | None = None,
                 show: Callable[[np.ndarray, float], None] | None = None, recorder=None,
                 on_sent_frame: Callable[[np.ndarray, float], None] | None = None,
                 epoch: float | None = None) -> None:
        self.signaling = signaling
        # time.monotonic() at which the recording starts: its first picture (the wait and the
        # set-up are never recorded); a rejoined call gets the first call's.
        self.epoch = epoch
        self.loaded = loaded
        self.frames = frames
        self.audio = audio
        self.options = options or CallOptions()
        self.recorder = recorder
        self._show_cb = show
        self.on_sent_frame = on_sent_frame
        self.pc = None
        self.control = None
        self.motion = None
        self.sender = None
        self.receiver = None
        self.h264_track = None
        self.mode_reason = ""
        self.control_malformed = 0
        self._ended = asyncio.Event()
        self._end_reason = ""
        self._tasks: list[asyncio.Task] = []
        self._channels_open = asyncio.Event()
        self.connected = False  # the data channels opened: this was a call, not a failed set-up
        self.connected_at: float | None = None  # time.monotonic() then
        self._show_lock = threading.Lock()

    # ------------------------------------------------------------------ plumbing

    def _show(self, image: np.ndarray, media_time: float) -> None:
        # Neural frames come from the render thread, H.264 ones from the event loop.
        with self._show_lock:
            self._show_locked(image, media_time)

    def _show_locked(self, image: np.ndarray, media_time: float) -> None:
        if self._show_cb is not None:
            self._show_cb(image, media_time)
        if self.recorder is not None:
            if self.epoch is None:
                self.epoch = time.monotonic()
            self.recorder.write(image, self._recording_time())

    def _recording_time(self) -> float:
        return time.monotonic() - self.epoch

    def _send_control(self, message) -> None:
        if self.control is not None and self.control.readyState == "open":
            # Called from the receiver's render thread too: hop onto the event loop.
            self._loop.call_soon_threadsafe(self._send_now, message)

    def _send_now(self, message) -> None:
        if self.control is not None and self.control.readyState == "open":
            self.control.send(pack_control(message))

    def _end(self, reason: str) -> None:
        if not self._ended.is_set():
            self._end_reason = reason
            events.info("call ends: %s", reason)
            self._ended.set()

    def _on_control(self, data) -> None:
        try:
            message = parse_control(data)
        except CodecError as exc:
            self.control_malformed += 1
            log.warning("dropped a malformed control message: %s", exc)
            return
        if isinstance(message, FOR_RECEIVER) and self.receiver is not None:
            self.receiver.on_control(message)
        elif isinstance(message, FOR_SENDER) and self.sender is not None:
            self.sender.on_control(message)
        elif isinstance(message, Bye):
            self._end(f"peer said goodbye ({message.reason})")

    def _watch_channel(self, channel) -> None:
        if channel.label == "control":
            self.control = channel
            channel.on("message", self._on_control)
        elif channel.label == "motion":
            self.motion = channel
            channel.on("message", lambda data: self.receiver.on_motion(data) if self.receiver else None)
        else:
            log.warning("ignoring unexpected data channel %r", channel.label)
            return

        def opened() -> None:
            if self.control is not None and self.motion is not None and \
                    self.control.readyState == self.motion.readyState == "open":
                self._channels_open.set()

        channel.on("open", opened)
        channel.on("close", lambda: self._end(f"{channel.label} channel closed"))
        opened()

    async def _consume_video(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        try:
            while True:
                frame = await track.recv()
                image = frame.to_ndarray(format="rgb24")
                if self.receiver is not None:
                    self.receiver.on_h264_frame(image, float(frame.time or 0.0))
        except MediaStreamError:
            pass

    async def _consume_audio(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        from receiver.sinks import consume_audio

        if self.recorder is not None:
            try:
                while self.epoch is None:  # the recording starts with its first picture
                    await track.recv()
            except MediaStreamError:
                return
            # On the recorder's clock, so the peer's first audio lines up with the video.
            await consume_audio(track, self.recorder, clock=self._recording_time)
            return
        try:
            while True:  # nobody records it: still read, or aiortc's queue grows without bound
                await track.recv()
        except MediaStreamError:
            pass

    # ------------------------------------------------------------------ negotiation

    async def _negotiate(self) -> None:
        from sender.media_tracks import forward_keyframe_requests
        from rtc.peer import dict_to_sdp, new_peer_connection, sdp_to_dict

        pc = self.pc = new_peer_connection()  # with loopback candidates: peers on one host connect

        @pc.on("datachannel")
        def on_datachannel(channel) -> None:
            self._watch_channel(channel)

        @pc.on("track")
        def on_track(track) -> None:
            consume = self._consume_video if track.kind == "video" else self._consume_audio
            self._tasks.append(asyncio.ensure_future(consume(track)))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                self._end(f"connection {pc.connectionState}")

        role = self.signaling.role
        if role == "offer":
            self._watch_channel(pc.createDataChannel("control"))
            self._watch_channel(pc.createDataChannel("motion", ordered=False, maxRetransmits=0))
            if self.h264_track is not None:
                rtp_sender = pc.addTrack(self.h264_track)
                forward_keyframe_requests(rtp_sender, self.h264_track)
                video = next(t for t in pc.getTransceivers() if t.sender is rtp_sender)
            else:
                video = pc.addTransceiver("video", direction="recvonly")
            prefer_h264(video)
            if self.audio is not None:
                pc.addTrack(self.audio)
            else:
                pc.addTransceiver("audio", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            await self.signaling.send({"type": "offer", **sdp_to_dict(pc.localDescription)})
            answer = await self._expect("answer")
            await pc.setRemoteDescription(dict_to_sdp(answer))
        else:
            offer = await self._expect("offer")
            await pc.setRemoteDescription(dict_to_sdp(offer))
            if self.h264_track is not None:
                forward_keyframe_requests(pc.addTrack(self.h264_track), self.h264_track)
            if self.audio is not None:
                pc.addTrack(self.audio)
            await pc.setLocalDescription(await pc.createAnswer())
            await self.signaling.send({"type": "answer", **sdp_to_dict(pc.localDescription)})

    async def _expect(self, kind: str) -> dict:
        while True:
            message = await self.signaling.receive(timeout=CONNECT_TIMEOUT_S)
            if message.get("type") == kind:
                return message
            if message.get("type") in ("peer_left", "bye"):
                raise CallEnded("the peer left during set-up")
            log.debug("ignoring signaling message %r while waiting for %s", message.get("type"), kind)

    async def _watch_signaling(self) -> None:
        from signaling.errors import SignalingError

        while not self._ended.is_set():
            try:
                message = await self.signaling.receive()
            except SignalingError as exc:
                # The media path does not need the server once connected: a restarting
                # signaling server must not end a running call.
                log.warning("signaling connection lost (%s); the call goes on", exc)
                return
            if message.get("type") in ("peer_left", "bye"):
                self._end("the peer left")
                return

    async def _push_stats(self) -> None:
        while not self._ended.is_set():
            await asyncio.sleep(STATS_INTERVAL_S)
            if self.receiver is not None and self.receiver.decoder is not None:
                numbers = {k: float(v) for k, v in self.receiver.snapshot().items()
                           if isinstance(v, int | float) and not isinstance(v, bool)}
                self._send_control(StatsReport(values=numbers))

    # ------------------------------------------------------------------ the call

    async def run(self, duration: float | None = None, *, until: float | None = None) -> str:
        """Connect, then send and receive for ``duration`` s of media (or until
        ``time.monotonic()`` reaches ``until``), until the source ends or the peer leaves.
        None and None: no time limit. The wait for the peer and the set-up never count.

        Returns why the call ended."""
        from receiver.session import ReceiverSession
        from sender.media_tracks import H264Track

        self._loop = asyncio.get_running_loop()
        options = self.options
        size = self.loaded.image_size if self.loaded is not None else 256
        if self.frames is not None:
            self.h264_track = H264Track((size, size), fps=options.fps, bitrate_kbps=options.h264_kbps)
        self.receiver = ReceiverSession(self.loaded, show=self._show, send_control=self._send_control,
                                        live=options.live)
        started = time.monotonic()
        try:
            await asyncio.wait_for(self._negotiate(), CONNECT_TIMEOUT_S)
            await asyncio.wait_for(self._channels_open.wait(), CONNECT_TIMEOUT_S)
        except TimeoutError:
            await self.close()
            raise CallEnded("could not connect to the peer in time") from None
        self.connected = True
        self.connected_at = time.monotonic()
        if until is not None:
            duration = max(0.0, until - self.connected_at)
        events.info("connected to the peer in %.1f s (this side %ss)", self.connected_at - started,
                    self.signaling.role)
        self._tasks += [asyncio.ensure_future(self._watch_signaling()),
                        asyncio.ensure_future(self._push_stats())]
        sending = None
        if self.frames is not None:
            sending = asyncio.ensure_future(self._send(duration))
        waiters = [asyncio.ensure_future(self._ended.wait())]
        if sending is not None:
            waiters.append(sending)
        done, _ = await asyncio.wait(waiters, timeout=duration if sending is None else None,
                                     return_when=asyncio.FIRST_COMPLETED)
        if sending is not None and sending in done:
            exc = sending.exception()
            if exc is not None:
                log.error("sending failed: %s", exc, exc_info=exc)  # the stack: a bug to find
                self._end(f"sending failed: {exc}")
            else:
                self._end(SOURCE_ENDED if duration is None else DURATION_REACHED)
        elif not done:
            self._end(DURATION_REACHED)
        for waiter in waiters:
            waiter.cancel()
        return self._end_reason

    async def _send(self, duration: float | None) -> None:
        from codec.api import Encoder
        from codec.facecrop import FaceCropper
        from sender.session import SenderSession

        options = self.options
        peer = self.signaling.peer_capabilities
        mode, why = choose_mode(options.mode, self.loaded, peer, options.fps)
        self.mode_reason = why
        events.info("sending %s: %s", mode, why)
        encoder = None
        if self.loaded is not None:
            settings = {} if options.quality is None else {"quality": options.quality}
            encoder = Encoder(self.loaded, frame_rate=options.fps, **settings)
        size = self.loaded.image_size if self.loaded is not None else 256
        self.sender = SenderSession(self.frames, fps=options.fps, encoder=encoder,
                                    cropper=FaceCropper(out_size=size), h264_track=self.h264_track,
                                    mode=mode, face_lost_frames=options.face_lost_frames,
                                    compare=options.compare, drop_late=options.live,
                                    on_frame=self.on_sent_frame)
        await self.sender.run(self.control, self.motion, duration=duration)

    async def transport_totals(self) -> tuple[int, int]:
        """(UDP payload bytes, UDP packets) this side's DTLS transport has sent so far:
        data-channel messages with their SCTP/DTLS framing, RTP/RTCP, as aiortc counts them.
        Add 28 bytes per packet (IPv4 + UDP) for what crosses the wire."""
        if self.pc is None:
            return 0, 0
        report = await self.pc.getStats()
        stats = [s for s in report.values() if getattr(s, "type", None) == "transport"]
        return sum(s.bytesSent for s in stats), sum(s.packetsSent for s in stats)

    async def say_goodbye(self, reason: str = "hang up") -> None:
        with contextlib.suppress(Exception):
            self._send_now(Bye(reason=reason))
            await asyncio.sleep(0.1)  # let SCTP flush the goodbye before the transport closes

    async def close(self) -> None:
        if self.sender is not None:
            self.sender.stop()
            self.sender.close()
        if self.receiver is not None:
            self.receiver.close()
        for task in self._tasks:
            task.cancel()
        if self.h264_track is not None:
            self.h264_track.stop()
        if self.pc is not None:
            await self.pc.close()


# ---------------------------------------------------------------------------------------------
# The `facecodec call` command: one peer, through the signaling server, with rejoin.


@dataclass
class CallReport:
    calls: int = 0
    seconds: float = 0.0
    end_reasons: list | None = None
    sender: dict | None = None
    receiver: dict | None = None
    recording: dict | None = None


def process_usage() -> dict[str, float | int]:
    """This process's resident memory (MB), open file descriptors and threads, from /proc
    (Linux; -1 where unavailable): what a long call must keep flat."""
    import os

    rss_mb, threads = -1.0, -1
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss_mb = int(line.split()[1]) / 1024.0
                elif line.startswith("Threads:"):
                    threads = int(line.split()[1])
        fds = len(os.listdir("/proc/self/fd"))
    except (OSError, ValueError):
        fds = -1
    return {"rss_mb": round(rss_mb, 2), "fds": fds, "threads": threads}


async def write_call_stats(path, every: float, current: dict, started: float) -> None:
    """Append one JSON line to ``path`` every ``every`` s until cancelled: the process's
    memory, descriptors and threads, and the current call's receiver and sender numbers
    (``current["call"]``, set by run_peer's ``on_call``). The soak benchmark reads it."""
    import json
    from dataclasses import asdict

    with open(path, "a", encoding="utf-8") as out:
        while True:
            await asyncio.sleep(every)
            call = current.get("call")
            row: dict = {"t": round(time.monotonic() - started, 2), **process_usage(),
                         "connected": bool(call is not None and call.connected)}
            if call is not None and call.receiver is not None:
                row["receiver"] = call.receiver.snapshot()
            if call is not None and call.sender is not None:
                sent = asdict(call.sender.stats)
                row["sender"] = {key: sent[key] for key in ("frames", "neural_frames", "h264_frames",
                                                            "skipped_late", "motion_dropped", "keyframes")}
            out.write(json.dumps(row) + "\n")
            out.flush()


async def join_room(url: str, token: str, room: str, *, retries: int = 5):
    """Join ``room`` unannounced (``signaling.client.SignalingClient``, ``ready=False``).

    Done before the model loads, so a wrong token, a full room or an unreachable server
    fails in about a second with its typed error (BadTokenError, RoomFullError, ...); the
    seat is held meanwhile, and the peer learns of this one when :func:`run_peer` announces
    its capabilities."""
    from signaling.client import SignalingClient
    from signaling.messages import Capabilities

    client = SignalingClient(url, token, room, Capabilities(), ready=False)
    try:
        await client.connect(retries=retries, backoff=0.5)
    except BaseException:
        await client.close()  # its HTTP session too: no "unclosed session" noise after the error
        raise
    return client


async def run_peer(*, url: str = "", token: str = "", room: str = "", loaded, frames, audio,
                   options: CallOptions, duration: float, wait: float = WAIT_S, client=None,
                   recorder=None, show=None, rejoin: bool = True, connect_retries: int = 20,
                   on_call: Callable[[Call], None] | None = None) -> CallReport:
    """Wait up to ``wait`` s for the peer in ``room``, then call it for ``duration`` s from the
    moment the first call connects (the wait and the set-up do not count), rejoining after
    the peer leaves or the server restarts within that time.

    ``client``: a connection :func:`join_room` made, announced here; without one this joins
    ``room`` on ``url``. Raises :class:`NobodyJoined` when no one joined within ``wait`` s,
    :class:`CallEnded` when a peer came but no call connected, and the server's refusals
    (BadTokenError, RoomFullError, ...) as typed signaling errors."""
    from dataclasses import asdict

    from signaling.client import SignalingClient
    from signaling.errors import SignalingClosedError, SignalingError, SignalingTimeoutError

    capabilities = local_capabilities(loaded, options.fps)
    log.debug("capabilities: %s", capabilities.to_dict())
    report = CallReport(end_reasons=[])
    joined = True
    if client is None:
        client = SignalingClient(url, token, room, capabilities)
    try:
        if not client.ready:
            try:
                await client.announce(capabilities)
            except SignalingClosedError:
                joined = False  # the server went away during the model load: rejoin below
        elif client.role is None:
            joined = False
        events.info("in room %r; waiting up to %g s for the peer", client.room, wait)
        give_up = time.monotonic() + wait
        first = None  # when the first call connected: `duration` counts from there
        epoch = None  # the recording's start (its first picture), kept across rejoins
        set_up_failed = ""
        while True:
            end = give_up if first is None else first + duration
            if time.monotonic() >= end:
                break
            if not joined:
                try:
                    await client.connect(retries=connect_retries, backoff=0.5)
                except SignalingError as exc:
                    if first is None:
                        raise
                    log.warning("cannot rejoin room %r (%s): ending", client.room, exc)
                    break
                joined = True
            try:
                await client.wait_for_peer(timeout=max(0.1, end - time.monotonic()))
            except SignalingTimeoutError:
                break
            except SignalingError as exc:
                log.warning("signaling: %s; reconnecting", exc)
                await client.close()
                joined = False
                continue
            call = Call(client, loaded=loaded, frames=frames, audio=audio, options=options,
                        show=show, recorder=recorder, epoch=epoch)
            if on_call is not None:
                on_call(call)  # e.g. the viewer reads this call's stats and steers its view
            try:
                if first is None:
                    reason = await call.run(duration=duration)
                else:
                    reason = await call.run(until=first + duration)
            except (CallEnded, SignalingError) as exc:
                reason = str(exc)
            if not call.connected:
                # The peer vanished before the media path came up (e.g. its previous session
                # was still leaving the room when we joined): not a call, wait for the next.
                log.warning("call set-up failed (%s); waiting for the peer again", reason)
                set_up_failed = reason
                await call.close()
                continue
            first = call.connected_at if first is None else first
            epoch = call.epoch
            report.calls += 1
            report.end_reasons.append(reason)
            report.seconds += time.monotonic() - call.connected_at
            if call.sender is not None:
                report.sender = asdict(call.sender.stats)
            if call.receiver is not None:
                report.receiver = call.receiver.snapshot()
            we_hung_up = reason in (DURATION_REACHED, SOURCE_ENDED)
            if we_hung_up:
                await call.say_goodbye(reason)
            await call.close()
            if not rejoin or we_hung_up:
                break
            # The peer left: the server keeps our seat; a fresh connection avoids stale messages.
            await client.close()
            joined = False
    finally:
        await client.close()
    if not report.calls:
        if set_up_failed:
            raise CallEnded(f"a peer joined room {client.room!r} but no call connected ({set_up_failed})")
        raise NobodyJoined(f"no one joined room {client.room!r} within {wait:g} s")
    return report


# ---------------------------------------------------------------------------------------------
# A one-way call inside one process: the demo, the latency benchmark and the tests.


async def run_loopback(sender_model, receiver_model, frames: Iterator[np.ndarray], *, seconds: float,
                       options: CallOptions, receiver_options: CallOptions | None = None, audio=None,
                       show: Callable[[np.ndarray, float], None] | None = None, recorder=None,
                       on_sent_frame: Callable[[np.ndarray, float], None] | None = None,
                       started: Callable[[Call, Call], Awaitable[None]] | None = None,
                       finished: Callable[[Call, Call], Awaitable[None]] | None = None,
                       timeout: float | None = None) -> tuple[Call, Call]:
    """Send ``frames`` from peer A to peer B over real WebRTC on this machine (in-memory
    signaling), for ``seconds`` of media; returns the two closed :class:`Call` objects.

    ``started(a, b)`` runs once B's receiving session exists, before A sends (hooks that tap
    or inject); ``finished(a, b)`` runs after A's last frame, before the goodbye (drain the
    receiver, read counters)."""
    from signaling.client import InMemorySignaling

    sender_caps = local_capabilities(sender_model, options.fps)  # measures the render rate
    receiver_caps = sender_caps if receiver_model is sender_model else \
        local_capabilities(receiver_model, options.fps)
    a, b = InMemorySignaling.pair(sender_caps, receiver_caps)
    sender = Call(a, loaded=sender_model, frames=frames, audio=audio, options=options,
                  on_sent_frame=on_sent_frame)
    receiver = Call(b, loaded=receiver_model, frames=None,
                    options=receiver_options or CallOptions(fps=options.fps), show=show, recorder=recorder)
    receiving = asyncio.ensure_future(receiver.run(duration=None))
    try:
        if started is not None:
            while receiver.receiver is None:  # Call.run builds its session first thing
                await asyncio.sleep(0.01)
            await started(sender, receiver)
        await asyncio.wait_for(sender.run(duration=seconds), timeout)
        if finished is not None:
            await finished(sender, receiver)
        await sender.say_goodbye("loopback done")
        await asyncio.wait_for(receiving, 10.0)
    finally:
        await sender.close()
        await receiver.close()
    return sender, receiver
