"""The streaming codec's API: Encoder / Decoder, packet by packet (files: :mod:`codec.files`).
The Encoder is here, the Decoder in :mod:`codec.decoder`.

Encoder (sender side): square face crops in, packets out. The first frame (and any
frame after ``request_keyframe``) also yields a keyframe packet; every frame yields
one motion packet with its head pose and expression. A real-time sender codes keyframes
off its frame loop (``keyframe_worker=True``, :mod:`codec.keyframe_worker`): the keyframe
packet of a frame then comes out with a later frame's packets.

Decoder (receiver side, :mod:`codec.decoder`): packets in, rebuilt frames out, through
the model interface of :mod:`codec.families`, so either family works. Sequence numbers are
frame numbers, shared by a frame's keyframe and motion packets, so the motion prediction
chain is never broken by a keyframe. Motion packets are compact where the receiver can
recover what they leave out (:mod:`codec.bitstream.sequencing`). The Encoder keeps K
reference slots (``references``, :mod:`codec.reference_memory`): with the closed loop it warps
each frame from the held reference that rebuilds it best and sends a new keyframe only when
none does. What the packets cost on a call's wire is :mod:`rtc.wire_cost`'s business.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from codec.bitstream import HeaderFlags, KeyframePacket, MotionFramer, StreamHeader
from codec.damping import DampingChoice, DampingPolicy, MotionDamper

# The receiving half lives in codec.decoder; its names are the API's too.
from codec.decoder import DecodedFrame, Decoder, DecoderStats, HeldReference, stamp_untrained
from codec.families.base import TalkingHeadModel, ViewControl
from codec.keyframe import (
    DEFAULT_KEYFRAME_CODEC,
    KEYFRAME_CODEC_IDS,
    default_keyframe_quality,
    fit_frame,
    fit_square,
)
from codec.keyframe_worker import CodedKeyframe, KeyframeJob, KeyframeWorker, code_keyframe
from codec.motion_coding import MotionEncoder, default_quality, quant_table_for
from codec.predicted_keyframe import DEFAULT_CRF, MAX_CRF, RefreshChoice, code_refresh
from codec.reference_memory import ReferenceMemory, SentReference
from codec.reference_patches import DEFAULT_PATCH_KBPS, DEFAULT_PATCH_QUALITY, PatchSender
from codec.refresh import Alternative, LoopEvent, RefreshLoop, RefreshPolicy
from codec.zoo import DEFAULT_MODEL, resolve_model

log = logging.getLogger(__name__)

__all__ = ["DampingPolicy", "DecodedFrame", "Decoder", "DecoderStats", "Encoder", "EncoderStats", "HeldReference",
           "RefreshPolicy", "ViewControl", "fit_frame", "fit_square", "stamp_untrained"]

DEFAULT_INTRA_PERIOD = 25  # one absolute motion packet a second at 25 fps bounds drift after a loss
DEFAULT_TIMEBASE = 1000  # timestamps in milliseconds
# Keyframe slots the receiver keeps (K) with the closed loop, which chooses among them: on the
# dev clips K = 4 took the loop from 9.07 to 8.39 kbit/s with LPIPS 0.1188 -> 0.1165, and K = 8
# gave the same (no 10 s clip filled 4). Without the loop nothing chooses: K = 1.
DEFAULT_REFERENCES = 4
# Damped motion on frames the reference cannot show (codec.damping): off by default. On dev it
# lowered mean LPIPS a little (0.1437 -> 0.1428 one keyframe) but on the held-out train clips
# it raised AKD 1.63 -> 1.91 at equal LPIPS (benchmarks/results/rd-train20-turns-v2.json).
DEFAULT_DAMPING: DampingPolicy | None = None


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
    switches: list[tuple[int, int]] = field(default_factory=list)  # (seq, slot): warps from another held reference
    keyframe_slots: list[int] = field(default_factory=list)  # the slot each keyframe filled
    last_rebuild_error: float | None = None  # the closed loop's last score
    # Closed-loop refreshes coded both ways (codec.predicted_keyframe): (seq, predicted packet
    # bytes, whole keyframe packet bytes, predicted sent); the predicted ones are in ``keyframes``.
    refresh_choices: list[tuple[int, int, int, bool]] = field(default_factory=list)
    predicted_keyframes: int = 0
    # Predicted refreshes coded off the frame loop and dropped: their base left the receiver
    # (or the stream restarted) while they were coded; a whole keyframe is asked for instead.
    predicted_dropped: int = 0
    # Damped motion (codec.damping): frames whose candidates were rendered, and those coded
    # with a damped motion, by candidate ("turn×0.33", "head", "still").
    damping_tried: int = 0
    damped: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RefreshPlan:
    """A closed-loop refresh to predict from the reference the receiver holds: the base
    (``base_slot``, the keyframe of frame ``base_seq``, its ``source``), the frame's ``motion``
    and the ``slot`` the new reference fills; ``generation`` counts the sender's restarts."""

    base_slot: int
    base_seq: int
    source: object
    motion: np.ndarray
    slot: int
    generation: int


