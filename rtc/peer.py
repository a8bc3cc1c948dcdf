"""aiortc helpers every WebRTC peer of the project uses.

No trickle ICE: aiortc's ``setLocalDescription`` returns only after ICE gathering is
complete and puts every candidate in ``localDescription.sdp``. So one ``offer`` and one
``answer`` message carry everything; ``candidate`` messages exist in the protocol only for
peers (browsers) that trickle.

Usage::

    allow_loopback_candidates()
    pc = new_peer_connection()
    await pc.setLocalDescription(await pc.createOffer())
    await signaling.send(sdp_to_dict(pc.localDescription))
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import aioice.ice
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.jitterbuffer import JitterBuffer
from aiortc.utils import uint16_add

from rtc.motion_over_audio import register_motion_extension
from signaling.errors import MalformedMessageError

log = logging.getLogger(__name__)

# (IPv4 wanted?, address) of the loopback interface: what aioice leaves out.
_LOOPBACK = ((True, "127.0.0.1"), (False, "::1"))
_SDP_TYPES = ("offer", "answer", "pranswer", "rollback")


def allow_loopback_candidates() -> None:
    """Make aioice offer loopback addresses as host candidates. Idempotent, process-wide.

    Why: ``aioice.ice.get_host_addresses`` (called by ``Connection.gather_candidates``)
    deliberately drops 127.0.0.1 and ::1. On a machine (or network namespace) whose only
    interface is loopback, both peers then gather no candidates at all and ICE fails, so a
    loopback call or a CI test cannot connect. We wrap the function to append the loopback
    addresses. ``gather_candidates`` looks the name up in the module at call time, so
    replacing the module attribute is enough. Between two real hosts the extra candidate pairs
    just fail their checks and are ignored; loopback addresses reveal nothing about the host.
    """
    current = aioice.ice.get_host_addresses
    if getattr(current, "_facecodec_loopback", False):
        return

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        addresses = list(current(use_ipv4, use_ipv6))
        for ipv4, address in _LOOPBACK:
            if (use_ipv4 if ipv4 else use_ipv6) and address not in addresses:
                addresses.append(address)
        return addresses

    get_host_addresses._facecodec_loopback = True  # type: ignore[attr-defined]
    get_host_addresses.__doc__ = current.__doc__
    aioice.ice.get_host_addresses = get_host_addresses


def new_peer_connection(*, loopback: bool = True) -> RTCPeerConnection:
    """An RTCPeerConnection with no ICE servers.

    aiortc's default is a public Google STUN server, which is unreachable here (and would
    only slow gathering down by its timeout). ``loopback`` also calls
    ``allow_loopback_candidates()`` so two peers on one machine can always connect. Every
    connection offers the motion header extension on audio (:mod:`rtc.motion_over_audio`).
    """
    if loopback:
        allow_loopback_candidates()
    register_motion_extension()  # offered on audio; a peer that does not know it leaves it out
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


def sdp_to_dict(desc: RTCSessionDescription) -> dict[str, Any]:
    """``{"type": "offer"|"answer", "sdp": str}``: also a valid signaling message as is."""
    return {"type": desc.type, "sdp": desc.sdp}


def dict_to_sdp(obj: Any) -> RTCSessionDescription:
    """The inverse of ``sdp_to_dict`` (extra keys ignored); raises MalformedMessageError."""
    if not isinstance(obj, dict):
        raise MalformedMessageError("a session description must be a JSON object")
    kind, sdp = obj.get("type"), obj.get("sdp")
    if kind not in _SDP_TYPES:
        raise MalformedMessageError(f"session description type must be one of {_SDP_TYPES}")
    if not isinstance(sdp, str):
        raise MalformedMessageError("session description needs a string 'sdp'")
    return RTCSessionDescription(sdp=sdp, type=kind)


# How long aiortc's receiver waits for a lost video packet. Its video jitter buffer hands
# frames on in order and stops at a hole until a retransmission fills it or it holds its
# capacity (512 packets) past it, then drops to the newest frame and asks for a keyframe. A
# NACKed packet resent into a full shaper's queue is lost again, and our H.264 sends one to three
# packets a frame at 5–25 frames a second: 512 packets was a 15–24 s freeze in the impairment
# matrix's rate cells (benchmarks.impairment), and 64 packets still up to 12 s at 5 frames a
# second. So the wait is bounded in time: a retransmission that has not come within
# MAX_HOLE_S (NACK, the resend, a queue on the way) is given up on, and the frames after the
# hole go on, with a keyframe request (the decoder needs one after a lost picture). The
# capacity stays large enough for a whole keyframe (~75 kB).
VIDEO_JITTER_PACKETS = 64
MAX_HOLE_S = 1.0


class HoleBoundedJitterBuffer(JitterBuffer):
    """aiortc's video jitter buffer, except that once packets have waited behind a hole for
    ``max_hole_s`` (see MAX_HOLE_S) everything before the newest packet's frame is dropped and
    a keyframe asked for; ``holes_skipped`` counts them."""

    def __init__(self, capacity: int = VIDEO_JITTER_PACKETS, max_hole_s: float = MAX_HOLE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(capacity=capacity, is_video=True)
        self.max_hole_s = float(max_hole_s)
        self.holes_skipped = 0
        self._clock = clock
        self._stalled_since: float | None = None  # when a packet first waited behind a hole

    def add(self, packet: Any) -> tuple[bool, Any]:
        pli, frame = super().add(packet)
        if frame is not None or self._origin is None:
            self._stalled_since = None
            return pli, frame
        span = uint16_add(packet.sequence_number, -self._origin)  # packets from the head to this one
        if span >= self._capacity or all(self._packets[(self._origin + k) % self._capacity] is not None
                                         for k in range(span)):
            self._stalled_since = None  # no hole before it (a late packet, or a frame still coming in)
            return pli, frame
        now = self._clock()
        if self._stalled_since is None:
            self._stalled_since = now
        if now - self._stalled_since < self.max_hole_s:
            return pli, frame
        # Give up on the hole: drop everything before this packet's frame. The frames queued
        # behind the hole are a second old, and they predict from the lost picture: the
        # keyframe asked for is the next picture worth decoding.
        start = span
        while start > 0:
            before = self._packets[(self._origin + start - 1) % self._capacity]
            if before is None or before.timestamp != packet.timestamp:
                break
            start -= 1
        self.remove(start)
        self.holes_skipped += 1
        self._stalled_since = None
        return True, None


def resync_video_sooner(rtp_receiver) -> HoleBoundedJitterBuffer:
    """Give ``rtp_receiver`` (a video RTCRtpReceiver, before media flows) a
    :class:`HoleBoundedJitterBuffer`, so that a hole no retransmission fills costs about
    MAX_HOLE_S of frozen picture, not aiortc's 512 packets."""
    if getattr(rtp_receiver, "_RTCRtpReceiver__kind", None) != "video":
        raise ValueError("resync_video_sooner takes a video RTCRtpReceiver")
    buffer = HoleBoundedJitterBuffer()
    rtp_receiver._RTCRtpReceiver__jitter_buffer = buffer  # aiortc has no public hook
    return buffer


def quiet_closed_transport_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Log at debug level, not as a traceback, the ``ConnectionError`` that aiortc's own
    background tasks raise when the peer's transport closed under them (an SCTP flush of data
    still queued at hang-up on a slow link: "Cannot send encrypted data, not connected").
    The call has already ended then, and said why; any other unretrieved error still goes to
    asyncio's default handler."""
    def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        exc = context.get("exception")
        if isinstance(exc, ConnectionError) and "not connected" in str(exc):
            log.debug("a transport task stopped after the connection closed: %s", exc)
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
