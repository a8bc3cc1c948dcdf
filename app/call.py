"""One peer of a two-party call: WebRTC set-up around a SenderSession and a ReceiverSession.

A :class:`Call` takes a connected signaling channel (the real server's client or the
in-memory pair), negotiates one RTCPeerConnection with

- a ``control`` data channel (reliable, ordered): header, keyframes, requests, stats;
- a ``motion`` data channel (unordered, maxRetransmits=0): one motion packet per frame,
  unless the peer accepted the motion RTP header extension on audio and audio flows: then
  motion rides on the audio packets (:mod:`rtc.motion_over_audio`), ~2 kbit/s on the wire
  instead of ~20;
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
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from aiortc import RTCRtpSender
from aiortc.mediastreams import MediaStreamError

from app.mode_choice import MODES, choose_mode
from codec.api import Encoder, RefreshPolicy
from codec.bitstream.control import (
    FOR_RECEIVER,
    FOR_SENDER,
    Bye,
    ControlMessage,
    StatsReport,
    pack_control,
    parse_control,
)
from codec.errors import CodecError
from codec.facecrop import FaceCropper
from codec.keyframe import DEFAULT_KEYFRAME_CODEC, DEFAULT_MAX_FRAME, frame_size_within
from receiver.session import ReceiverSession
from receiver.sinks import consume_audio
from rtc.motion_bundle import BUNDLE_CAPABILITY
from rtc.motion_over_audio import AudioMotionCarrier, MotionReader, attach_motion_reader
from rtc.opus_encoder import LinkOpusEncoder, install_opus_encoder
from rtc.peer import dict_to_sdp, new_peer_connection, resync_video_sooner, sdp_to_dict
from sender.media_tracks import H264Track, HeldTrack, follow_receiver_feedback
from sender.session import SenderSession
from signaling.client import SignalingChannel
from signaling.errors import SignalingError

if TYPE_CHECKING:
    from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpTransceiver
    from aiortc.rtcdatachannel import RTCDataChannel

    from codec.families.base import TalkingHeadModel
    from receiver.sinks import Mp4Recorder

log = logging.getLogger(__name__)
events = logging.getLogger("facecodec.call")  # the few lines a user of `facecodec call` sees

CONNECT_TIMEOUT_S = 30.0
WAIT_S = 120.0  # how long a peer waits for the other to join before giving up
STATS_INTERVAL_S = 1.0
# The peer sends video but no picture was shown for this long: the call says so (once a stall).
NO_PICTURE_S = 5.0
MAX_AUDIO_LEAD_S = 2.0  # a recording of every frame shifts its audio by the first picture's lag, at most this
# Why this side ended a call (anything else means the peer or the network ended it).
DURATION_REACHED = "duration reached"
SOURCE_ENDED = "the source ended"


@dataclass
class CallOptions:
    fps: float = 25.0
    mode: str = "auto"
    h264_kbps: float = 30.0
    quality: int | None = None  # None: the codec's default motion quality
    patches: bool = True  # reference patches of the mouth and eyes (codec.reference_patches)
    refresh: RefreshPolicy | None = None  # the sender's closed-loop keyframe refresh
    references: int | None = None  # K keyframe slots (None: 4 with refresh, else 1); the receiver reports which it holds
    keyframe_codec: str = DEFAULT_KEYFRAME_CODEC  # coded off the frame loop (codec.keyframe_worker)
    keyframe_quality: int | None = None  # None: the codec's default
    compare: bool = False  # also send H.264 while in neural mode
    face_lost_frames: int = 25
    live: bool = True  # False: every frame is sent and rendered, however late (demo recordings)
    motion_on_audio: bool = True  # motion rides on the audio RTP packets when the peer accepts it
    # Opus rate of this side's audio: speech at 12 kbit/s instead of aiortc's 96 (which alone
    # exceeded every rate cap of the impairment matrix); None keeps aiortc's.
    audio_kbps: float | None = 12.0
    meter_wire: bool = False  # count what this side sends on the wire, by kind (rtc.wire_meter)
    # The picture sent: the camera's whole frame, scaled down to fit ``resolution`` (width,
    # height), or with ``crop`` a crop×crop face crop. H.264 sends the same picture.
    resolution: tuple[int, int] = DEFAULT_MAX_FRAME
    crop: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")

def call_encoder(model: TalkingHeadModel, options: CallOptions) -> Encoder:
    """The sender's Encoder in a call, with the options' codec and qualities. A live call codes
    keyframes off the frame loop (an AV1 keyframe takes ~110 ms; the frames while the first
    one is coded send no motion); a recording (``live`` False: every frame sent and rendered,
    however late) codes each with its own frame."""
    settings = {} if options.quality is None else {"quality": options.quality}
    return Encoder(model, frame_rate=options.fps, patches=options.patches, refresh=options.refresh,
                   keyframe_codec=options.keyframe_codec, keyframe_quality=options.keyframe_quality,
                   keyframe_worker=options.live, references=options.references,
                   acknowledged_references=True, **settings)


def prefer_h264(transceiver: RTCRtpTransceiver) -> None:
    """Offer only H.264 on a video transceiver: our track hands aiortc ready H.264 packets."""
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
        model: the codec model (``codec.families.TalkingHeadModel``) or None (H.264 only).
        frames: what this peer sends (an iterator of RGB frames) or None (receive only).
        audio: an aiortc audio track to send, or None.
        show: gets every frame shown on this side (RGB, media time s).
        recorder: a :class:`receiver.sinks.Mp4Recorder` that also takes the peer's audio.
        on_sent_frame: gets every crop this peer sends (RGB, media time s).
    """

    def __init__(self, signaling: SignalingChannel, *, model: TalkingHeadModel | None,
                 frames: Iterator[np.ndarray] | None, audio: MediaStreamTrack | None = None,
                 options: CallOptions | None = None,
                 show: Callable[[np.ndarray, float], None] | None = None,
                 recorder: Mp4Recorder | None = None,
                 on_sent_frame: Callable[[np.ndarray, float], None] | None = None,
                 epoch: float | None = None) -> None:
        self.signaling = signaling
        # time.monotonic() at which the recording starts: its first picture (the wait and the
        # set-up are never recorded); a rejoined call gets the first call's.
        self.epoch = epoch
        self.model = model
        self.frames = frames
        # What this side sends (``_picture_size``, once the source's first frame is in): the
        # picture's (width, height), whether it is the whole frame, and the model at that size.
        self.picture_size: tuple[int, int] = (256, 256)
        self.whole_frame = False
        self.send_model: TalkingHeadModel | None = None
        self.audio = audio
        self.options = options or CallOptions()
        self.recorder = recorder
        self._show_cb = show
        self.on_sent_frame = on_sent_frame
        self.pc: RTCPeerConnection | None = None
        self.control: RTCDataChannel | None = None
        self.motion: RTCDataChannel | None = None
        self.sender_session: SenderSession | None = None  # this peer's sending side, once sending
        self.receiver_session: ReceiverSession | None = None  # its receiving side, from the start
        self.h264_track: H264Track | None = None
        self.motion_reader: MotionReader | None = None  # motion in the peer's audio packets
        self.motion_carrier: AudioMotionCarrier | None = None  # ours in our audio packets
        self.audio_encoder: LinkOpusEncoder | None = None  # ours, when options.audio_kbps is set
        self.wire_meter = None  # rtc.wire_meter.WireMeter when options.meter_wire
        self.mode_reason = ""
        self.control_malformed = 0
        self._ended = asyncio.Event()
        self._end_reason = ""
        self._tasks: list[asyncio.Task] = []
        self.picture_stalls: list[list] = []  # [s after connecting, length s or None: still stalled]
        self._channels_open = asyncio.Event()
        self.connected = False  # the data channels opened: this was a call, not a failed set-up
        self.connected_at: float | None = None  # time.monotonic() then
        self._show_lock = threading.Lock()
        self._first_media_time: float | None = None  # the recording's first picture's media time
        self._audio_lead_s = 0.0  # see _recording_time

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
                self._first_media_time = media_time
                if not self.options.live:
                    self._audio_lead_s = self._first_picture_lag_s()
            self.recorder.write(image, self._frame_recording_time(media_time))

    def _frame_recording_time(self, media_time: float) -> float:
        # A live call records each picture when it was shown, freezes included: what the user
        # saw. A recording of every frame (live False) places each by its media time instead, so
        # a receiver that renders late and then catches up still writes as many seconds as were
        # sent, at the sender's pace.
        if self.options.live or self._first_media_time is None:
            return self._recording_time()
        return media_time - self._first_media_time

    def _recording_time(self) -> float:
        """Now on the recording's clock (audio is placed by it): in a recording of every frame
        the first picture's capture-to-render lag is added, so audio that arrives with it lines up
        with the picture captured when that audio was."""
        return time.monotonic() - self.epoch + self._audio_lead_s

    def _first_picture_lag_s(self) -> float:
        rx = self.receiver_session
        if rx is None or not rx.stats.latencies_ms:
            return 0.0  # an H.264 picture: no capture time known here
        # From the sender's clock: clamped, so a skewed peer clock cannot shift the audio far.
        return min(max(rx.stats.latencies_ms[-1] / 1000.0, 0.0), MAX_AUDIO_LEAD_S)

    def _send_control(self, message: ControlMessage) -> None:
        if self.control is not None and self.control.readyState == "open":
            # Called from the receiver's render thread too: hop onto the event loop.
            self._loop.call_soon_threadsafe(self._send_now, message)

    def _send_now(self, message: ControlMessage) -> None:
        if self.control is not None and self.control.readyState == "open":
            self.control.send(pack_control(message))

    def _end(self, reason: str) -> None:
        if not self._ended.is_set():
            self._end_reason = reason
            events.info("call ends: %s", reason)
            self._ended.set()

    def _on_control(self, data: bytes | str) -> None:
        try:
            message = parse_control(data)
        except CodecError as exc:
            self.control_malformed += 1
            log.warning("dropped a malformed control message: %s", exc)
            return
        if isinstance(message, FOR_RECEIVER) and self.receiver_session is not None:
            self.receiver_session.on_control(message)
        elif isinstance(message, FOR_SENDER) and self.sender_session is not None:
            self.sender_session.on_control(message)
        elif isinstance(message, Bye):
            self._end(f"peer said goodbye ({message.reason})")

    def _on_motion(self, data: bytes) -> None:
        if self.receiver_session is not None:
            self.receiver_session.on_motion(data)

    def _watch_channel(self, channel: RTCDataChannel) -> None:
        if channel.label == "control":
            self.control = channel
            channel.on("message", self._on_control)
        elif channel.label == "motion":
            self.motion = channel
            channel.on("message", self._on_motion)
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

    async def _consume_video(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                image = frame.to_ndarray(format="rgb24")
                if self.receiver_session is not None:
                    self.receiver_session.on_h264_frame(image, float(frame.time or 0.0))
        except MediaStreamError:
            pass

    async def _consume_audio(self, track: MediaStreamTrack) -> None:
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
                follow_receiver_feedback(rtp_sender, self.h264_track)
                video = next(t for t in pc.getTransceivers() if t.sender is rtp_sender)
            else:
                video = pc.addTransceiver("video", direction="recvonly")
            prefer_h264(video)
            if self.audio is not None:
                self._add_audio(pc)
            else:
                pc.addTransceiver("audio", direction="recvonly")
            self._resync_video_sooner(pc)
            await pc.setLocalDescription(await pc.createOffer())
            await self.signaling.send({"type": "offer", **sdp_to_dict(pc.localDescription)})
            answer = await self._expect("answer")
            await pc.setRemoteDescription(dict_to_sdp(answer))
        else:
            offer = await self._expect("offer")
            await pc.setRemoteDescription(dict_to_sdp(offer))
            if self.h264_track is not None:
                follow_receiver_feedback(pc.addTrack(self.h264_track), self.h264_track)
            if self.audio is not None:
                self._add_audio(pc)
            self._resync_video_sooner(pc)
            await pc.setLocalDescription(await pc.createAnswer())
            await self.signaling.send({"type": "answer", **sdp_to_dict(pc.localDescription)})

    @staticmethod
    def _resync_video_sooner(pc: RTCPeerConnection) -> None:
        # The H.264 we receive: a lost packet costs seconds, not aiortc's 512 packets.
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "video":
                resync_video_sooner(transceiver.receiver)

    def _add_audio(self, pc: RTCPeerConnection) -> None:
        # Audio starts once the data channels are open: before, it would crowd out their set-up.
        rtp_sender = pc.addTrack(HeldTrack(self.audio, self._channels_open))
        if self.options.audio_kbps is not None:
            self.audio_encoder = install_opus_encoder(rtp_sender, self.options.audio_kbps)

    async def _expect(self, kind: str) -> dict:
        while True:
            message = await self.signaling.receive(timeout=CONNECT_TIMEOUT_S)
            if message.get("type") == kind:
                return message
            if message.get("type") in ("peer_left", "bye"):
                raise CallEnded("the peer left during set-up")
            log.debug("ignoring signaling message %r while waiting for %s", message.get("type"), kind)

    async def _watch_signaling(self) -> None:
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
            if self.receiver_session is not None and self.receiver_session.decoder is not None:
                numbers = {k: float(v) for k, v in self.receiver_session.snapshot().items()
                           if isinstance(v, int | float) and not isinstance(v, bool)}
                self._send_control(StatsReport(values=numbers))

    def _peer_sends_video(self) -> bool:
        return any(t.kind == "video" and t.currentDirection in ("sendrecv", "recvonly")
                   for t in self.pc.getTransceivers())

    async def _watch_picture(self) -> None:
        """Say when the peer sends video but no picture came for NO_PICTURE_S (a link too
        slow for video beside the audio, a sender that stalled), and when pictures come back:
        a call never freezes silently. The stalls go in the report (``picture_stalls``)."""
        if not self._peer_sends_video():
            return
        meter = self.receiver_session.freeze
        stalled_since: float | None = None
        while not self._ended.is_set():
            await asyncio.sleep(STATS_INTERVAL_S)
            last = meter.last if meter.last is not None else self.connected_at
            gap = time.monotonic() - last
            if stalled_since is None and gap >= NO_PICTURE_S:
                stalled_since = last
                _, motion_kbps = self.receiver_session.motion_meter.rates()
                audio = self.motion_reader.stats.audio_packets if self.motion_reader is not None else None
                events.warning(
                    "%s for %.0f s although the peer sends video: the link is too slow for video "
                    "beside the audio, or the peer stalled (keyframes received %d, motion %.1f kbit/s, "
                    "audio packets received %s); the call goes on",
                    "no picture yet" if meter.first is None else "no new picture", gap,
                    self.receiver_session.stats.keyframes, motion_kbps, "–" if audio is None else audio)
                self.picture_stalls.append([round(last - self.connected_at, 3), None])
            elif stalled_since is not None and meter.last is not None and meter.last > stalled_since:
                events.info("pictures again after %.1f s", meter.last - stalled_since)
                self.picture_stalls[-1][1] = round(meter.last - stalled_since, 3)
                stalled_since = None

    # ------------------------------------------------------------------ the call

    async def run(self, duration: float | None = None, *, until: float | None = None) -> str:
        """Connect, then send and receive for ``duration`` s of media (or until
        ``time.monotonic()`` reaches ``until``), until the source ends or the peer leaves.
        None and None: no time limit. The wait for the peer and the set-up never count.

        Returns why the call ended."""
        self._loop = asyncio.get_running_loop()
        options = self.options
        if self.frames is not None:
            await self._picture_size()
            self.h264_track = H264Track(self.picture_size, fps=options.fps, bitrate_kbps=options.h264_kbps)
        self.receiver_session = ReceiverSession(self.model, show=self._show, send_control=self._send_control,
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
        self.receiver_session.freeze.start = self.connected_at
        self.motion_reader = attach_motion_reader(self.pc, self._on_motion)
        if options.meter_wire:
            from rtc.wire_meter import WireMeter

            self.wire_meter = WireMeter(self.pc, [self.control, self.motion])
        if until is not None:
            duration = max(0.0, until - self.connected_at)
        events.info("connected to the peer in %.1f s (this side %ss)", self.connected_at - started,
                    self.signaling.role)
        self._tasks += [asyncio.ensure_future(self._watch_signaling()),
                        asyncio.ensure_future(self._push_stats()),
                        asyncio.ensure_future(self._watch_picture())]
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

    async def _picture_size(self) -> None:
        """The picture this side sends, from the source's first frame (put back in front):
        its whole frame, scaled down to fit ``options.resolution``, or ``options.crop``'s
        face crop (also when the model renders only crops)."""
        loop = asyncio.get_running_loop()
        first = await loop.run_in_executor(None, next, self.frames, None)
        if first is not None:
            rest = self.frames
            self.frames = iter(itertools.chain([first], rest))
        crop = self.options.crop
        self.whole_frame = crop is None and first is not None
        if self.whole_frame:
            self.picture_size = frame_size_within(first.shape[1], first.shape[0], self.options.resolution)
            if self.model is not None:
                try:
                    self.send_model = self.model.at_size(*self.picture_size, whole_frame=True)
                except ValueError as error:
                    events.info("sending a face crop: %s", error)
                    self.whole_frame, crop = False, self.model.image_size
        if not self.whole_frame:
            crop = crop or (self.model.image_size if self.model is not None else 256)
            self.picture_size = (crop, crop)
            if self.model is not None:
                self.send_model = self.model.at_size(crop, crop)
        events.info("sending %s at %d×%d", "the whole frame" if self.whole_frame else "a face crop",
                    *self.picture_size)

    async def _send(self, duration: float | None) -> None:
        options = self.options
        peer = self.signaling.peer_capabilities
        mode, why = choose_mode(options.mode, self.model, peer, options.fps)
        self.mode_reason = why
        events.info("sending %s: %s", mode, why)
        encoder = None if self.send_model is None else call_encoder(self.send_model, options)
        size = self.picture_size[0]
        self.sender_session = SenderSession(self.frames, fps=options.fps, encoder=encoder,
                                    cropper=FaceCropper(out_size=size), h264_track=self.h264_track,
                                    mode=mode, face_lost_frames=options.face_lost_frames,
                                    compare=options.compare, drop_late=options.live,
                                    on_frame=self.on_sent_frame,
                                    whole_frame=self.picture_size if self.whole_frame else None)
        self.sender_session.peer_takes_bundles = peer is not None and BUNDLE_CAPABILITY in peer.codecs
        if options.motion_on_audio:
            self.motion_carrier = AudioMotionCarrier.attach(self.pc, self.sender_session.send_motion_on_channel)
            self.sender_session.motion_carrier = self.motion_carrier
            if self.motion_carrier is not None:
                self.motion_carrier.bundles = self.sender_session.peer_takes_bundles
        # A slow link gets longer audio packets (fewer headers): the session asks the encoder.
        self.sender_session.audio_encoder = self.audio_encoder
        events.info("motion travels %s", "on the audio packets (RTP header extension)"
                    if self.motion_carrier is not None else "on the data channel")
        await self.sender_session.run(self.control, self.motion, duration=duration)

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
        for hook in (self.motion_carrier, self.motion_reader, self.wire_meter):
            if hook is not None:
                hook.detach()
        if self.sender_session is not None:
            self.sender_session.stop()
            self.sender_session.close()
        if self.receiver_session is not None:
            self.receiver_session.close()
        for task in self._tasks:
            task.cancel()
        if self.h264_track is not None:
            self.h264_track.stop()
        if self.pc is not None:
            await self.pc.close()