@dataclass(frozen=True)
class CodedRefresh:
    """A refresh the keyframe worker coded both ways (``choice``), with its plan."""

    job: KeyframeJob
    plan: RefreshPlan
    choice: RefreshChoice


class Encoder:
    """Sender side of the codec: RGB pictures -> packets (bytes). The pictures are square face
    crops at the model's size, or, for a model ``at_size(width, height, whole_frame=True)``,
    the camera's whole frame at that size; the stream header carries the size."""

    def __init__(self, model: TalkingHeadModel, *, quality: int | None = None,
                 intra_period: int = DEFAULT_INTRA_PERIOD, keyframe_codec: str = DEFAULT_KEYFRAME_CODEC,
                 keyframe_quality: int | None = None, timebase: int = DEFAULT_TIMEBASE,
                 frame_rate: float = 25.0, refresh: RefreshPolicy | None = None, patches: bool = True,
                 patch_quality: int = DEFAULT_PATCH_QUALITY, patch_kbps: float = DEFAULT_PATCH_KBPS,
                 keyframe_worker: bool = False, references: int | None = None,
                 reference_policy: str = "lru", acknowledged_references: bool = False,
                 predicted_refresh: bool = True, predicted_crf: int = DEFAULT_CRF,
                 damping: DampingPolicy | None = DEFAULT_DAMPING) -> None:
        """``quality``: the motion quantisation (None: ``codec.motion_coding.default_quality``,
        finer with a ``refresh`` policy). ``references``: K, the keyframe slots the receiver keeps (the stream header says
        it; None: ``DEFAULT_REFERENCES`` with a ``refresh`` policy, else 1); with the closed
        loop the sender warps each frame from the held one that rebuilds it best
        (:mod:`codec.reference_memory`; ``reference_policy``, ``lru`` or ``coverage``, picks
        the slot a new keyframe replaces). ``acknowledged_references``: a keyframe is held
        only once the receiver reports it (``references_held``; a call), so a lost one is
        never named. ``keyframe_worker``: code keyframes on a background thread (a call:
        ``encode`` never waits for the ~110 ms of an AV1 keyframe; the keyframe packet comes
        out with the first frame encoded after it is done, and until the receiver holds a
        first keyframe — or a fresh one after ``request_keyframe(restart=True)`` — frames send
        no motion). Without
        it (files, benchmarks) the keyframe goes out with its own frame and the packets are
        deterministic.

        ``predicted_refresh``: a closed-loop refresh is also coded against the warp of the
        reference the receiver holds (:mod:`codec.predicted_keyframe`) and sent that way when
        smaller at about the same quality, its x264 frames at CRF ``predicted_crf``. With the
        keyframe worker (a call) the refresh is coded off the frame loop too, only from a base
        the receiver reported holding; no reference patches go out while it is coded (they
        would change the base it predicts from), and one whose base is gone by the time it is
        done is dropped for a whole keyframe.

        ``damping``: on frames far from what the reference can show (a large turn, a face
        leaving the picture) the sender codes damped motion when its own render of that
        scores better than the tracker's motion (:mod:`codec.damping`; None: never)."""
        if keyframe_codec not in KEYFRAME_CODEC_IDS:
            raise ValueError(f"keyframe codec must be one of {sorted(KEYFRAME_CODEC_IDS)}")
        self.model = model
        self.quality = default_quality(refresh is not None) if quality is None else quality
        self.table = quant_table_for(model.layout, self.quality)
        self.intra_period = intra_period
        self.keyframe_codec = keyframe_codec
        # None: the codec's default for this picture (codec.keyframe.DEFAULT_KEYFRAME_QUALITY
        # for face crops, WHOLE_FRAME_KEYFRAME_QUALITY for whole frames)
        whole_frame = bool(getattr(model, "whole_frame", False))
        self.keyframe_quality = keyframe_quality if keyframe_quality is not None else \
            default_keyframe_quality(keyframe_codec, whole_frame)
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
        if references is None:
            references = DEFAULT_REFERENCES if refresh is not None else 1
        self.references = references
        # The sender's record of the receiver's K reference slots, and the one warped from now.
        self._memory = ReferenceMemory(references, reference_policy, acknowledged=acknowledged_references)
        self._current_slot: int | None = None
        self._report: dict[int, int] | None = None  # the receiver's newest report, not yet applied
        self.last_reference: int | None = None  # the slot the last motion packet warps from
        self.refresh = refresh
        # The closed loop (codec.refresh), or None: keyframes only when asked for.
        # The loop codes keyframes only for its fallback probe, on the frame loop: a real-time
        # sender's probe uses WebP (the default qualities rebuild alike; AV1 would stall it).
        probe_codec = "webp" if keyframe_worker else keyframe_codec
        self._loop = None if refresh is None else RefreshLoop(
            refresh, model, self._tracker, frame_rate=frame_rate, keyframe_codec=probe_codec,
            keyframe_quality=self.keyframe_quality if probe_codec == keyframe_codec
            else default_keyframe_quality(probe_codec, whole_frame))
        self._local_source = None  # the receiver's source state, for the closed loop and patches
        self.predicted_refresh = predicted_refresh
        self._generation = 0  # restarts so far: a refresh planned before one is void
        self._refresh_coding = False  # the worker codes a predicted refresh: patches wait
        if not 0 <= predicted_crf <= MAX_CRF:
            raise ValueError(f"predicted_crf must be 0-{MAX_CRF}, not {predicted_crf}")
        self.predicted_crf = int(predicted_crf)
        self._damper = (MotionDamper(damping, model) if damping is not None and MotionDamper.applies_to(model)
                        else None)
        self.last_damping: DampingChoice | None = None  # the newest frame's choice (None: not tried)
        self._predict_next = False  # the keyframe asked for is a closed-loop refresh
        self._refresh_motion = None  # the motion of the frame the next keyframe is taken from
        self.always_predict = False  # every refresh predicted, whatever it costs (drift benchmarks)
        self.last_refresh = None  # the newest refresh coded both ways (a RefreshChoice)
        self._next_keyframe_reason = "stream start"
        self.last_keyframe_reason = ""  # why the newest keyframe was sent (a call's viewer shows it)
        # Reference patches need the receiver's state too: its keyframe and patches.
        self.patches = patches and model.supports_patches
        # Patches are small crops of the mouth and eyes: WebP also when keyframes are AV1 (an AV1
        # encoder per patch would cost ~70 ms; each patch packet names its own codec).
        patch_codec = "webp" if keyframe_codec == "av1" else keyframe_codec
        self._patch_sender = (PatchSender(model, patch_codec, patch_quality, patch_kbps)
                              if self.patches else None)
        self.patches_paused = False  # pause_patches
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
            width=model.frame_size[0],
            height=model.frame_size[1],
            family=int(model.family),
            expression_count=model.layout.expression_count,
            timebase=self.timebase,
            quality=self.quality,
            intra_period=self.intra_period,
            quant_table=self.table,
            keyframe_codec=KEYFRAME_CODEC_IDS[self.keyframe_codec],
            flags=(int(HeaderFlags.UNTRAINED) if model.untrained else 0)
            | (int(HeaderFlags.WHOLE_FRAME) if model.whole_frame else 0),
            frame_rate_millihz=int(round(self.frame_rate * 1000)),
            reference_slots=self.references,
        )

    def header(self) -> bytes:
        """The stream header, sent once before any packet (and again to a rejoining peer)."""
        return self.stream_header().pack()

    def request_keyframe(self, reason: str = "requested", *, restart: bool = False,
                         refresh: bool = False) -> None:
        """Send a keyframe of the next frame (start of call, receiver request, face moved);
        ``reason`` is recorded with it (``last_keyframe_reason``, ``stats.keyframe_reasons``).
        ``restart``: the receiver holds no keyframe fit to render from (a new stream, back from
        H.264, a new crop box); with the keyframe worker, frames send no motion until it is out.
        ``refresh``: the receiver holds the current reference (the closed loop's refreshes): the
        keyframe may be predicted from it (``predicted_refresh``); any other request is whole."""
        if not self._keyframe_requested:
            self._next_keyframe_reason = reason
        self._keyframe_requested = True
        self._predict_next = refresh and not restart
        if restart:
            self._restart_from = self._seq
            # A fresh start: the receiver's references no longer count (a new Decoder, or
            # stale ones), so the next keyframe is used at once.
            self._memory.clear()
            self._current_slot, self._local_source = None, None
            self._generation += 1

    def references_held(self, held: dict[int, int]) -> None:
        """The receiver reports the references it holds: slot -> its keyframe's frame (a call's
        ``HeldReferences``). Applied at the next ``encode`` (thread-safe: the call's loop
        reports while its encode thread runs)."""
        self._report = dict(held)

    @property
    def current_reference(self) -> int | None:
        """The slot the frames warp from now (None before a keyframe)."""
        return self._current_slot

    @property
    def held_references(self) -> list[SentReference]:
        """The references the sender counts the receiver as holding."""
        return self._memory.held()

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

    def set_intra_period(self, frames: int) -> None:
        """Make every ``frames``-th motion packet intra from now on (a lossy link: a lost packet
        then costs at most that many frames, without waiting for the receiver's request).
        The header's ``intra_period`` stays as sent: receivers never rely on it."""
        self._motion.intra_period = max(1, int(frames))

    def pause_patches(self, paused: bool) -> None:
        """Stop (or resume) sending reference patches, e.g. on a link too slow for them; the
        patches the receiver already holds stay valid."""
        self.patches_paused = paused

    def request_intra(self) -> None:
        """Make the next motion packet absolute (the receiver lost one; no keyframe needed)."""
        self._motion.force_intra()

    def encode(self, frame: np.ndarray, timestamp: float | None = None) -> list[bytes]:
        """One RGB picture (H×W×3 uint8: a square face crop, or the whole frame for a model
        ``at_size(..., whole_frame=True)``), resized to the model's ``frame_size``, at
        ``timestamp`` seconds -> its packets.

        Without a timestamp, frames are taken to be evenly spaced at the frame rate."""
        if timestamp is None:
            timestamp = self._seq / self.frame_rate
        crop = fit_frame(frame, self.model.frame_size)
        seq = self._seq
        self._seq += 1
        ticks = max(0, int(round(timestamp * self.timebase)))
        vector = self._tracker.motion(crop)
        worker = self._worker
        # A keyframe the worker finished goes out before this frame's motion, which it serves.
        coded = worker.take() if worker is not None else None
        packets = [] if coded is None else self._coded_out(coded)
        if self._keyframe_requested and not (worker is not None and worker.busy):
            predict = self._predict_next and self._local_source is not None and self.predicted_refresh
            job = self._keyframe_job(crop, seq, ticks, copy=worker is not None, vector=vector)
            plan = self._refresh_plan() if predict else None
            if worker is None:
                packets.append(self._keyframe_out(code_keyframe(job)) if plan is None
                               else self._choice_out(job, plan, self._code_refresh(plan, job)))
            elif plan is None:
                worker.submit(job)
            else:
                self._refresh_coding = True
                worker.submit(job, functools.partial(self._coded_refresh, plan))
        self._apply_report()
        if self._restart_from is not None:
            self.stats.skipped += 1  # the receiver could render nothing from this motion
            return packets
        # The motion as the receiver would decode it undamped: the closed loop measures the
        # turn and tries keyframes with it (a new reference would be driven by it).
        wanted = self._motion.preview(vector)
        coded = self._damped(crop, vector, wanted)
        intra, payload = self._motion.encode_vector(coded, seq)
        packet = self._framer.pack(seq, ticks, intra, payload, reference=self._current_slot)
        self.last_reference = self._current_slot  # the slot this frame's motion warps from
        decoded = self._motion.last_decoded
        self._note_use(seq, wanted)
        if self._patch_sender is not None and self._local_source is not None and decoded is not None \
                and not self.patches_paused and not self._refresh_coding:
            # Before the motion packet: they apply to this frame, and belong to its reference.
            sender = self._patch_sender
            packets += sender.packets(self._local_source, crop, decoded, seq, ticks, timestamp,
                                      reference=self._current_slot or 0)
            self.stats.patches, self.stats.patch_bytes = sender.sent, sender.sent_bytes
            self.stats.patches_over_budget = sender.over_budget
        packets.append(packet)
        self.stats.frames += 1
        self.stats.motion_packets += 1
        self.stats.motion_bytes += len(packet)
        self.stats.intra_packets += int(intra)
        if self._loop is not None:
            alternatives = [Alternative(ref.slot, ref.source, ref.pose) for ref in self._memory.held()
                            if ref.slot != self._current_slot and ref.source is not None]
            for event in self._loop.check(seq, crop, vector, decoded, self._local_source,
                                          keyframe_pending=self.keyframe_pending,
                                          alternatives=alternatives, wanted=wanted):
                self._act_on(event)
            self.stats.last_rebuild_error = self._loop.last_error
        return packets

    def _damped(self, crop: np.ndarray, vector: np.ndarray, wanted: np.ndarray) -> np.ndarray:
        """The motion to code for this frame: the tracker's ``vector``, or a damped motion
        where the sender's render of that beats the undamped one's (``codec.damping``)."""
        self.last_damping = None
        if self._damper is None or self._local_source is None or not np.all(np.isfinite(wanted)):
            return vector
        choice = self._damper.choose(self._local_source, crop, wanted, self._motion.preview)
        self.stats.damping_tried = self._damper.tried
        if choice.undamped_error is not None:
            self.last_damping = choice
        if not choice.damped:
            return vector
        self.stats.damped[choice.label] = self.stats.damped.get(choice.label, 0) + 1
        return choice.motion

    def _keyframe_job(self, crop: np.ndarray, seq: int, ticks: int, copy: bool,
                      vector: np.ndarray | None = None) -> KeyframeJob:
        """The keyframe asked for, taken now: the frame the closed loop tried and chose (one
        frame back), else this one (``copy``: the worker's own copy of the caller's crop).
        Its frame's motion (decoded one frame back, else this frame's ``vector``) is kept for
        a predicted refresh."""
        chosen = self._loop.take_keyframe() if self._loop is not None else None
        self._refresh_motion = self._motion.last_decoded if chosen else vector
        self._predict_next = False
        image, info = (chosen.crop, chosen.info) if chosen else (crop, self._tracker.keyframe_info(crop))
        job = KeyframeJob(seq, ticks, image.copy() if copy and not chosen else image, info,
                          self._next_keyframe_reason, self.keyframe_codec, self.keyframe_quality,
                          self.model.frame_size,
                          decode=self._loop is not None or self.patches or self.predicted_refresh)
        self._keyframe_requested = False
        self._next_keyframe_reason = "requested"
        return job

    def _keyframe_out(self, coded: CodedKeyframe) -> bytes:
        """The packet of a coded keyframe, with the sender's record of what the receiver holds."""
        job = coded.job
        memory = self._memory
        slot = memory.slot_for_new(self._current_slot, None)
        keyframe = KeyframePacket(seq=job.seq, timestamp=job.ticks, codec_id=KEYFRAME_CODEC_IDS[job.codec],
                                  image_bytes=coded.data, info=job.info, slot=slot)
        return self._reference_out(job, keyframe.pack(), slot, coded.received)

    def _refresh_plan(self) -> RefreshPlan | None:
        """A closed-loop refresh predicted from the reference the frames warp from now, when
        the receiver holds it (a call: has reported it) and the frame's motion is known; None:
        the refresh goes out whole."""
        motion = self._refresh_motion
        base = self._memory.get(self._current_slot)
        width, height = self.model.frame_size
        if (motion is None or not np.all(np.isfinite(motion)) or base is None or not base.received
                or self._local_source is None or width % 2 or height % 2):  # (x264's 4:2:0 wants even sides)
            return None
        return RefreshPlan(base.slot, base.seq, self._local_source, np.array(motion, copy=True),
                           self._memory.slot_for_new(self._current_slot, None), self._generation)

    def _code_refresh(self, plan: RefreshPlan, job: KeyframeJob) -> RefreshChoice:
        """The refresh coded whole and predicted (pure: the keyframe worker's thread may run it)."""
        return code_refresh(self.model, plan.source, plan.base_slot, plan.base_seq, job, plan.motion,
                            slot=plan.slot, crf=self.predicted_crf, always=self.always_predict)

    def _coded_refresh(self, plan: RefreshPlan, job: KeyframeJob) -> CodedRefresh:
        return CodedRefresh(job, plan, self._code_refresh(plan, job))

    def _coded_out(self, coded: CodedKeyframe | CodedRefresh) -> list[bytes]:
        """The packet of what the keyframe worker finished. A predicted refresh whose base the
        receiver no longer holds (it reported otherwise, or the stream restarted) would only
        make it ask for a keyframe: dropped, and a whole one asked for."""
        if isinstance(coded, CodedKeyframe):
            return [self._keyframe_out(coded)]
        self._refresh_coding = False
        plan, choice = coded.plan, coded.choice
        base = self._memory.get(plan.base_slot)
        if plan.generation != self._generation or (
                choice.predicted and (base is None or base.seq != plan.base_seq or not base.received)):
            self.stats.predicted_dropped += 1
            log.info("predicted refresh of frame %d dropped: its base (frame %d) is no longer held",
                     coded.job.seq, plan.base_seq)
            if plan.generation == self._generation:
                self.request_keyframe(coded.job.reason)
            return []
        return [self._choice_out(coded.job, plan, choice)]

    def _choice_out(self, job: KeyframeJob, plan: RefreshPlan, choice: RefreshChoice) -> bytes:
        """A closed-loop refresh coded both ways goes out (the predicted packet when it is
        smaller at about the same quality); either fills the slot a new keyframe would."""
        self.last_refresh = choice
        self.stats.refresh_choices.append((job.seq, choice.predicted_bytes, choice.whole_bytes, choice.predicted))
        self.stats.predicted_keyframes += int(choice.predicted)
        return self._reference_out(job, choice.packet, plan.slot, choice.received)

    def _reference_out(self, job: KeyframeJob, packet: bytes, slot: int, received: np.ndarray | None) -> bytes:
        """A keyframe packet (whole or predicted) into ``slot`` goes out: the sender's record of
        what the receiver holds."""
        memory = self._memory
        self._framer.keyframe(slot)  # the slot a compact intra packet now implies
        # Exactly what the receiver will hold: the decoded image, not the crop.
        source = None if received is None else self.model.prepare_source(received, job.info)
        current = memory.get(self._current_slot)
        memory.sent(slot, job.seq, source)
        # Warp from it at once, unless the current reference serves until the receiver reports
        # the new one. That holds also while the current one is itself unreported: it was sent
        # earlier on the same ordered, reliable channel, so it arrives first, whereas motion on
        # the audio packets can overtake a keyframe queued behind a slow link.
        now = not memory.acknowledged or current is None or current.slot == slot
        if now:
            self._current_slot, self._local_source = slot, source
        self.stats.keyframe_slots.append(slot)
        if self._loop is not None:
            self._loop.keyframe_sent(job.seq, len(packet), current=now)
        self.stats.keyframes += 1
        self.stats.keyframe_bytes += len(packet)
        self.last_keyframe_reason = job.reason
        self.stats.keyframe_reasons.append((job.seq, job.reason))
        if self._restart_from is not None and job.seq >= self._restart_from:
            self._restart_from = None
        # A fresh keyframe is a natural resync point for the motion chain too.
        self._motion.force_intra()
        return packet

    def _apply_report(self) -> None:
        """The receiver's newest report of its references (a call): newly held keyframes
        become usable, the newest of them current (the loop sent it for a reason)."""
        report, self._report = self._report, None
        if report is None:
            return
        memory = self._memory
        newly = memory.report(report)
        current = memory.get(self._current_slot)
        if current is None or not current.received:
            held = memory.held()
            if not held:
                return  # nothing to warp from: the receiver asks for a keyframe, or one is on its way
            newly = newly or [max(held, key=lambda ref: ref.last_used).slot]
        if newly:
            newest = max((memory.slots[k] for k in newly), key=lambda ref: ref.seq)
            self._use(newest)

    def _use(self, ref: SentReference) -> None:
        """Warp from held reference ``ref`` from the next motion packet on."""
        if ref.slot == self._current_slot:
            return
        self._current_slot, self._local_source = ref.slot, ref.source
        if self._loop is not None:
            self._loop.reference_changed(ref.seq, ref.pose)

    def _note_use(self, seq: int, decoded: np.ndarray | None) -> None:
        """This frame warps from the current reference; a keyframe's pose is its frame's motion."""
        ref = self._memory.get(self._current_slot)
        if ref is not None:
            ref.last_used = seq
        if decoded is not None:
            for ref in self._memory.slots:
                if ref is not None and ref.pose is None and seq >= ref.seq:
                    ref.pose = decoded.copy()

    def _act_on(self, event: LoopEvent) -> None:
        if event.kind == "switch":
            ref = self._memory.get(event.slot)
            if ref is not None and ref.received:
                ref.uses += 1
                self.stats.switches.append((event.seq, ref.slot))
                log.info("reference switch at frame %d: %s", event.seq, event.why)
                self._use(ref)
        elif event.kind == "fallback":
            self.stats.fallbacks.append((event.seq, event.why))
            log.info("keyframes stopped helping at frame %d: %s", event.seq, event.why)
        else:
            self.stats.refreshes.append((event.seq, event.why))
            log.info("keyframe refresh at frame %d: %s", event.seq, event.why)
            self.request_keyframe(event.why, refresh=True)

    def probe(self, frame: np.ndarray) -> str | None:
        """While in ``fallback`` (a call sends H.264): would a keyframe of the camera hold now?
        Why, once one would (:meth:`codec.refresh.RefreshLoop.probe`), and a keyframe is
        requested; None meanwhile. Probed frames are not sent."""
        if self._loop is None or self._loop.fallback is None:
            return None
        why = self._loop.probe(fit_frame(frame, self.model.frame_size))
        if why is not None:
            self.stats.returns.append((self._seq, why))
            self.request_keyframe(f"back from fallback: {why}")
        return why
