"""Typed errors of the signaling layer, and the wire error codes that map to them.

The server reports problems as ``{"type": "error", "code": ..., "message": ...}``; the client
turns each code back into the class below (``error_from_code``), so callers catch classes,
never compare strings.
"""

from __future__ import annotations


class SignalingError(Exception):
    """Base class for every error the signaling layer raises on purpose.

    ``code`` is the wire error code this error travels as (``None`` for local-only errors).
    """

    code: str | None = None


class BadTokenError(SignalingError):
    """The shared-secret token was wrong. The server closes the connection."""

    code = "bad_token"


class RoomFullError(SignalingError):
    """The room already holds two peers. The server closes the connection."""

    code = "room_full"


class ServerFullError(SignalingError):
    """The server holds its maximum number of rooms. The server closes the connection."""

    code = "server_full"


class TooManyConnectionsError(SignalingError):
    """This client address holds the server's maximum of connections, or of connections that
    have not joined a room yet. The server closes the connection (1013, try again later)."""

    code = "too_many_connections"


class TooManyRoomsError(SignalingError):
    """This client address already sits in the server's maximum of rooms. The server closes
    the connection."""

    code = "too_many_rooms"


class AloneTimeoutError(SignalingError):
    """No other peer joined the room within the server's lone-peer timeout. The server closes
    the connection; joining again starts a new wait."""

    code = "alone_timeout"


class MalformedMessageError(SignalingError):
    """Invalid JSON, not an object, missing or wrong-typed fields, or an unknown type.

    Also raised locally by ``validate_message`` and ``Capabilities.from_dict``.
    """

    code = "malformed"


class NotJoinedError(SignalingError):
    """A message other than ``join`` arrived before the connection joined a room."""

    code = "not_joined"


class MessageTooLargeError(SignalingError):
    """A message exceeded the server's size limit."""

    code = "too_large"


class RateLimitedError(SignalingError):
    """A message was dropped by the per-connection rate limit.

    Not fatal on its own; the server closes connections that keep exceeding it.
    """

    code = "rate_limited"


class PeerLeftError(SignalingError):
    """The other peer is gone (left, or never arrived)."""

    code = "peer_left"


class NoPeerError(PeerLeftError):
    """A message meant for the other peer was sent while alone in the room; it was dropped."""

    code = "no_peer"


class SignalingClosedError(SignalingError):
    """The signaling connection is closed (or could not be opened).

    ``close_code`` is the WebSocket close code when one is known (1001: server shutdown).
    """

    code = None

    def __init__(self, message: str = "signaling connection closed", close_code: int | None = None):
        super().__init__(message)
        self.close_code = close_code


class SignalingTimeoutError(SignalingError):
    """Waiting for a message, a peer or a join took longer than allowed."""

    code = "join_timeout"


#: Wire error code → the class the client raises for it.
ERROR_CLASSES: dict[str, type[SignalingError]] = {
    cls.code: cls
    for cls in (BadTokenError, RoomFullError, ServerFullError, TooManyConnectionsError,
                TooManyRoomsError, AloneTimeoutError, MalformedMessageError, NotJoinedError,
                MessageTooLargeError, RateLimitedError, PeerLeftError, NoPeerError,
                SignalingTimeoutError)
    if cls.code is not None
}


def error_from_code(code: str, message: str) -> SignalingError:
    """The typed error for a wire error code; unknown codes give the base class (newer server)."""
    cls = ERROR_CLASSES.get(code, SignalingError)
    error = cls(message)
    if cls is SignalingError:
        error.code = code
    return error
