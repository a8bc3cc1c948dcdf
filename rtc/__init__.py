"""WebRTC peer connections as every peer of the project sets them up (aiortc).

``new_peer_connection`` (no STUN: calls run on a LAN), ``allow_loopback_candidates``
(aioice leaves out 127.0.0.1, which loopback calls and tests need) and the SDP <-> dict
round trip that carries session descriptions through :mod:`signaling`.

They load on first use: :mod:`rtc.wire_cost` (the on-wire arithmetic a benchmark needs)
imports without aiortc.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["allow_loopback_candidates", "dict_to_sdp", "new_peer_connection", "sdp_to_dict"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("rtc.peer"), name)
    raise AttributeError(f"module 'rtc' has no attribute {name!r}")
