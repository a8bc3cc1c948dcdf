"""Messages of a call's reliable ``control`` data channel.

The ``motion`` channel carries bare :class:`~codec.bitstream.packets.MotionPacket` bytes (one
per message, unordered, never retransmitted). Everything that must arrive goes over the
ordered, reliable ``control`` channel as one of the messages below: the stream header, the
keyframes, keyframe requests, the references the receiver holds, mode switches, receiver
statistics and goodbye.

Layout: a msgpack map ``{"v": CONTROL_VERSION, "t": <type name>, ...fields}``. msgpack is a
plain data format (no code, no classes), so parsing untrusted input is safe; every field is
type-checked here, and anything else raises :class:`~codec.errors.BitstreamError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import msgpack

from codec.errors import BitstreamError, OversizedError, UnsupportedVersionError

CONTROL_VERSION = 1
# aiortc's SCTP transport refuses messages over 64 KiB (its maxMessageSize); a 512 px WebP
# keyframe at q90 is ~30 KB, so this is a limit, not a squeeze.
MAX_CONTROL_BYTES = 65_536
MODES = ("neural", "h264")


@dataclass(frozen=True)
class StreamStart:
    """The stream header, sent first and again whenever the sender restarts the stream.

    ``clock`` is the sender's wall clock (time.time()) at media time 0: with clocks in sync
    (one machine, or NTP on a LAN) the receiver turns packet timestamps into latency."""

    header: bytes
    clock: float
    fps: float


@dataclass(frozen=True)
class Keyframe:
    packet: bytes  # a whole KeyframePacket (type byte, seq, timestamp, codec, image)
    reason: str = ""  # why the sender sent it (call start, the closed loop's score, a request)


@dataclass(frozen=True)
class Patch:
    """A reference patch: reliable, like a keyframe (the sender's copy of the receiver's
    references counts on it arriving)."""

    packet: bytes  # a whole PatchPacket


@dataclass(frozen=True)
class KeyframeRequest:
    reason: str


@dataclass(frozen=True)
class IntraRequest:
    """Receiver -> sender: a motion packet was lost; make the next one absolute (intra).

    Costs the sender one larger motion packet instead of a keyframe image: on a LAN the
    chain is whole again one round trip after the loss, not at the next periodic intra."""

    reason: str


@dataclass(frozen=True)
class HeldReferences:
    """Receiver -> sender: the reference slots it holds, slot -> the frame (sequence number)
    of the keyframe in it; sent whenever that changes (a keyframe arrived, a new stream).
    The sender warps only from keyframes reported here (codec.reference_memory), so a lost
    one is never named."""

    held: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ModeSwitch:
    """Which path carries video from now on: ``neural`` (data channels) or ``h264`` (RTP)."""

    mode: str
    reason: str


@dataclass(frozen=True)
class ModeRequest:
    """Receiver -> sender: please use this mode (e.g. the receiver cannot run the model)."""

    mode: str
    reason: str


@dataclass(frozen=True)
class StatsReport:
    """Receiver -> sender: what the receiver measured, once a second (numbers only)."""

    values: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Bye:
    reason: str = ""


ControlMessage = (StreamStart | Keyframe | Patch | KeyframeRequest | IntraRequest | HeldReferences | ModeSwitch
                  | ModeRequest | StatsReport | Bye)
# Which side of a call reads each message (both peers share the two channels).
FOR_RECEIVER = (StreamStart, Keyframe, Patch, ModeSwitch)
FOR_SENDER = (KeyframeRequest, IntraRequest, HeldReferences, ModeRequest, StatsReport)
MAX_HELD_SLOTS = 16  # the stream header's limit on K

_NAMES = {StreamStart: "start", Keyframe: "keyframe", Patch: "patch", KeyframeRequest: "keyframe_request",
          IntraRequest: "intra_request", HeldReferences: "refs",
          ModeSwitch: "mode", ModeRequest: "mode_request", StatsReport: "stats", Bye: "bye"}


def pack_control(message: ControlMessage) -> bytes:
    """One control message -> the bytes of one data-channel message."""
    body: dict[str, Any] = {"v": CONTROL_VERSION, "t": _NAMES[type(message)]}
    if isinstance(message, StreamStart):
        body.update(header=message.header, clock=float(message.clock), fps=float(message.fps))
    elif isinstance(message, Keyframe | Patch):
        body.update(packet=message.packet)
        if isinstance(message, Keyframe) and message.reason:
            body.update(reason=message.reason)  # optional: readers before it ignore the key
    elif isinstance(message, KeyframeRequest | IntraRequest | Bye):
        body.update(reason=message.reason)
    elif isinstance(message, ModeSwitch | ModeRequest):
        if message.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        body.update(mode=message.mode, reason=message.reason)
    elif isinstance(message, HeldReferences):
        body.update(held={str(int(k)): int(v) for k, v in message.held.items()})
    elif isinstance(message, StatsReport):
        body.update(values={str(k): float(v) for k, v in message.values.items()})
    data = msgpack.packb(body, use_bin_type=True)
    if len(data) > MAX_CONTROL_BYTES:
        raise OversizedError(f"control message of {len(data)} bytes > {MAX_CONTROL_BYTES}")
    return data


def _field(body: dict, name: str, kind: type | tuple[type, ...]) -> Any:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, kind):  # True is an int to Python
        raise BitstreamError(f"control message field {name!r} missing or not {kind}")
    return value


def _number(body: dict, name: str) -> float:
    value = float(_field(body, name, (int, float)))
    if not math.isfinite(value):
        raise BitstreamError(f"control message field {name!r} is not finite")
    return value


def parse_control(data: bytes | str) -> ControlMessage:
    """Bytes of one control message -> the message; BitstreamError on anything malformed."""
    if isinstance(data, str):  # a peer sent text on a binary channel
        raise BitstreamError("control messages are binary, got text")
    if len(data) > MAX_CONTROL_BYTES:
        raise OversizedError(f"control message of {len(data)} bytes > {MAX_CONTROL_BYTES}")
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=MAX_CONTROL_BYTES,
                               max_str_len=4096, max_array_len=0, max_map_len=64)
    except Exception as exc:  # noqa: BLE001 — msgpack raises several unrelated types on garbage
        raise BitstreamError(f"control message is not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(body, dict):
        raise BitstreamError("control message is not a map")
    version = body.get("v")
    if version != CONTROL_VERSION:
        raise UnsupportedVersionError(f"control message version {version!r}, "
                                      f"this build reads {CONTROL_VERSION}")
    kind = body.get("t")
    if kind == "start":
        return StreamStart(header=_field(body, "header", bytes), clock=_number(body, "clock"),
                           fps=_number(body, "fps"))
    if kind == "keyframe":
        return Keyframe(packet=_field(body, "packet", bytes),
                        reason=_field(body, "reason", str) if "reason" in body else "")
    if kind == "patch":
        return Patch(packet=_field(body, "packet", bytes))
    if kind == "keyframe_request":
        return KeyframeRequest(reason=_field(body, "reason", str))
    if kind == "intra_request":
        return IntraRequest(reason=_field(body, "reason", str))
    if kind == "mode":
        mode = _field(body, "mode", str)
        if mode not in MODES:
            raise BitstreamError(f"unknown mode {mode!r}")
        return ModeSwitch(mode=mode, reason=_field(body, "reason", str))
    if kind == "mode_request":
        mode = _field(body, "mode", str)
        if mode not in MODES:
            raise BitstreamError(f"unknown mode {mode!r}")
        return ModeRequest(mode=mode, reason=_field(body, "reason", str))
    if kind == "refs":
        held = _field(body, "held", dict)
        if len(held) > MAX_HELD_SLOTS:
            raise BitstreamError(f"more than {MAX_HELD_SLOTS} held references")
        out_held = {}
        for key, value in held.items():
            if (not isinstance(key, str) or not key.isdigit() or int(key) >= MAX_HELD_SLOTS
                    or isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise BitstreamError("held references must be slot (0-15) -> frame number")
            out_held[int(key)] = value
        return HeldReferences(held=out_held)
    if kind == "stats":
        values = _field(body, "values", dict)
        out = {}
        for key, value in values.items():
            if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, int | float):
                raise BitstreamError("stats values must be name -> number")
            out[key] = float(value)
        return StatsReport(values=out)
    if kind == "bye":
        return Bye(reason=_field(body, "reason", str))
    raise BitstreamError(f"unknown control message type {kind!r}")
