"""A one-way call inside one process, over real WebRTC on this machine: the demo, the latency
benchmark and the call tests use it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from app.call import Call, CallOptions
from app.mode_choice import local_capabilities
from signaling.client import InMemorySignaling

if TYPE_CHECKING:
    from aiortc import MediaStreamTrack

    from rtc.wire_meter import WireMeter

    from codec.families.base import TalkingHeadModel
    from receiver.sinks import Mp4Recorder


async def run_loopback(sender_model: TalkingHeadModel | None, receiver_model: TalkingHeadModel | None,
                       frames: Iterator[np.ndarray], *, seconds: float, options: CallOptions,
                       receiver_options: CallOptions | None = None, audio: MediaStreamTrack | None = None,
                       show: Callable[[np.ndarray, float], None] | None = None,
                       recorder: Mp4Recorder | None = None,
                       on_sent_frame: Callable[[np.ndarray, float], None] | None = None,
                       started: Callable[[Call, Call], Awaitable[None]] | None = None,
                       finished: Callable[[Call, Call], Awaitable[None]] | None = None,
                       timeout: float | None = None) -> tuple[Call, Call]:
    """Send ``frames`` from peer A to peer B over real WebRTC on this machine (in-memory
    signaling), for ``seconds`` of media; returns the two closed :class:`Call` objects
    (the sending one, the receiving one).

    ``started(a, b)`` runs once B's receiving session exists, before A sends (hooks that tap
    or inject); ``finished(a, b)`` runs after A's last frame, before the goodbye (drain the
    receiver, read counters)."""
    size = options.resolution if options.crop is None else None  # whole frames of up to this
    sender_caps = local_capabilities(sender_model, options.fps, size=size)  # measures the render rate
    receiver_caps = sender_caps if receiver_model is sender_model else \
        local_capabilities(receiver_model, options.fps, size=size)
    a, b = InMemorySignaling.pair(sender_caps, receiver_caps)
    sending = Call(a, model=sender_model, frames=frames, audio=audio, options=options,
                   on_sent_frame=on_sent_frame)
    receiving = Call(b, model=receiver_model, frames=None,
                     options=receiver_options or CallOptions(fps=options.fps), show=show, recorder=recorder)
    receiving_run = asyncio.ensure_future(receiving.run(duration=None))
    try:
        if started is not None:
            while receiving.receiver_session is None:  # Call.run builds its session first thing
                await asyncio.sleep(0.01)
            await started(sending, receiving)
        await asyncio.wait_for(sending.run(duration=seconds), timeout)
        if finished is not None:
            await finished(sending, receiving)
        await sending.say_goodbye("loopback done")
        await asyncio.wait_for(receiving_run, 10.0)
    finally:
        await sending.close()
        await receiving.close()
    return sending, receiving


async def meter_once_connected(call: Call) -> WireMeter:
    """A :class:`rtc.wire_meter.WireMeter` on ``call``'s connection, as soon as it is up (the
    call's steady state: ICE and DTLS set-up are not counted)."""
    from rtc.wire_meter import WireMeter

    while not call.connected:
        await asyncio.sleep(0.005)
    return WireMeter(call.pc, [call.control, call.motion])
