"""Signaling for two-party calls: rooms of two, a shared-secret token, offer/answer relay.

A call needs the two peers to find each other and swap WebRTC session descriptions before
any media flows. ``SignalingServer`` (aiohttp, ``/ws`` + ``/health``) pairs peers by room
name, gives them roles ("offer" / "answer"), exchanges their ``Capabilities`` (weights
hash, render speed, codecs) and relays their messages verbatim. ``SignalingClient`` is a
peer's side of that; ``InMemorySignaling.pair`` gives two joined in-process endpoints with
the same ``SignalingChannel`` interface for loopback calls and tests. The WebRTC peer
connections themselves are set up by :mod:`rtc`.

Run a server with ``facecodec serve-signaling`` or ``python -m signaling``.

The server and client are imported lazily, so ``import signaling`` (the errors and
messages) needs no aiohttp.
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
}

__all__ = [
    "AloneTimeoutError", "BadTokenError", "Capabilities", "MalformedMessageError", "MessageTooLargeError", "NoPeerError",
    "NotJoinedError", "PeerLeftError", "RateLimitedError", "RoomFullError", "ServerFullError",
    "SignalingClosedError", "SignalingError", "SignalingTimeoutError", "TooManyConnectionsError", "TooManyRoomsError", "validate_message",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    # Lazy: aiohttp is heavy, and training machines have none.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'signaling' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
