"""The sending half of a call: frames in, neural packets or H.264 out.

A :class:`SenderSession` owns the face crop, the codec's :class:`~codec.api.Encoder` and the
H.264 fallback track. Per frame it either encodes head motion (``neural`` mode: keyframes on
the reliable ``control`` channel, one motion packet per frame on the audio RTP packets when
:mod:`app.call` gives it a ``motion_carrier``, else on the unreliable ``motion`` channel) or
pushes the crop into the H.264 track (``h264`` mode). It switches to H.264 when the face is
lost for more than ``face_lost_frames`` frames and back after a new keyframe, and, when the
Encoder runs the closed loop (``RefreshPolicy``), when the loop says keyframes stopped
helping, and back once ``Encoder.probe`` finds a keyframe that holds.

It knows nothing about signaling: :mod:`app.call` hands it two open data channels and the
track it added to the peer connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from codec.bitstream import PacketType
from codec.bitstream.control import (
    MODES,
    HeldReferences,
    IntraRequest,
    Keyframe,
    KeyframeRequest,
    ModeRequest,
    ModeSwitch,
    Patch,
    StatsReport,
    StreamStart,
    pack_control,
)
from codec.errors import CodecError, FaceNotFoundError

from sender.link_adapt import (
    LONG_AUDIO_MS,
    LinkAdapter,
    audio_packet_ms,
    audio_packet_why,
    log_adaptation,
    wire_bytes,
)

if TYPE_CHECKING:
    from codec.api import Encoder
    from codec.facecrop import FaceCropper
    from sender.media_tracks import H264Track

log = logging.getLogger(__name__)
events = logging.getLogger("facecodec.call")  # mode switches: shown by `facecodec call` without -v

# Motion messages waiting in the SCTP send buffer beyond this are stale by the time they
# would leave: drop new ones instead of queueing (the channel is lossy by design anyway).
MOTION_BUFFER_LIMIT_BYTES = 4_096
KEYFRAME_REQUEST_MIN_INTERVAL_S = 0.5  # a burst of requests after a loss yields one keyframe
# The face thread's share of one core at most: each check is followed by a pause of
# (1/share - 1) times its own CPU time. With a face a check costs ~25 ms at 640×480 and this
# never binds (checks stay every face_check_every frames); an empty room costs the detector
# its upsampled pass (~250 ms), which every 5 frames kept one of two cores busy all the while
# the sender waited on H.264 for the face to come back.
FACE_CHECK_CPU_SHARE = 0.25


@dataclass
class SenderStats:
    frames: int = 0
    neural_frames: int = 0
    h264_frames: int = 0
    skipped_late: int = 0  # source frames dropped because the loop fell behind real time
    motion_dropped: int = 0  # motion packets not sent because the channel was backed up
    motion_bytes: int = 0
    motion_on_audio: int = 0  # motion packets handed to the audio carrier (not the data channel)
    control_bytes: int = 0
    keyframes: int = 0  # whole and predicted
    keyframe_bytes: int = 0
    predicted_keyframes: int = 0  # refreshes predicted from a held reference (codec.predicted_keyframe)
    predicted_keyframe_bytes: int = 0
    keyframes_deferred: int = 0  # requested while another was still crossing: sent after it
    patches: int = 0  # reference patches sent (on the control channel)
    keyframe_requests: int = 0
    intra_requests: int = 0
    mode_switches: int = 0
    resolution_changes: int = 0  # the source's frames changed size mid-call (scaled back to the first's)
    motion_bundles: int = 0  # data-channel messages that carried several motion packets
    motion_thinned: int = 0  # frames sent without motion: the link was too slow for every frame
    adaptations: list = field(default_factory=list)  # (s, what, why): sender.link_adapt's changes
    encode_ms_total: float = 0.0  # wall time of Encoder.encode (neural frames)
    encode_cpu_ms_total: float = 0.0  # CPU time of the encoding thread for those frames
    face_cpu_ms_total: float = 0.0  # CPU time of the face checks (the detector thread)
    face_checks: int = 0

    @property
    def encode_ms_per_frame(self) -> float:
        return self.encode_ms_total / max(self.neural_frames, 1)

    @property
    def cpu_ms_per_frame(self) -> float:
        """Sender CPU per sent frame: motion encoding plus its share of face tracking."""
        return (self.encode_cpu_ms_total + self.face_cpu_ms_total) / max(self.frames, 1)


class SenderSession:
    """Send one source over a connected peer.

    Args:
        frames: an iterator of H×W×3 uint8 RGB frames (a camera, a file, the default source).
        fps: the call's frame rate; the loop paces the source to it.
        encoder: the codec's Encoder (None: this peer has no model, H.264 only).
        cropper: a :class:`codec.facecrop.FaceCropper` at the encoder's crop size.
        h264_track: the :class:`sender.media_tracks.H264Track` added to the connection.
        mode: ``neural`` or ``h264`` to start with (``auto`` is decided by :mod:`app.mode_choice`).
        face_check_every: run the (slow) face detector every N frames, off the frame loop
            (less often where a check costs more than FACE_CHECK_CPU_SHARE of a core).
        face_lost_frames: switch to H.264 once the face is missing for more than N frames.
        compare: also feed the H.264 track in neural mode (side-by-side comparisons).
        drop_late: skip source frames when the loop falls behind real time (a live call);
            False sends every frame however late (the demo's recording).
        whole_frame: (width, height): send the camera's whole frame at that size (the
            encoder's model at that size, whole frame), not a face crop; the face then moves
            within the picture, and only its leaving the frame (H.264 until it is back) stops
            the neural stream; None: the face crop of ``cropper``, re-fitted with a new
            keyframe when the face leaves it.

    The first frame's size is the source's for the whole call (the stream's picture, the
    crop box and the H.264 track are sized from it). A camera that changes its resolution
    mid-call has its frames centre-cropped to that size's aspect and scaled to it (nothing
    stretched), with one log line and a new keyframe per change: the old keyframe's framing
    no longer matches the new frames'.
    """

    def __init__(self, frames: Iterator[np.ndarray], *, fps: float, encoder: Encoder | None,
                 cropper: FaceCropper, h264_track: H264Track | None, mode: str = "neural",
                 face_check_every: int = 5, face_lost_frames: int = 25, compare: bool = False,
                 drop_late: bool = True, on_frame: Callable[[np.ndarray, float], None] | None = None,
                 whole_frame: tuple[int, int] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if mode == "neural" and encoder is None:
            raise ValueError("neural mode needs an encoder")
        self.frames = frames
        self.fps = fps
        self.encoder = encoder
        self.cropper = cropper
        self.whole_frame = None if whole_frame is None else (int(whole_frame[0]), int(whole_frame[1]))
        self.h264_track = h264_track
        self.mode = mode
        self.wanted_mode = mode  # what the peers agreed on; face loss overrides it for a while
        self.face_check_every = face_check_every
        self.face_lost_frames = face_lost_frames
        self.compare = compare
        self.drop_late = drop_late
        self.on_frame = on_frame  # gets (crop, media time) of every sent frame (demo, benchmarks)
        # Keyframes sized to the link, patches and motion rate (sender.link_adapt); app.call
        # says whether the peer takes motion bundles.
        self.link: LinkAdapter | None = None
        self.peer_takes_bundles = False
        self._bundle: list[bytes] = []
        self._deferred_keyframe: str | None = None  # a requested keyframe waiting for the link
        self.stats = SenderStats()
        self.peer_stats: dict[str, float] = {}
        self.box = None
        self._control = None
        self._motion = None
        # rtc.motion_over_audio.AudioMotionCarrier, set by app.call when the peer accepted the
        # extension: motion rides on the audio RTP packets instead of one message per frame.
        self.motion_carrier = None
        self.audio_encoder = None  # rtc.opus_encoder.LinkOpusEncoder: the packet length follows the link
        self._made_at = time.monotonic()  # adaptations the session logs itself count from here
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sender-encode")
        self._face_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sender-face")
        self._face_job: asyncio.Future | None = None
        self._frames_without_face = 0
        self._face_check_index = 0  # the frame index the last face check looked at
        self._last_face_index = 0  # the frame index where a face was last seen
        self._face_check_cpu_s = 0.0  # CPU time of the last face check
        self._next_face_check = 0.0  # time.monotonic() before which no new check starts (FACE_CHECK_CPU_SHARE)
        self._quality_fallback = False  # in H.264 because the closed loop said keyframes stopped helping
        self._last_keyframe_request = -1e9
        self.source_size: tuple[int, int] | None = None  # (width, height) of the first frame
        self._input_size: tuple[int, int] | None = None  # of the last frame in, to log a change once
        self._stopped = asyncio.Event()
        self.clock = 0.0  # wall clock at media time 0

    # ------------------------------------------------------------------ control in

    def on_control(self, message) -> None:
        """A control message from the peer's receiver (routed here by :mod:`app.call`)."""
        if isinstance(message, KeyframeRequest):
            now = time.monotonic()
            self.stats.keyframe_requests += 1
            spacing = max(KEYFRAME_REQUEST_MIN_INTERVAL_S,
                          self.link.keyframe_interval() if self.link is not None else 0.0)
            if now - self._last_keyframe_request >= spacing:
                self._last_keyframe_request = now
                log.info("peer asked for a keyframe (%s)", message.reason)
                if self.encoder is not None:
                    why = f"the receiver asked: {message.reason}"
                    if self._keyframe_in_flight():
                        # One keyframe on the link at a time: a second one queued behind it would
                        # only hold motion up longer. It goes once the first has crossed.
                        self._deferred_keyframe = why
                        self.stats.keyframes_deferred += 1
                    else:
                        self.encoder.request_keyframe(why)
                if self.h264_track is not None:
                    self.h264_track.request_keyframe()
        elif isinstance(message, IntraRequest):
            self.stats.intra_requests += 1
            if self.encoder is not None:
                self.encoder.request_intra()
        elif isinstance(message, HeldReferences):
            if self.encoder is not None:  # the keyframes it may warp from (codec.reference_memory)
                self.encoder.references_held(message.held)
        elif isinstance(message, StatsReport):
            self.peer_stats = dict(message.values)
            self._adapt()
        elif isinstance(message, ModeRequest):
            if message.mode == "neural" and self.encoder is None:
                log.warning("peer asked for neural mode, but this sender has no model")
                return
            log.info("peer asked for %s mode (%s)", message.mode, message.reason)
            self.wanted_mode = message.mode
            self._switch(message.mode, f"peer asked: {message.reason}")

    # ------------------------------------------------------------------ the link

    def _start_link(self) -> None:
        if self.encoder is None:
            return
        self.link = LinkAdapter(codec=self.encoder.keyframe_codec, default_quality=self.encoder.keyframe_quality,
                                motion_on_channel=self.motion_carrier is None, fps=self.fps)
        self.link.adaptations = self.stats.adaptations  # one list: the report shows them
        self.encoder.keyframe_quality = self.link.keyframe_quality()

    def _rtt(self) -> float | None:
        sctp = getattr(self._control, "transport", None)
        return getattr(sctp, "_srtt", None)  # aiortc's smoothed round trip; None before one

    def _adapt(self) -> None:
        """Act on the receiver's newest report (sender.link_adapt.LinkAdapter)."""
        self._link_adapted()
        self._audio_follows_link()

    def _audio_follows_link(self) -> None:
        """The audio's packet length (rtc.opus_encoder) for the link: as the link adapter
        measured it, or in H.264 mode as the H.264 track's rate control reads the link."""
        if self.audio_encoder is None:
            return
        current = self.audio_encoder.packet_ms
        if self.mode == "h264" and self.h264_track is not None:
            kbps = self.h264_track.link_kbps
            if kbps is None:
                return
            wanted = audio_packet_ms(kbps, current)
            why = audio_packet_why(kbps, wanted > current)
        elif self.link is not None:
            wanted, why = self.link.state.audio_packet_ms, ""  # the adapter logged why
        else:
            return
        # 60 ms packets carry 1.5 frames' motion each: only for a peer that reads bundles.
        wanted = wanted if self.peer_takes_bundles else min(wanted, LONG_AUDIO_MS)
        if wanted != current:
            self.audio_encoder.set_packet_ms(wanted)
            if why:
                log_adaptation(self.stats.adaptations, self._made_at, f"audio in {wanted} ms packets", why)

    def _link_adapted(self) -> None:
        if self.link is None:
            return
        # Motion takes the data channel without audio (or while audio stalls): there it costs
        # a message per frame, and a slow link gets bundles or fewer frames.
        self.link.motion_on_channel = self.motion_carrier is None or \
            self.stats.motion_on_audio < 0.5 * self.stats.neural_frames
        if self.stats.neural_frames >= 25:  # what motion packets really weigh, for the bundle choice
            self.link.motion_packet_bytes = self.stats.motion_bytes / self.stats.neural_frames
        self.link.audio = self.audio_encoder is not None
        upgrade = self.link.on_peer_stats(self.peer_stats, self._rtt())
        state = self.link.state
        self.encoder.keyframe_quality = self.link.keyframe_quality()
        self.encoder.pause_patches(not state.patches)
        self.encoder.set_intra_period(state.intra_period)
        if upgrade and not self.encoder.keyframe_pending:
            self.encoder.request_keyframe(f"the link carries about {state.kbps:.0f} kbit/s: a better keyframe")
        if state.bundle == 1 and self._bundle:
            self._flush_bundle()

    # ------------------------------------------------------------------ sending

    def _send_control(self, message) -> None:
        if self._control is None or self._control.readyState != "open":
            return
        data = pack_control(message)
        self.stats.control_bytes += len(data)
        self._control.send(data)

    def _send_packets(self, packets: list[bytes]) -> None:
        for packet in packets:
            # our own encoder's output: the type byte says it. A predicted refresh travels like a
            # keyframe: reliable and ordered, behind the patches of the reference it predicts from.
            if packet[0] in (PacketType.KEYFRAME, PacketType.PREDICTED_KEYFRAME):
                self.stats.keyframes += 1
                self.stats.keyframe_bytes += len(packet)
                if packet[0] == PacketType.PREDICTED_KEYFRAME:
                    self.stats.predicted_keyframes += 1
                    self.stats.predicted_keyframe_bytes += len(packet)
                why = self.encoder.last_keyframe_reason if self.encoder is not None else ""
                if self.link is not None and self.encoder.stats.keyframe_reasons:
                    self.link.keyframe_sent(self.encoder.stats.keyframe_reasons[-1][0], len(packet),
                                            self.encoder.keyframe_quality, ahead_bytes=self._bytes_ahead())
                self._send_control(Keyframe(packet=packet, reason=why))
            elif packet[0] == PacketType.PATCH:
                self.stats.patches += 1
                self._send_control(Patch(packet=packet))
            elif self.motion_carrier is not None and not self._control_backlog() \
                    and self.motion_carrier.send(packet):
                self.stats.motion_bytes += len(packet)
                self.stats.motion_on_audio += 1
            elif self.send_motion_on_channel(packet):
                self.stats.motion_bytes += len(packet)

    def _control_backlog(self) -> bool:
        """True while a control message (a keyframe of several SCTP chunks, a patch) has not
        wholly left. Motion on the audio packets would overtake it, and a receiver drops motion
        that comes before its keyframe; on the data channel it queues behind it instead.
        (aiortc counts a message out of ``bufferedAmount`` once it is chunked, not sent, so this
        reads the SCTP transport's own queues.)"""
        if self._control is None:
            return False
        sctp = self._control.transport
        return bool(self._control.bufferedAmount or getattr(sctp, "_outbound_queue", None)
                    or getattr(sctp, "_data_channel_queue", None))

    def _bytes_ahead(self) -> int:
        """Wire bytes the sender has put on the path that a keyframe sent now queues behind:
        SCTP's unacknowledged chunks (in flight or due again), its chunked queue
        and the data-channel messages not yet chunked (sender.link_adapt counts them into the
        keyframe's rate bound). 0 where the transport is not aiortc's."""
        sctp = getattr(self._control, "transport", None)
        if sctp is None:
            return 0
        # Acknowledged chunks have crossed; abandoned ones (unreliable motion given up) never go again.
        chunks = [c for c in list(getattr(sctp, "_sent_queue", ()))
                  if not getattr(c, "_acked", False) and not getattr(c, "_abandoned", False)]
        chunks += list(getattr(sctp, "_outbound_queue", ()))
        total = sum(wire_bytes(len(getattr(c, "user_data", b""))) for c in chunks)
        for item in list(getattr(sctp, "_data_channel_queue", ())):
            total += wire_bytes(len(item[2])) if len(item) == 3 else 0
        return total

    def _keyframe_in_flight(self) -> bool:
        """A keyframe is being coded, or control data (a keyframe, a patch) has not wholly
        crossed: queued in SCTP or sent and not yet acknowledged."""
        if self.encoder is not None and self.encoder.keyframe_pending:
            return True
        if self._control is None:
            return False
        return self._control_backlog() or bool(getattr(self._control.transport, "_sent_queue", None))

    def send_motion_on_channel(self, packet: bytes) -> bool:
        """One motion packet on the unreliable data channel; False if it was not sent. On a
        slow link (sender.link_adapt) packets wait to travel several to a message."""
        if self._motion is None or self._motion.readyState != "open":
            self._dropped_motion()
            return False
        bundle = self.link.state.bundle if self.link is not None and self.peer_takes_bundles else 1
        if bundle > 1:
            self._bundle.append(packet)
            if len(self._bundle) >= bundle:
                return self._flush_bundle()
            return True
        return self._send_on_channel(packet)

    def _flush_bundle(self) -> bool:
        from rtc.motion_bundle import pack_bundle

        packets, self._bundle = self._bundle, []
        if not packets:
            return True
        if len(packets) == 1:
            return self._send_on_channel(packets[0])
        self.stats.motion_bundles += 1
        return self._send_on_channel(pack_bundle(packets))

    def _send_on_channel(self, packet: bytes) -> bool:
        if self._motion.bufferedAmount > MOTION_BUFFER_LIMIT_BYTES:
            self.stats.motion_dropped += 1
            self._dropped_motion()
            return False
        self._motion.send(packet)
        return True

    def _dropped_motion(self) -> None:
        """A motion packet never left: the next one is intra, so it carries its whole sequence
        number (compact inter packets after a hole of 64·k frames would look contiguous)."""
        if self.encoder is not None:
            self.encoder.request_intra()

    def _switch(self, mode: str, reason: str) -> None:
        if mode == self.mode:
            return
        if mode == "neural":
            # Back to neural only behind a fresh keyframe (the receiver may hold a stale one):
            # no motion until it is out.
            self.encoder.request_keyframe(f"back to neural: {reason}", restart=True)
        self.mode = mode
        self.stats.mode_switches += 1
        events.info("switching to %s: %s", mode, reason)
        self._send_control(ModeSwitch(mode=mode, reason=reason))

    def send_stream_start(self) -> None:
        """(Re)send the stream header; the next frame carries a keyframe."""
        if self.encoder is not None:
            self._send_control(StreamStart(header=self.encoder.header(), clock=self.clock, fps=self.fps))
            self.encoder.request_keyframe("stream start", restart=True)
        self._send_control(ModeSwitch(mode=self.mode, reason="call start"))

    # ------------------------------------------------------------------ face tracking

    def _fit_box(self, frame: np.ndarray):
        try:
            return self.cropper.fit([frame])
        except FaceNotFoundError:
            return None

    def _check_face(self, frame: np.ndarray) -> tuple[bool, object]:
        """(face present, new box or None) — runs on the face thread."""
        from codec.facecrop import detect_landmarks

        started = time.thread_time()
        try:
            landmarks = detect_landmarks(frame)
        finally:
            self._face_check_cpu_s = time.thread_time() - started
            self.stats.face_cpu_ms_total += 1000.0 * self._face_check_cpu_s
        if landmarks is None:
            return False, None
        if self.whole_frame is not None:
            return True, None  # the face moves within the frame: the motion says where
        if self.box is None or self.cropper.face_left_box(frame, self.box, landmarks=landmarks):
            return True, self.cropper.box_for(landmarks)
        return True, None

    def _face_result(self, present: bool, new_box) -> None:
        self.stats.face_checks += 1
        self._next_face_check = time.monotonic() + self._face_check_cpu_s * (1.0 / FACE_CHECK_CPU_SHARE - 1.0)
        if not present:
            # Counted in frames, not checks: checks are spaced by their cost and late frames skipped.
            self._frames_without_face = self._face_check_index - self._last_face_index
            if self._frames_without_face > self.face_lost_frames and self.mode == "neural":
                self._switch("h264", f"face lost for {self._frames_without_face} frames")
            return
        self._frames_without_face = 0
        self._last_face_index = self._face_check_index
        if new_box is not None:
            log.info("face moved out of the crop: new crop box and keyframe")
            self.box = new_box
            if self.encoder is not None:
                # Motion of the new crop against the old crop's keyframe would show a shifted
                # face: none until the new keyframe is out.
                self.encoder.request_keyframe("the face moved out of the crop", restart=True)
        if self.mode == "h264" and self.wanted_mode == "neural" and not self._quality_fallback:
            self._switch("neural", "face found again")

    def _crop(self, frame: np.ndarray) -> np.ndarray:
        if self.whole_frame is not None:
            from codec.keyframe import fit_frame

            return fit_frame(frame, self.whole_frame)
        box = self.box
        if box is None:  # no face yet: a centred square, so H.264 still shows something
            from codec.facecrop import CropBox

            h, w = frame.shape[:2]
            box = CropBox(w / 2, h / 2, min(h, w))
        return self.cropper.crop(frame, box)

    # ------------------------------------------------------------------ the loop

    def stop(self) -> None:
        self._stopped.set()

    async def run(self, control, motion, *, duration: float | None = None,
                  max_frames: int | None = None) -> SenderStats:
        """Send frames at ``fps`` until the source ends, ``duration`` s, ``max_frames`` or stop()."""
        loop = asyncio.get_running_loop()
        self._control, self._motion = control, motion
        first = await loop.run_in_executor(self._pool, next, self.frames, None)
        if first is None:
            raise CodecError("the video source gave no frames")
        self.source_size = self._input_size = (first.shape[1], first.shape[0])
        self.box = await loop.run_in_executor(self._face_pool, self._fit_box, first)
        if self.box is None:
            log.warning("no face in the first frame: sending H.264 until one is found")
            if self.mode == "neural":
                self.mode = "h264"
        start = time.monotonic()
        self.clock = time.time()
        self._start_link()
        self.send_stream_start()
        frame: np.ndarray | None = first
        index = 0
        while not self._stopped.is_set():
            if frame is None:
                break
            t = index / self.fps
            if duration is not None and t >= duration or max_frames is not None and index >= max_frames:
                break
            await self._send_frame(frame, t, index)
            index += 1
            # Pace to real time; a source that falls behind loses frames rather than lagging.
            due = start + index / self.fps
            delay = due - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._stopped.wait(), timeout=delay)
                except TimeoutError:
                    pass
            frame = await loop.run_in_executor(self._pool, next, self.frames, None)
            while self.drop_late and frame is not None and \
                    time.monotonic() - (start + index / self.fps) > 1.0 / self.fps:
                self.stats.skipped_late += 1
                index += 1
                frame = await loop.run_in_executor(self._pool, next, self.frames, None)
        if self.motion_carrier is not None:
            await self.motion_carrier.flush()  # the last frame's motion may still wait for audio
        return self.stats

    def _to_source_size(self, frame: np.ndarray) -> np.ndarray:
        """The frame at the first frame's size: unchanged, or (a camera that changed its
        resolution) centre-cropped to that aspect and scaled, with one log line and a new
        keyframe per change of size."""
        size = (frame.shape[1], frame.shape[0])
        if self._input_size is None:  # no frame seen yet (a session driven frame by frame)
            self._input_size = size
        if size != self._input_size:
            self.stats.resolution_changes += 1
            events.info("the source's frames changed from %d×%d to %d×%d: %s", *self._input_size, *size,
                        "back at the call's size" if size == self.source_size else
                        f"centre-cropped and scaled to the call's {self.source_size[0]}×{self.source_size[1]}")
            self._input_size = size
            if self.encoder is not None and self.mode == "neural":
                # The old keyframe's framing no longer matches: motion against it would show the
                # face in the wrong place until a keyframe of the new framing is out.
                self.encoder.request_keyframe("the source's resolution changed", restart=True)
            if self.h264_track is not None:
                self.h264_track.request_keyframe()
        if size == self.source_size or self.source_size is None:
            return frame
        from sender.sources import cover_to_size

        return cover_to_size(frame, self.source_size)

    async def _send_frame(self, frame: np.ndarray, t: float, index: int) -> None:
        loop = asyncio.get_running_loop()
        frame = self._to_source_size(frame)
        if self._face_job is not None and self._face_job.done():
            try:
                self._face_result(*self._face_job.result())
            except Exception:
                log.exception("face check failed")
            self._face_job = None
        if self._face_job is None and index > 0 and index - self._face_check_index >= self.face_check_every \
                and time.monotonic() >= self._next_face_check:
            self._face_check_index = index
            self._face_job = loop.run_in_executor(self._face_pool, self._check_face, frame)
        crop = self._crop(frame)
        self.stats.frames += 1
        if self.on_frame is not None:
            self.on_frame(crop, t)
        if self._deferred_keyframe is not None and self.encoder is not None and not self._keyframe_in_flight():
            self.encoder.request_keyframe(self._deferred_keyframe)
            self._deferred_keyframe = None
        if self.mode == "neural" and self.link is not None and self.link.state.motion_every > 1 \
                and index % self.link.state.motion_every and not self.encoder.keyframe_pending:
            self.stats.motion_thinned += 1  # a link too slow for every frame: this one sends none
        elif self.mode == "neural":
            started = time.perf_counter()
            packets = await loop.run_in_executor(self._pool, self._encode, crop, t)
            self.stats.encode_ms_total += 1000.0 * (time.perf_counter() - started)
            self.stats.neural_frames += 1
            self._send_packets(packets)
            if self.encoder.fallback is not None:
                # The closed loop found that keyframes stopped helping: H.264 until a trial
                # keyframe holds again (Encoder.probe).
                self._quality_fallback = True
                self._switch("h264", f"the rebuild fails: {self.encoder.fallback}")
        elif self._quality_fallback and self.encoder is not None and self.wanted_mode == "neural":
            back = await loop.run_in_executor(self._pool, self.encoder.probe, crop)
            if back is not None:
                self._quality_fallback = False
                self._switch("neural", back)
        if self.mode == "h264" or self.compare:
            if self.mode == "h264":
                self.stats.h264_frames += 1
            if self.h264_track is not None:
                self.h264_track.push(crop, t)

    def _encode(self, crop: np.ndarray, t: float) -> list[bytes]:
        started = time.thread_time()
        try:
            return self.encoder.encode(crop, t)
        finally:
            self.stats.encode_cpu_ms_total += 1000.0 * (time.thread_time() - started)

    def close(self) -> None:
        if self.encoder is not None:
            self.encoder.close()  # its keyframe worker's thread
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._face_pool.shutdown(wait=False, cancel_futures=True)
