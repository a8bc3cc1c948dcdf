"""Signaling wire format: JSON text frames, one object per frame, tagged by ``"type"``.

Client → server (first message must be ``join``)::

    {"type": "join", "room": str, "token": str, "capabilities": {...}, "ready": bool}
    {"type": "ready", "capabilities": {...}}       # after a join with "ready": false

``"ready"`` is optional (default true). A peer that joins with ``"ready": false`` holds its
seat (so a wrong token or a full room fails at once, before its slow model load) but the
other peer learns of it only from its ``ready`` message, with its real capabilities.

Server → client::

    {"type": "joined", "role": "offer" | "answer", "peer": {...} | null}
    {"type": "peer", "capabilities": {...}}        # the other peer arrived
    {"type": "peer_left"}                           # the other peer disconnected
    {"type": "error", "code": str, "message": str}

Relayed verbatim between the two peers of a room: ``offer`` / ``answer`` (``"sdp": str``),
``candidate`` (``"candidate": {...} | null``), ``bye`` and ``app`` (free-form fields).

Everything here is pure stdlib so the server, the client and tests share one validator.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from signaling.errors import MalformedMessageError

# Message types.
JOIN = "join"
READY = "ready"
JOINED = "joined"
PEER = "peer"
PEER_LEFT = "peer_left"
ERROR = "error"
OFFER = "offer"
ANSWER = "answer"
CANDIDATE = "candidate"
BYE = "bye"
APP = "app"

#: Types the server relays verbatim to the other peer of the room.
RELAY_TYPES = frozenset({OFFER, ANSWER, CANDIDATE, BYE, APP})
#: Types a client may send.
CLIENT_TYPES = frozenset({JOIN, READY}) | RELAY_TYPES
#: Types only the server originates.
SERVER_TYPES = frozenset({JOINED, PEER, PEER_LEFT, ERROR})
MESSAGE_TYPES = CLIENT_TYPES | SERVER_TYPES

ROLE_OFFER = "offer"
ROLE_ANSWER = "answer"
ROLES = (ROLE_OFFER, ROLE_ANSWER)

ROOM_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# Bounds that keep one capabilities object small; a real peer is far inside them.
MAX_TOKEN_CHARS = 1024
MAX_MODEL_CHARS = 128
MAX_CODECS = 16
MAX_CODEC_CHARS = 32
MAX_RENDER_FPS = 1000.0
_HEX_RE = re.compile(r"[0-9a-f]{1,64}")


def _fail(message: str) -> MalformedMessageError:
    return MalformedMessageError(message)


@dataclass
class Capabilities:
    """What a peer can do, exchanged at join so each side can pick a mode the other renders.

    ``render_fps`` is measured, not promised: frames/s the peer's receiver rendered in a
    warm-up run (0.0 when it cannot render the neural stream at all). ``weights_sha256_prefix``
    is lowercase hex, as in the stream header, so both sides can check they hold the same
    weights before the call starts.
    """

    has_weights: bool = False
    model: str | None = None
    weights_sha256_prefix: str | None = None
    untrained: bool = False
    render_fps: float = 0.0
    codecs: list[str] = field(default_factory=lambda: ["neural"])

    def __post_init__(self) -> None:
        if not isinstance(self.has_weights, bool):
            raise _fail("capabilities.has_weights must be a boolean")
        if not isinstance(self.untrained, bool):
            raise _fail("capabilities.untrained must be a boolean")
        if self.model is not None and not (isinstance(self.model, str)
                                           and 0 < len(self.model) <= MAX_MODEL_CHARS):
            raise _fail(f"capabilities.model must be null or a string of 1-{MAX_MODEL_CHARS} chars")
        prefix = self.weights_sha256_prefix
        if prefix is not None and not (isinstance(prefix, str) and _HEX_RE.fullmatch(prefix)):
            raise _fail("capabilities.weights_sha256_prefix must be null or 1-64 lowercase hex digits")
        # bool is an int subclass; True as a frame rate is a bug on the other side.
        fps = self.render_fps
        if isinstance(fps, bool) or not isinstance(fps, (int, float)):
            raise _fail("capabilities.render_fps must be a number")
        if not (math.isfinite(fps) and 0.0 <= fps <= MAX_RENDER_FPS):
            raise _fail(f"capabilities.render_fps must be finite and in [0, {MAX_RENDER_FPS:g}]")
        self.render_fps = float(fps)
        codecs = self.codecs
        if not isinstance(codecs, (list, tuple)) or len(codecs) > MAX_CODECS:
            raise _fail(f"capabilities.codecs must be a list of at most {MAX_CODECS} strings")
        for codec in codecs:
            if not (isinstance(codec, str) and 0 < len(codec) <= MAX_CODEC_CHARS):
                raise _fail(f"capabilities.codecs entries must be strings of 1-{MAX_CODEC_CHARS} chars")
        self.codecs = list(codecs)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object sent on the wire."""
        return {
            "has_weights": self.has_weights,
            "model": self.model,
            "weights_sha256_prefix": self.weights_sha256_prefix,
            "untrained": self.untrained,
            "render_fps": self.render_fps,
            "codecs": list(self.codecs),
        }

    @classmethod
    def from_dict(cls, obj: Any) -> Capabilities:
        """Parse and validate a wire object; raises MalformedMessageError on bad input.

        ``has_weights``, ``untrained``, ``render_fps`` and ``codecs`` are required; ``model``
        and ``weights_sha256_prefix`` default to null. Unknown keys are ignored so a newer
        peer can add fields without breaking an older one.
        """
        if not isinstance(obj, dict):
            raise _fail("capabilities must be a JSON object")
        missing = [key for key in ("has_weights", "untrained", "render_fps", "codecs") if key not in obj]
        if missing:
            raise _fail(f"capabilities lacks {', '.join(missing)}")
        codecs = obj["codecs"]
        if not isinstance(codecs, list):
            raise _fail("capabilities.codecs must be a list")
        return cls(has_weights=obj["has_weights"], model=obj.get("model"),
                   weights_sha256_prefix=obj.get("weights_sha256_prefix"),
                   untrained=obj["untrained"], render_fps=obj["render_fps"], codecs=codecs)


