"""WebRTC peer connections as every peer of the project sets them up (aiortc).

``new_peer_connection`` (no STUN: calls run on a LAN), ``allow_loopback_candidates``
(aioice leaves out 127.0.0.1, which loopback calls and tests need) and the SDP <-> dict
round trip that carries session descriptions through :mod:`signaling`.
"""

from rtc.peer import allow_loopback_candidates, dict_to_sdp, new_peer_connection, sdp_to_dict

__all__ = ["allow_loopback_candidates", "dict_to_sdp", "new_peer_connection", "sdp_to_dict"]
