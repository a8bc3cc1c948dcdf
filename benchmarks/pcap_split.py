"""Split a packet capture of a call (tcpdump ``-w``) by what each datagram carries.

A check on :class:`rtc.wire_meter.WireMeter` from outside the process: only what the packets
themselves show. SRTP and SRTCP headers are in the clear, so audio, video and RTCP split by
SSRC and payload type, and the motion extension's elements in the audio headers are visible.
The data channel's DTLS records are encrypted: motion, control and SCTP housekeeping are one
``dtls`` figure here (the meters split them).

Reads the classic libpcap format (what tcpdump writes) with Ethernet, Linux cooked (v1, v2)
or BSD loopback framing; no dependency.
"""

from __future__ import annotations

import struct
from pathlib import Path

from rtc.motion_over_audio import read_extension_element, rtp_ssrc

_LINK_HEADER = {1: 14, 113: 16, 276: 20, 0: 4}  # Ethernet, Linux SLL, SLL2, BSD null


def _udp_datagrams(path: Path, window: tuple[float, float] | None = None):
    """(source port, IP total length, UDP payload head) of each UDP datagram in the file
    (captured within ``window``, unix time, if given)."""
    data = path.read_bytes()
    if len(data) < 24:
        return
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"{path}: not a libpcap capture")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")  # nanosecond timestamps
    linktype = struct.unpack_from(endian + "I", data, 20)[0] & 0x0FFFFFFF
    if linktype not in _LINK_HEADER:
        raise ValueError(f"{path}: link type {linktype} not supported")
    pos = 24
    while pos + 16 <= len(data):
        seconds, fraction, caplen = struct.unpack_from(endian + "III", data, pos)
        frame = data[pos + 16:pos + 16 + caplen]
        pos += 16 + caplen
        stamp = seconds + fraction * (1e-9 if nano else 1e-6)
        if window is not None and not window[0] <= stamp <= window[1]:
            continue
        ip = frame[_LINK_HEADER[linktype]:]
        if len(ip) < 20:
            continue
        if ip[0] >> 4 == 4:
            ihl, total, proto = 4 * (ip[0] & 0x0F), struct.unpack_from("!H", ip, 2)[0], ip[9]
        elif ip[0] >> 4 == 6 and len(ip) >= 40:
            ihl, total, proto = 40, 40 + struct.unpack_from("!H", ip, 4)[0], ip[6]
        else:
            continue
        if proto != 17 or len(ip) < ihl + 8:
            continue
        yield struct.unpack_from("!H", ip, ihl)[0], total, ip[ihl + 8:]


def split_capture(path: Path, ports: set[int], ssrcs: dict[int, str] | None = None,
                  motion_extension_id: int | None = None,
                  window: tuple[float, float] | None = None) -> dict:
    """Bytes on the wire (IP total length) from ``ports``, by kind; plus the motion extension's
    element bytes inside audio packets (element header + value, before padding)."""
    kinds: dict[str, dict[str, int]] = {}
    motion_element_bytes = 0
    for sport, total, head in _udp_datagrams(path, window):
        if sport not in ports or not head:
            continue
        first = head[0]
        if first < 4:
            kind = "ice"
        elif 20 <= first < 64:
            kind = "dtls (data channel: motion, control, sctp)"
        elif 128 <= first < 192 and len(head) >= 12:
            if 192 <= head[1] <= 223:
                kind = "rtcp"
            else:
                kind = (ssrcs or {}).get(rtp_ssrc(head), f"rtp pt {head[1] & 0x7F}")
                if motion_extension_id is not None:
                    try:
                        value = read_extension_element(head, motion_extension_id)
                    except ValueError:
                        value = None  # the snap length cut the header: not counted
                    if value is not None:
                        motion_element_bytes += (1 if len(value) <= 16 else 2) + len(value)
        else:
            kind = "other"
        count = kinds.setdefault(kind, {"packets": 0, "wire_bytes": 0})
        count["packets"] += 1
        count["wire_bytes"] += total
    return {"by_kind": kinds, "motion_extension_element_bytes": motion_element_bytes,
            "total_wire_bytes": sum(c["wire_bytes"] for c in kinds.values())}
