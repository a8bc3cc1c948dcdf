"""One peer of ``facecodec call``: join a room through the signaling server, call whoever
comes, and rejoin after the peer leaves or the server restarts, until the call's time is up."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from app.call import DURATION_REACHED, SOURCE_ENDED, WAIT_S, Call, CallEnded, CallOptions, NobodyJoined
from app.mode_choice import local_capabilities
from signaling.client import SignalingClient
from signaling.errors import SignalingClosedError, SignalingError, SignalingTimeoutError
from signaling.messages import Capabilities

if TYPE_CHECKING:
    from aiortc import MediaStreamTrack

    from codec.families.base import TalkingHeadModel
    from receiver.sinks import Mp4Recorder

log = logging.getLogger(__name__)
events = logging.getLogger("facecodec.call")  # the few lines a user of `facecodec call` sees


@dataclass
class CallReport:
    calls: int = 0
    seconds: float = 0.0
    end_reasons: list | None = None
    sender: dict | None = None
    receiver: dict | None = None
    receiver_figures: dict | None = None  # ReceiverSession.call_figures() of the last call
    wire: dict | None = None  # what this side sent, by kind, when the call metered it
    wire_seconds: float = 0.0  # over how long the wire was metered
    recording: dict | None = None
    h264: dict | None = None  # the H.264 track's counters (sender.media_tracks.H264TrackStats)
    # [s after connecting, length s or None while still stalled]: the peer sent video and no
    # picture came for app.call.NO_PICTURE_S or more (every call of the run)
    picture_stalls: list = field(default_factory=list)


async def join_room(url: str, token: str, room: str, *, retries: int = 5) -> SignalingClient:
    """Join ``room`` unannounced (``signaling.client.SignalingClient``, ``ready=False``).

    Done before the model loads, so a wrong token, a full room or an unreachable server
    fails in about a second with its typed error (BadTokenError, RoomFullError, ...); the
    seat is held meanwhile, and the peer learns of this one when :func:`run_peer` announces
    its capabilities."""
    client = SignalingClient(url, token, room, Capabilities(), ready=False)
    try:
        await client.connect(retries=retries, backoff=0.5)
    except BaseException:
        await client.close()  # its HTTP session too: no "unclosed session" noise after the error
        raise
    return client


async def run_peer(*, url: str = "", token: str = "", room: str = "", model: TalkingHeadModel | None,
                   frames: Iterator[np.ndarray] | None, audio: MediaStreamTrack | None,
                   options: CallOptions, duration: float, wait: float = WAIT_S,
                   client: SignalingClient | None = None, recorder: Mp4Recorder | None = None,
                   show: Callable[[np.ndarray, float], None] | None = None, rejoin: bool = True,
                   connect_retries: int = 20,
                   on_call: Callable[[Call], None] | None = None) -> CallReport:
    """Wait up to ``wait`` s for the peer in ``room``, then call it for ``duration`` s from the
    moment the first call connects (the wait and the set-up do not count), rejoining after
    the peer leaves or the server restarts within that time.

    ``client``: a connection :func:`join_room` made, announced here; without one this joins
    ``room`` on ``url``. Raises :class:`NobodyJoined` when no one joined within ``wait`` s,
    :class:`CallEnded` when a peer came but no call connected, and the server's refusals
    (BadTokenError, RoomFullError, ...) as typed signaling errors."""
    capabilities = local_capabilities(model, options.fps,
                                      size=options.resolution if options.crop is None else None)
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
            call = Call(client, model=model, frames=frames, audio=audio, options=options,
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
            report.picture_stalls += call.picture_stalls
            if call.sender_session is not None:
                report.sender = asdict(call.sender_session.stats)
            if call.receiver_session is not None:
                report.receiver = call.receiver_session.snapshot()
                report.receiver_figures = call.receiver_session.call_figures()
            if call.h264_track is not None:
                report.h264 = asdict(call.h264_track.stats)
            if call.wire_meter is not None:
                report.wire = call.wire_meter.snapshot()
                report.wire_seconds = round(time.monotonic() - call.connected_at, 3)
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
