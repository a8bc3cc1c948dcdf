"""Signaling for two-party calls: rooms of two, a shared-secret token, offer/answer relay.

A call needs the two peers to find each other and swap WebRTC session descriptions before
any media flows. ``SignalingServer`` (aiohttp, ``/ws`` + ``/health``) pairs peers by room
name, gives them roles ("offer" / "answer"), exchanges their ``Capabilities`` (weights
hash, render speed, codecs) and relays their messages verbatim. ``SignalingClient`` is a
peer's side of that; ``InMemorySignaling.pair`` gives two joined in-process endpoints with
the same ``SignalingChannel`` interface for loopback calls and tests. ``signaling.rtc``
holds the aiortc helpers (no STUN, loopback candidates, SDP <-> dict).

Run a server with ``facecodec serve-signaling`` or ``python -m signaling``.

The server, client and aiortc helpers are imported lazily, so ``import signaling`` (the
errors and messages) needs neither aiohttp nor aiortc.
"""

from __future__ import annotations

from typing import Any

from signaling.errors import (
    AloneTimeoutError,
    BadTokenError,
    MalformedMessageError,
    MessageTooLargeError,
    NoPeerError,
    NotJoinedError,
    PeerLeftError,
    RateLimitedError,
    RoomFullError,
    ServerFullError,
    SignalingClosedError,
    SignalingError,
    SignalingTimeoutError,
    TooManyConnectionsError,
    TooManyRoomsError,
)
from signaling.messages import Capabilities, validate_message

_LAZY = {
    "SignalingServer": "signaling.server",
    "SignalingClient": "signaling.client",
    "SignalingChannel": "signaling.client",
    "InMemorySignaling": "signaling.client",
    "InMemoryEndpoint": "signaling.client",
    "new_peer_connection": "signaling.rtc",
    "allow_loopback_candidates": "signaling.rtc",
    "sdp_to_dict": "signaling.rtc",
    "dict_to_sdp": "signaling.rtc",
}

__all__ = [
    "AloneTimeoutError", "BadTokenError", "Capabilities", "MalformedMessageError", "MessageTooLargeError", "NoPeerError",
    "NotJoinedError", "PeerLeftError", "RateLimitedError", "RoomFullError", "ServerFullError",
    "SignalingClosedError", "SignalingError", "SignalingTimeoutError", "TooManyConnectionsError", "TooManyRoomsError", "validate_message",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    # Lazy: aiohttp and aiortc are heavy, and training machines have neither.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'signaling' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
