"""The sender's closed loop: keyframe refresh, and the fallback to H.264 and back.

The :class:`~codec.api.Encoder` consults a :class:`RefreshLoop` on every frame it encodes
(:meth:`RefreshLoop.check`) and on every frame it only probes while a call sends H.264
(:meth:`RefreshLoop.probe`). The loop renders what the receiver will show, scores it
against the real crop and answers with what to do (:class:`LoopEvent`); the Encoder sends
the keyframes and keeps the stream's record (``EncoderStats``).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from codec.families.base import MotionTracker, TalkingHeadModel
from codec.keyframe import encode_keyframe, received_keyframe
from codec.rebuild_score import rebuild_error
from codec.reference_memory import pose_distance

__all__ = ["Alternative", "CheckedFrame", "HeldKeyframe", "LoopEvent", "Probe", "RefreshLoop", "RefreshPolicy",
           "TrialKeyframe"]


@dataclass(frozen=True)
class RefreshPolicy:
    """Closed-loop keyframe refresh: the sender renders what the receiver will show (the
    decoded keyframe and the quantized motion, through the same model, without the refiner)
    and scores it against the real crop with :func:`codec.rebuild_score.rebuild_error`.

    The rule asks the question a refresh answers: would the frame at hand, sent as the
    keyframe, have rebuilt the last seconds better than the keyframe the receiver holds? Every
    ``candidate_every`` frames the sender takes the current crop as a trial keyframe, renders
    from it the frames of the last ``window_s`` seconds (every ``window_step``-th, leaving out
    the last ``window_gap_s``, which any neighbour rebuilds well) and compares their mean error
    with what the held keyframe gave on the same frames. When the trial does better by
    ``gain`` or more, the trial frame itself is sent. Recent frames stand in for the coming
    ones: a still talker whose keyframe already serves is left alone, whatever its error; a
    keyframe caught mid-blink or mid-word is replaced by one that serves the talker's usual
    face; a turned head or a new scene is caught as soon as the new view has lasted long
    enough to be worth a keyframe. ``gain`` is the rate knob. (An error threshold refreshes
    forever on a noisy webcam whose rebuild is never sharp; a debt of error above the floor
    right after the keyframe, the rule before this one, refreshes a steady talker whose error
    plateaus, and sends whatever frame is at hand: benchmarks.refresh_oracle and README.)

    gain: mean rebuild error over the window a trial keyframe must save (lower: more keyframes);
    window_s / window_gap_s / window_step / candidate_every: the trial's frames and how often
        one is tried (sender CPU: one source and window_s·fps/window_step warps per trial);
    jump: ... or refresh at once when the error stands this far above the first check after
        the keyframe for ``hold_checks`` checks (a cut, a light switched on: no need to wait);
    pose_limit_deg: ... or when yaw or pitch stays this far from the keyframe's for
        ``hold_checks`` checks (a turned head shows sides of the face the keyframe lacks);
    turn_window: while turned, the trial is scored on the window's turned frames only (those
        beyond ``pose_limit_deg``, older than ``window_gap_s``), not on the whole window, whose
        frames from before the turn any trial from the turned view rebuilds worse: the new view
        is sent once the turn has lasted ~0.4 s instead of most of the window;
    check_every: render and score every N-th frame (sender CPU: one warp, ~3 ms at 256 px);
    min_interval_s: never two keyframes closer than this;
    max_keyframe_kbps: keyframe bits per second over the stream so far stay under this,
        after the first keyframe and one refresh of credit;
    fallback_refreshes / fallback_window_s: when that many refreshes in a row each come due
        within this many seconds of the keyframe before, a keyframe no longer helps (a hand
        over the face, someone walking through): the Encoder says so in ``fallback`` and a
        call switches to H.264; so does a face missing for ``face_lost_frames`` frames;
    probe_s / probe_excess: while in fallback the sender tries a local keyframe (nothing is
        sent) and returns when, for ``probe_s``, the rebuild's error stays on average less
        than ``probe_excess`` above its first check and a face is seen;
    switch_gain / switch_candidates / switch_pose_margin_deg: with K > 1 reference slots
        (:mod:`codec.reference_memory`), at every trial the loop also renders the trial's
        frames from up to ``switch_candidates`` other held references, the nearest by head
        pose among those no more than ``switch_pose_margin_deg`` further from the frame's
        pose than the current one (the cheap prefilter). It warps from one of them instead
        when it rebuilds the frames better by ``switch_gain`` (a switch costs one extended
        motion packet, so any real gain pays), and a trial keyframe is sent only when it
        beats the best held reference by ``gain``: a head that turns away and back reuses
        the reference it already sent.
    """

    gain: float = 0.1
    window_s: float = 2.0
    window_gap_s: float = 0.2
    window_step: int = 5
    candidate_every: int = 5
    jump: float = 0.45
    pose_limit_deg: float = 25.0
    turn_window: bool = True
    hold_checks: int = 3
    check_every: int = 1
    min_interval_s: float = 1.0
    max_keyframe_kbps: float = 16.0
    fallback_refreshes: int = 3
    fallback_window_s: float = 2.0
    face_lost_frames: int = 25
    probe_s: float = 1.0
    probe_excess: float = 0.25
    switch_gain: float = 0.01
    switch_candidates: int = 2
    switch_pose_margin_deg: float = 5.0


@dataclass(frozen=True)
class CheckedFrame:
    """A frame the loop scored since the last keyframe: an entry of the trial window."""

    seq: int
    crop: np.ndarray  # S×S×3 uint8 RGB, the loop's own copy
    motion: np.ndarray  # the decoded motion vector, undamped (codec.damping): what a new reference renders it with
    error: float  # its rebuild error from the held keyframe
    turn: float = 0.0  # the larger of |yaw|, |pitch| from the held keyframe's (degrees)


@dataclass
class HeldKeyframe:
    """What the loop has seen since the keyframe the receiver holds (new with each keyframe)."""

    seq: int | None = None  # its frame; None before the first
    pose: np.ndarray | None = None  # yaw, pitch of the first decoded motion from it
    floor: float | None = None  # the first check's rebuild error after it
    turned_checks: int = 0  # checks in a row with the head beyond pose_limit_deg
    jump_checks: int = 0  # checks in a row with the error beyond floor + jump
    window: collections.deque[CheckedFrame] = field(default_factory=collections.deque)  # within window_s


@dataclass(frozen=True)
class TrialKeyframe:
    """A crop tried as the keyframe: the mean rebuild error of the window's frames from the
    held keyframe and from this crop, and the keyframe info it would be sent with."""

    crop: np.ndarray  # S×S×3 uint8 RGB
    info: bytes
    held: float
    fresh: float
    first: int = 0  # the oldest frame it was scored on
    turned: bool = False  # scored on the turned frames only (RefreshPolicy.turn_window)


@dataclass
class Probe:
    """A local keyframe tried while in fallback (coded and decoded; nothing is sent)."""

    source: Any  # the model's source state of the decoded keyframe
    first: int  # the probe clock's frame it was made at
    floor: float | None = None  # the first check's error after it
    debt: float = 0.0  # error-seconds above the floor so far


@dataclass(frozen=True)
class LoopEvent:
    """What the loop decided on a frame: send a keyframe (``refresh``), warp from another
    held reference from the next frame on (``switch``, to ``slot``), or keyframes stopped
    helping (``fallback``: a call switches to H.264)."""

    kind: Literal["refresh", "switch", "fallback"]
    seq: int
    why: str
    slot: int | None = None


@dataclass(frozen=True)
class Alternative:
    """A held reference other than the current one, which the loop may switch to."""

    slot: int
    source: Any  # its source state, as the receiver holds it
    pose: np.ndarray | None  # the decoded motion vector of its keyframe's frame


class RefreshLoop:
    """One stream's closed loop under a :class:`RefreshPolicy`.

    It scores the receiver's picture without the learned refiner: on a CPU the refiner costs
    ~10× the warp per check, and it moves PSNR by 0.05 dB on average on dev
    (benchmarks/results/rd-dev-refiner.json against rd-dev-warp.json).
    """

    def __init__(self, policy: RefreshPolicy, model: TalkingHeadModel, tracker: MotionTracker, *,
                 frame_rate: float, keyframe_codec: str, keyframe_quality: int) -> None:
        self.policy = policy
        self.frame_rate = frame_rate
        self._model = model.plain()
        self._tracker = tracker  # the Encoder's: its face_seen and keyframe_info follow the stream
        self._keyframe_codec = keyframe_codec
        self._keyframe_quality = keyframe_quality
        self.fallback: str | None = None  # why keyframes stopped helping, while they do not
        self.last_error: float | None = None  # the last check's rebuild error
        self._keyframes = 0  # sent so far, and their bytes (the budget)
        self._keyframe_bytes = 0
        self._held = HeldKeyframe()
        self._last_keyframe_seq: int | None = None  # the newest keyframe sent (min_interval_s, budget)
        self.switches = 0  # switches to another held reference
        self._chosen: TrialKeyframe | None = None  # the trial the loop asked to send
        self._quick_refreshes = 0  # refreshes in a row that came due within fallback_window_s
        self._frames_without_face = 0
        self._probe: Probe | None = None
        self._probe_frames = 0  # the probe's clock: probed frames take no sequence number

    def take_keyframe(self) -> TrialKeyframe | None:
        """The trial frame the loop chose to send as the next keyframe (one frame back), once."""
        chosen, self._chosen = self._chosen, None
        return chosen

    def keyframe_sent(self, seq: int, packet_bytes: int, *, current: bool = True) -> None:
        """A keyframe packet of ``packet_bytes`` went out with frame ``seq``; ``current``: the
        frames from now on warp from it (else from the reference held meanwhile, until the
        receiver reports it: :meth:`reference_changed`), and the loop starts over from it."""
        self._keyframes += 1
        self._keyframe_bytes += packet_bytes
        self._last_keyframe_seq = seq
        if current:
            self._held = HeldKeyframe(seq)

    def reference_changed(self, seq: int, pose: np.ndarray | None) -> None:
        """The frames from now on warp from another held reference: the keyframe of frame
        ``seq``, whose decoded motion was ``pose``. The loop starts over from it."""
        self._held = HeldKeyframe(seq, None if pose is None else np.asarray(pose[:2], np.float64).copy())

    def check(self, seq: int, crop: np.ndarray, vector: np.ndarray, decoded: np.ndarray | None,
              source: Any, *, keyframe_pending: bool,
              alternatives: Sequence[Alternative] = (),
              wanted: np.ndarray | None = None) -> list[LoopEvent]:
        """After frame ``seq`` was encoded: its crop, the tracker's motion ``vector``, the
        motion as the receiver decodes it and the receiver's source state (None before a
        keyframe). ``keyframe_pending``: a keyframe is already asked for. ``alternatives``:
        the other references the receiver holds (K > 1). ``wanted``: the tracker's motion as
        the receiver would decode it where the sender coded damped motion instead
        (:mod:`codec.damping`); the turn is measured, and trial keyframes are driven, with it,
        while the error is the rebuild the receiver shows. What to do, in order."""
        events: list[LoopEvent] = []
        if wanted is None:
            wanted = decoded
        if self._held.pose is None and wanted is not None:
            self._held.pose = wanted[:2].copy()
        self._watch_face(vector, seq, events)
        if seq % self.policy.check_every == 0:
            self._check_rebuild(crop, seq, decoded, source, keyframe_pending, events, alternatives, wanted)
        return events

    @property
    def _face_seen(self) -> bool:
        return bool(self._tracker.face_seen)

    def _watch_face(self, vector: np.ndarray, seq: int, events: list[LoopEvent]) -> None:
        """Fallback when the tracker has detected no face for ``face_lost_frames`` frames."""
        lost = np.isnan(vector[:2]).all() or not self._face_seen
        self._frames_without_face = self._frames_without_face + 1 if lost else 0
        if self.fallback is None and self._frames_without_face > self.policy.face_lost_frames:
            self._enter_fallback(seq, f"no face for {self._frames_without_face} frames", events)

    def _enter_fallback(self, seq: int, why: str, events: list[LoopEvent]) -> None:
        self.fallback = why
        self._probe = None
        events.append(LoopEvent("fallback", seq, why))

    def _rebuild_error(self, source: Any, motion: np.ndarray, crop: np.ndarray) -> float:
        return rebuild_error(self._model.render(source, motion[None])[0], crop)

    def _check_rebuild(self, crop: np.ndarray, seq: int, decoded: np.ndarray | None, source: Any,
                       keyframe_pending: bool, events: list[LoopEvent],
                       alternatives: Sequence[Alternative] = (), wanted: np.ndarray | None = None) -> None:
        """Score the receiver's rebuild of this frame; a refresh or switch event when one is due."""
        policy, held = self.policy, self._held
        if source is None or decoded is None or seq == held.seq:
            return  # (the keyframe's own frame rebuilds to itself: the floor is the next one's)
        error = self._rebuild_error(source, decoded, crop)
        self.last_error = error
        if held.floor is None:
            held.floor = error
        wanted = decoded if wanted is None else wanted
        turn = pose_distance(wanted, held.pose) if held.pose is not None else 0.0
        # A copy: fit_square hands back the caller's array, which a camera may fill again.
        held.window.append(CheckedFrame(seq, crop.copy(), wanted.copy(), error, turn))
        while seq - held.window[0].seq > round(policy.window_s * self.frame_rate):
            held.window.popleft()
        held.turned_checks = held.turned_checks + 1 if turn > policy.pose_limit_deg else 0
        held.jump_checks = held.jump_checks + 1 if error - held.floor > policy.jump else 0
        if keyframe_pending:
            return
        turned = held.turned_checks >= policy.hold_checks
        frames = self._trial_frames(seq, turned) if seq % policy.candidate_every == 0 else []
        # Another held reference that rebuilds the trial's frames better (K > 1): free to use.
        alternative = self._best_alternative(wanted, turn, frames, alternatives)
        held_error = float(np.mean([entry.error for entry in frames])) if frames else error
        since = 1e9 if self._last_keyframe_seq is None else (seq - self._last_keyframe_seq) / self.frame_rate
        elapsed = (seq + 1) / self.frame_rate
        # Budget: the first keyframe and one refresh of credit, then max_keyframe_kbps.
        average_keyframe = self._keyframe_bytes / max(self._keyframes, 1)
        budget_bytes = 2 * average_keyframe + policy.max_keyframe_kbps * 1000.0 / 8.0 * elapsed
        blocked = since < policy.min_interval_s or self._keyframe_bytes + average_keyframe > budget_bytes
        switch = alternative is not None and alternative[1] <= held_error - policy.switch_gain
        best = min(held_error, alternative[1]) if switch else held_error
        if not blocked and held.jump_checks >= policy.hold_checks:
            why = f"rebuild error {error:.2f} jumped over the keyframe's first check {held.floor:.3f}"
        elif (not blocked and self._face_seen and frames
              and (trial := self._trial(seq, frames)) is not None
              # A head turned far from the keyframe's pose lowers the bar to any gain: the
              # trial still has to do better, which a frame caught mid-turn (blurred, half
              # way) does not. With K > 1 it must beat the best held reference too.
              and best - trial.fresh >= (0.0 if turned else policy.gain)):
            window = (seq - frames[-1].seq) / self.frame_rate
            of_turn = " of the turn" if trial.turned else ""
            why = ((f"head turned {turn:.0f}° from the keyframe; " if turned else "")
                   + f"this frame rebuilds the last {window:.1f} s{of_turn} better: "
                   f"error {trial.fresh:.3f}, not {best:.3f}"
                   + (f" (reference {alternative[0]})" if switch else ""))
            self._chosen = trial
        elif switch:
            self.switches += 1
            events.append(LoopEvent("switch", seq, f"reference {alternative[0]} rebuilds the last frames "
                                    f"better: error {alternative[1]:.3f}, not {held_error:.3f}",
                                    alternative[0]))
            return
        else:
            return
        self._quick_refreshes = self._quick_refreshes + 1 if since <= policy.fallback_window_s else 0
        if self._quick_refreshes >= policy.fallback_refreshes and self.fallback is None:
            # A call switches to H.264 now; a file (no H.264 in it) goes on refreshing.
            self._chosen = None
            self._enter_fallback(seq, f"{self._quick_refreshes} keyframes in a row each lasted "
                                      f"under {policy.fallback_window_s:g} s", events)
            return
        events.append(LoopEvent("refresh", seq, why))

    def _trial_frames(self, seq: int, turned: bool = False) -> list[CheckedFrame]:
        """The window's frames a trial renders (newest first: every ``window_step``-th,
        leaving out the last ``window_gap_s``); empty when fewer than two. ``turned``: the
        head is turned (``pose_limit_deg``); with ``turn_window`` only the window's turned
        frames, every 2nd, when there are 2 or more."""
        policy, window = self.policy, self._held.window
        gap = round(policy.window_gap_s * self.frame_rate)
        older = [entry for entry in reversed(window) if seq - entry.seq >= gap]
        frames = older[::policy.window_step]
        turned_frames = [entry for entry in older if entry.turn > policy.pose_limit_deg][::2]
        if turned and policy.turn_window and len(turned_frames) >= 2:
            frames = turned_frames
        return frames if len(frames) >= 2 else []

    def _best_alternative(self, decoded: np.ndarray, turn: float, frames: list[CheckedFrame],
                          alternatives: Sequence[Alternative]) -> tuple[int, float] | None:
        """(slot, mean error over ``frames``) of the held reference other than the current
        one that rebuilds them best, among the ``switch_candidates`` nearest by pose that
        pass the prefilter; None when there are none."""
        policy = self.policy
        if not frames or not alternatives or policy.switch_candidates <= 0:
            return None
        near = sorted((pose_distance(decoded, alt.pose), alt.slot, alt) for alt in alternatives
                      if pose_distance(decoded, alt.pose) <= turn + policy.switch_pose_margin_deg)
        best = None
        motions = np.stack([entry.motion for entry in frames])
        for _, _, alt in near[:policy.switch_candidates]:
            rebuilt = self._model.render(alt.source, motions)
            error = float(np.mean([rebuild_error(image, entry.crop) for image, entry in zip(rebuilt, frames)]))
            if best is None or error < best[1]:
                best = (alt.slot, error)
        return best

    def _trial(self, seq: int, frames: list[CheckedFrame]) -> TrialKeyframe | None:
        """The window's newest crop (this frame's) as a trial keyframe, scored on ``frames``
        (:meth:`_trial_frames`).

        The trial source is the crop itself, not its coded image: coding it would cost an
        encode per trial (~100 ms for AV1), and the keyframe codec's loss is small against
        ``gain``."""
        crop = self._held.window[-1].crop
        info = self._tracker.keyframe_info(crop)
        source = self._model.prepare_source(crop, info)
        rebuilt = self._model.render(source, np.stack([entry.motion for entry in frames]))
        fresh = float(np.mean([rebuild_error(image, entry.crop) for image, entry in zip(rebuilt, frames)]))
        held = float(np.mean([entry.error for entry in frames]))
        turned = all(entry.turn > self.policy.pose_limit_deg for entry in frames)
        return TrialKeyframe(crop, info, held, fresh, frames[-1].seq, turned)

    def probe(self, crop: np.ndarray) -> str | None:
        """While in ``fallback`` (a call sends H.264): would a keyframe of the camera hold now?

        Tries a local keyframe (coded and decoded as the receiver would get it; nothing is
        sent) and scores the frames after it as the closed loop does. Returns why, and leaves
        fallback, once the trial keyframe's error has stayed on average less than
        ``probe_excess`` above its first check for ``probe_s`` seconds, with a face in every
        frame; None meanwhile."""
        policy = self.policy
        # Probed frames are not sent: they take no sequence number (the receiver would count
        # the gap as lost packets), only a count of their own for the probe's clock.
        seq = self._probe_frames
        self._probe_frames += 1
        vector = self._tracker.motion(crop)
        if np.isnan(vector).any() or not self._face_seen:
            self._probe = None
            return None
        probe = self._probe
        if probe is None:
            data = encode_keyframe(crop, self._keyframe_codec, self._keyframe_quality)
            decoded = received_keyframe(data, self._keyframe_codec, self._model.frame_size)
            self._probe = Probe(self._model.prepare_source(decoded, self._tracker.keyframe_info(crop)), seq)
            return None
        error = self._rebuild_error(probe.source, vector, crop)
        if probe.floor is None:
            probe.floor = error
        probe.debt += max(0.0, error - probe.floor) / self.frame_rate
        if probe.debt >= policy.probe_excess * policy.probe_s:
            self._probe = None  # this one did not hold: try a fresh one next frame
            return None
        if (seq - probe.first) / self.frame_rate < policy.probe_s:
            return None
        self.fallback, self._probe, self._quick_refreshes, self._frames_without_face = None, None, 0, 0
        return f"a trial keyframe held for {policy.probe_s:g} s ({probe.debt:.2f} error-s)"