def _require_str(obj: dict[str, Any], key: str, max_chars: int | None = None) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise _fail(f"{obj['type']!r} message needs a string {key!r}")
    if max_chars is not None and len(value) > max_chars:
        raise _fail(f"{obj['type']!r} message: {key!r} is longer than {max_chars} chars")
    return value


def validate_message(obj: Any) -> dict[str, Any]:
    """Check one decoded protocol message and return it unchanged.

    Validates the shape of every type in MESSAGE_TYPES (both directions); whether a type is
    allowed from a given side is the caller's business. Extra fields are kept: relayed
    messages travel verbatim. Raises MalformedMessageError.
    """
    if not isinstance(obj, dict):
        raise _fail("a message must be a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise _fail("a message needs a string 'type'")
    if kind not in MESSAGE_TYPES:
        raise _fail(f"unknown message type {kind[:32]!r}")
    if kind == JOIN:
        room = _require_str(obj, "room")
        if not ROOM_NAME_RE.fullmatch(room):
            raise _fail("room names are 1-64 characters of A-Z a-z 0-9 _ . -")
        _require_str(obj, "token", MAX_TOKEN_CHARS)
        Capabilities.from_dict(obj.get("capabilities"))
        if not isinstance(obj.get("ready", True), bool):
            raise _fail("'join' message: 'ready' must be a boolean")
    elif kind == READY:
        Capabilities.from_dict(obj.get("capabilities"))
    elif kind == JOINED:
        if obj.get("role") not in ROLES:
            raise _fail("'joined' message needs role 'offer' or 'answer'")
        if obj.get("peer") is not None:
            Capabilities.from_dict(obj["peer"])
    elif kind == PEER:
        Capabilities.from_dict(obj.get("capabilities"))
    elif kind == ERROR:
        _require_str(obj, "code")
        _require_str(obj, "message")
    elif kind in (OFFER, ANSWER):
        _require_str(obj, "sdp")
    elif kind == CANDIDATE:
        # Null is the end-of-candidates marker; aiortc never needs trickle, but browsers do.
        if "candidate" not in obj or not (obj["candidate"] is None or isinstance(obj["candidate"], dict)):
            raise _fail("'candidate' message needs 'candidate': object or null")
    return obj


def _check_unicode(obj: Any) -> None:
    """Raise when a string anywhere in ``obj`` (keys included) holds a lone UTF-16 surrogate.

    JSON's ``"\\ud800"`` escape decodes to a str that cannot be encoded as UTF-8: it would
    crash the token check and travel on to the other peer inside names. Iterative, so a
    deeply nested relay message cannot exhaust the stack (``json.loads`` bounds the depth).
    """
    pending = [obj]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise _fail("strings must be valid Unicode (a lone UTF-16 surrogate is not)") from None
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


def decode_message(text: str | bytes) -> dict[str, Any]:
    """Parse one text frame and validate it; raises MalformedMessageError."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _fail(f"invalid JSON: {exc}") from None
    _check_unicode(obj)
    return validate_message(obj)


def encode_message(obj: dict[str, Any]) -> str:
    """One compact JSON text frame."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def error_message(code: str, message: str) -> dict[str, Any]:
    """The server's error notice."""
    return {"type": ERROR, "code": code, "message": message}
