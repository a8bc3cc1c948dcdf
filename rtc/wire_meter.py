"""What one peer puts on the wire, split by what it carries, counted at its UDP sockets.

A packet capture sees SRTP headers in the clear, but the data channel's DTLS records are
encrypted, so a capture cannot tell a motion message from a control message or an SCTP SACK.
This meter counts inside the peer instead: it wraps the send path of the ICE sockets (every
datagram, STUN included) and labels each datagram from what the layer above was sending:

- ``motion`` / ``control`` (or any data channel label): an SCTP DATA chunk of that channel;
- ``sctp``: SCTP housekeeping (SACK, HEARTBEAT, FORWARD-TSN, RECONFIG, ...);
- ``audio`` / ``video``: SRTP packets of this peer's audio / video SSRCs; ``rtcp``: SRTCP;
- ``ice``: STUN (connectivity checks and consent freshness);
- ``dtls``: DTLS records that carry none of the above (handshake, alerts).

Each datagram counts its UDP payload and, for the wire, the IPv4 (20 B) or IPv6 (40 B) header
plus UDP's 8 B. Labels come from the call chain: aiortc's send path runs without yielding
from the DTLS layer down to ``sendto``, so the label set around one send names exactly the
datagrams it produced. aiortc and aioice have no hooks for this; the meter wraps instance
methods (private attributes of both) and :meth:`detach` restores them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from aiortc import RTCPeerConnection
from aiortc.rtp import is_rtcp

from rtc.motion_over_audio import dtls_transport, rtp_ssrc

UDP_HEADER_BYTES = 8
IP_HEADER_BYTES = {4: 20, 6: 40}
_SCTP_DATA = 0


@dataclass
class WireCount:
    packets: int = 0
    payload_bytes: int = 0  # UDP payload
    wire_bytes: int = 0  # with the UDP and IP headers


def _sctp_label(packet: bytes, channels: dict[int, str]) -> str:
    """The label of one SCTP packet (aiortc sends one chunk per packet)."""
    if len(packet) >= 12 + 16 and packet[12] == _SCTP_DATA:
        stream_id = struct.unpack_from("!H", packet, 12 + 8)[0]
        return channels.get(stream_id, f"stream {stream_id}")
    return "sctp"


class WireMeter:
    """Counts every datagram ``pc`` sends, by label. Attach once the connection is up.

    Args:
        pc: a connected RTCPeerConnection.
        channels: its data channels (their labels name the DATA chunks).
    """

    def __init__(self, pc: RTCPeerConnection, channels: Iterable) -> None:
        self.counts: dict[str, WireCount] = {}
        self._label: str | None = None
        self._channels = {c.id: c.label for c in channels if c is not None and c.id is not None}
        self._ssrcs: dict[int, str] = {}
        for t in pc.getTransceivers():
            if t.sender is not None and t.sender.track is not None:
                self._ssrcs[t.sender._ssrc] = t.kind
                self._ssrcs[t.sender._rtx_ssrc] = t.kind  # retransmissions count with their stream
        dtls = dtls_transport(pc)
        self._protocols = list(dtls.transport._connection._protocols)
        self._wrapped: list[tuple[object, str, object]] = []
        self._active = True
        self._wrap(dtls, "_send_data", self._labelled_data)
        self._wrap(dtls, "_send_rtp", self._labelled_rtp)
        for protocol in self._protocols:
            self._wrap(protocol, "send_data", self._counted_data)
            self._wrap(protocol, "send_stun", self._counted_stun)

    def _wrap(self, owner: object, name: str, make) -> None:
        wrapper = make(getattr(owner, name))
        setattr(owner, name, wrapper)
        self._wrapped.append((owner, name, wrapper))

    def _labelled_data(self, original):
        async def send_data(data: bytes) -> None:
            self._label = _sctp_label(data, self._channels)
            try:
                await original(data)
            finally:
                self._label = None
        return send_data

    def _labelled_rtp(self, original):
        async def send_rtp(data: bytes) -> None:
            if is_rtcp(data):
                self._label = "rtcp"
            else:
                self._label = self._ssrcs.get(rtp_ssrc(data), "rtp")
            try:
                await original(data)
            finally:
                self._label = None
        return send_rtp

    def _count(self, label: str, size: int, addr) -> None:
        if not self._active:
            return
        count = self.counts.setdefault(label, WireCount())
        ip = 6 if ":" in str(addr[0]) else 4
        count.packets += 1
        count.payload_bytes += size
        count.wire_bytes += size + UDP_HEADER_BYTES + IP_HEADER_BYTES[ip]

    def _counted_data(self, original):
        async def send_data(data: bytes, addr) -> None:
            self._count(self._label or "dtls", len(data), addr)
            await original(data, addr)
        return send_data

    def _counted_stun(self, original):
        def send_stun(message, addr) -> None:
            self._count("ice", len(bytes(message)), addr)
            original(message, addr)
        return send_stun

    def ports(self) -> set[int]:
        """The local UDP ports it counts (to find the same datagrams in a packet capture)."""
        ports = set()
        for protocol in self._protocols:
            transport = getattr(protocol, "transport", None)
            name = transport.get_extra_info("sockname") if transport is not None else None
            if name:
                ports.add(int(name[1]))
        return ports

    def ssrcs(self) -> dict[int, str]:
        """SSRC → kind of this peer's RTP streams."""
        return dict(self._ssrcs)

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {label: asdict(count) for label, count in sorted(self.counts.items())}

    def detach(self) -> None:
        """Stop counting; unwrap what is still ours on top (a hook wrapped over ours keeps
        calling it, and it then only passes through)."""
        self._active = False
        for owner, name, wrapper in reversed(self._wrapped):
            if owner.__dict__.get(name) is wrapper:
                del owner.__dict__[name]
        self._wrapped.clear()
