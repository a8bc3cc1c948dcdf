"""Signaling endpoints: a WebSocket client of ``signaling.server`` and an in-process pair.

Both implement ``SignalingChannel``, so a call (sender, receiver, tests) is written once and
runs over the real server or in memory::

    async with SignalingClient(url, token, "room1", caps) as sig:
        peer_caps = await sig.wait_for_peer(timeout=30)
        if sig.role == "offer":
            await sig.send({"type": "offer", "sdp": ...})
        msg = await sig.receive(timeout=10)

``receive`` returns, in arrival order, the messages the other peer sent and the ``peer`` /
``peer_left`` notices; server ``error`` notices are raised as the typed errors of
``signaling.errors``, and a closed connection raises ``SignalingClosedError``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Protocol, runtime_checkable

from signaling.errors import (
    MalformedMessageError,
    MessageTooLargeError,
    NoPeerError,
    SignalingClosedError,
    SignalingError,
    SignalingTimeoutError,
    error_from_code,
)
from signaling.messages import (
    ERROR,
    JOIN,
    JOINED,
    PEER,
    PEER_LEFT,
    READY,
    RELAY_TYPES,
    ROLE_ANSWER,
    ROLE_OFFER,
    Capabilities,
    decode_message,
    encode_message,
    validate_message,
)

log = logging.getLogger("facecodec.signaling")

_CLOSED = object()  # inbox sentinel: the connection ended


@runtime_checkable
class SignalingChannel(Protocol):
    """What a call needs from signaling, whatever carries it."""

    @property
    def role(self) -> str | None:
        """"offer" (creates the WebRTC offer) or "answer"; None before joining."""

    @property
    def peer_capabilities(self) -> Capabilities | None:
        """The other peer's capabilities; None while alone."""

    async def wait_for_peer(self, timeout: float | None = None) -> Capabilities: ...

    async def send(self, message: dict[str, Any]) -> None: ...

    async def receive(self, timeout: float | None = None) -> dict[str, Any]: ...

    async def close(self) -> None: ...


def _check_outgoing(message: dict[str, Any]) -> str:
    """Validate a message a peer may send and encode it; raises MalformedMessageError."""
    validate_message(message)
    if message["type"] not in RELAY_TYPES:
        raise MalformedMessageError(
            f"peers may only send {sorted(RELAY_TYPES)}, not {message['type']!r}")
    try:
        return encode_message(message)
    except (TypeError, ValueError) as exc:  # not JSON-serializable, or NaN
        raise MalformedMessageError(f"message is not valid JSON: {exc}") from None


class _Inbox:
    """State and receive side shared by both endpoints: one queue, peer presence, closure."""

    def __init__(self, capabilities: Capabilities):
        if not isinstance(capabilities, Capabilities):
            raise TypeError("capabilities must be a signaling.Capabilities")
        self.capabilities = capabilities
        self._reset()

    def _reset(self) -> None:
        self._role: str | None = None
        self._peer_capabilities: Capabilities | None = None
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._peer_present = asyncio.Event()
        self._closed_event = asyncio.Event()
        self._closed_error: SignalingClosedError | None = None

    @property
    def role(self) -> str | None:
        """"offer" or "answer"; None before joining."""
        return self._role

    @property
    def peer_capabilities(self) -> Capabilities | None:
        """The other peer's capabilities; None while alone."""
        return self._peer_capabilities

    @property
    def closed(self) -> bool:
        return self._closed_error is not None

    def _set_peer(self, capabilities: Capabilities | None) -> None:
        self._peer_capabilities = capabilities
        if capabilities is None:
            self._peer_present.clear()
        else:
            self._peer_present.set()

    def _deliver(self, item: dict[str, Any] | SignalingError) -> None:
        """Queue one message (or error) for ``receive``, updating peer state as it arrives."""
        if isinstance(item, dict):
            if item["type"] == PEER:
                self._set_peer(Capabilities.from_dict(item["capabilities"]))
            elif item["type"] == PEER_LEFT:
                self._set_peer(None)
        self._inbox.put_nowait(item)

    def _mark_closed(self, error: SignalingClosedError) -> None:
        if self._closed_error is None:
            self._closed_error = error
            self._set_peer(None)
            self._closed_event.set()
            self._inbox.put_nowait(_CLOSED)

    def _raise_closed(self) -> None:
        error = self._closed_error or SignalingClosedError("signaling is not connected")
        # A fresh instance each time, so tracebacks do not pile up on one object.
        raise SignalingClosedError(str(error), error.close_code)

    async def receive(self, timeout: float | None = None) -> dict[str, Any]:
        """The next relayed message or ``peer``/``peer_left`` notice.

        Raises the typed error for a server ``error`` notice, SignalingClosedError once the
        connection has ended (after everything queued before it), and SignalingTimeoutError
        when nothing arrives within ``timeout`` seconds.
        """
        try:
            item = await asyncio.wait_for(self._inbox.get(), timeout)
        except TimeoutError:
            raise SignalingTimeoutError(f"no signaling message within {timeout:g} s") from None
        if item is _CLOSED:
            self._inbox.put_nowait(_CLOSED)  # every later receive raises too
            self._raise_closed()
        if isinstance(item, SignalingError):
            raise item
        return item

    async def wait_for_peer(self, timeout: float | None = None) -> Capabilities:
        """Return the other peer's capabilities, waiting up to ``timeout`` s for it to join.

        Consumes nothing: the ``peer`` notice still comes out of ``receive``.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self._peer_capabilities is not None:
                return self._peer_capabilities
            if self._closed_error is not None:
                self._raise_closed()
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise SignalingTimeoutError(f"no peer joined within {timeout:g} s")
            waiters = [asyncio.ensure_future(self._peer_present.wait()),
                       asyncio.ensure_future(self._closed_event.wait())]
            try:
                await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()


class SignalingClient(_Inbox):
    """A peer's connection to the signaling server (aiohttp WebSocket).

    ``connect()`` joins ``room`` with ``token``; then ``role`` and ``peer_capabilities`` are
    set and ``send`` / ``receive`` work. ``connect`` may be called again after the
    connection dropped (a server restart): it starts over with a fresh inbox.

    With ``ready=False`` the join holds a seat without telling the other peer, which learns
    of this one at ``announce(capabilities)``: a peer checks its token and seat before its
    slow model load, and is called only once it can answer.
    """

    def __init__(self, url: str, token: str, room: str, capabilities: Capabilities, *,
                 max_msg_size: int = 4 << 20, join_timeout: float = 10.0, max_backoff: float = 5.0,
                 ready: bool = True):
        super().__init__(capabilities)
        self.url = url
        self._token = token
        self.room = room
        self.ready = ready
        self.max_msg_size = max_msg_size
        self.join_timeout = join_timeout
        self.max_backoff = max_backoff
        self._session: Any = None  # aiohttp.ClientSession, made in the running loop
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None
        # Validate the join now, so a bad room name fails here rather than at the server.
        validate_message(self._join_message())

    def _join_message(self) -> dict[str, Any]:
        message = {"type": JOIN, "room": self.room, "token": self._token,
                   "capabilities": self.capabilities.to_dict()}
        if not self.ready:  # only then: a ready join is the same as before the field existed
            message["ready"] = False
        return message

    async def announce(self, capabilities: Capabilities) -> None:
        """Tell the other peer (now or when it joins) that this one is here, with these
        capabilities. After a ``ready=False`` join; a later reconnect joins ready."""
        if not isinstance(capabilities, Capabilities):
            raise TypeError("capabilities must be a signaling.Capabilities")
        self.capabilities = capabilities
        if not self.ready:
            self.ready = True
            await self.send_raw(encode_message({"type": READY, "capabilities": capabilities.to_dict()}))

    def __repr__(self) -> str:  # never show the token
        return f"SignalingClient(url={self.url!r}, room={self.room!r}, role={self.role!r})"

    async def connect(self, retries: int = 0, backoff: float = 0.5) -> None:
        """Open the WebSocket and join the room.

        A refused or dropped connection (a server restarting) is retried ``retries`` times,
        sleeping ``backoff`` s, doubling up to ``max_backoff``. Errors the server answers
        (BadTokenError, RoomFullError, ...) are raised at once: retrying cannot fix them.
        Raises SignalingClosedError when the server stays unreachable.
        """
        import aiohttp

        await self._teardown()
        self._reset()
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        attempt = 0
        while True:
            try:
                ws = await asyncio.wait_for(
                    self._session.ws_connect(self.url, max_msg_size=self.max_msg_size, autoping=True),
                    self.join_timeout)
                break
            except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.WSServerHandshakeError, OSError) as exc:
                # A 4xx handshake answer (wrong path) will not change on retry.
                permanent = isinstance(exc, aiohttp.WSServerHandshakeError) and exc.status < 500
                if permanent or attempt >= retries:
                    await self._close_session()
                    raise SignalingClosedError(
                        f"could not connect to {self.url}: {type(exc).__name__}: {exc}") from exc
                delay = min(self.max_backoff, backoff * (2 ** attempt))
                attempt += 1
                log.info("signaling server unreachable (%s); retry %d/%d in %.2f s",
                         type(exc).__name__, attempt, retries, delay)
                await asyncio.sleep(delay)
        self._ws = ws
        try:
            await ws.send_str(encode_message(self._join_message()))
            reply = await self._first_reply(ws)
        except BaseException:
            await ws.close()
            self._ws = None
            raise
        self._role = reply["role"]
        if reply["peer"] is not None:
            self._set_peer(Capabilities.from_dict(reply["peer"]))
        self._reader = asyncio.ensure_future(self._read_loop(ws))
        log.debug("joined signaling room as %s", self._role)

    async def _first_reply(self, ws: Any) -> dict[str, Any]:
        import aiohttp

        try:
            msg = await ws.receive(timeout=self.join_timeout)
        except TimeoutError:
            raise SignalingTimeoutError(f"no reply to join within {self.join_timeout:g} s") from None
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise SignalingClosedError("the server closed the connection during join", ws.close_code)
        reply = decode_message(msg.data)
        if reply["type"] == ERROR:
            raise error_from_code(reply["code"], reply["message"])
        if reply["type"] != JOINED:
            raise MalformedMessageError(f"expected 'joined', got {reply['type']!r}")
        return reply

    async def _read_loop(self, ws: Any) -> None:
        import aiohttp

        closed_by = "the server"
        try:
            while True:
                msg = await ws.receive()
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self._on_text(msg.data)
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                                  aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    break
        except asyncio.CancelledError:
            closed_by = "us"
            raise
        finally:
            code = ws.close_code
            if code == 1009:  # aiohttp's hard limit: the server stopped reading our frame
                self._inbox.put_nowait(MessageTooLargeError("message exceeded the server's hard size limit"))
            self._mark_closed(SignalingClosedError(
                f"signaling connection closed by {closed_by} (code {code})", code))

    def _on_text(self, text: str) -> None:
        try:
            message = decode_message(text)
        except MalformedMessageError as exc:
            self._deliver(MalformedMessageError(f"from the server or peer: {exc}"))
            return
        kind = message["type"]
        if kind == ERROR:
            self._deliver(error_from_code(message["code"], message["message"]))
        elif kind in RELAY_TYPES or kind in (PEER, PEER_LEFT):
            self._deliver(message)
        # A stray 'joined' or a client-only type from the server is ignored.

    async def send(self, message: dict[str, Any]) -> None:
        """Send one message to the other peer (type in offer/answer/candidate/bye/app).

        Raises MalformedMessageError locally for an invalid message, SignalingClosedError
        when not connected. A message sent while alone comes back as NoPeerError on receive.
        """
        text = _check_outgoing(message)
        await self.send_raw(text)

    async def send_raw(self, text: str) -> None:
        """Send one text frame unchecked. For tests of the server's defences and debugging."""
        import aiohttp

        if self._ws is None or self._ws.closed or self._closed_error is not None:
            self._raise_closed()
        try:
            await self._ws.send_str(text)
        except (ConnectionError, aiohttp.ClientError) as exc:
            raise SignalingClosedError(f"signaling connection lost: {exc}") from exc

    async def _teardown(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None and not reader.done():
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        ws, self._ws = self._ws, None
        if ws is not None and not ws.closed:
            await ws.close()

    async def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    async def close(self) -> None:
        """Leave the room and close the connection (the other peer gets ``peer_left``)."""
        await self._teardown()
        await self._close_session()
        self._mark_closed(SignalingClosedError("signaling connection closed by us", 1000))

    async def __aenter__(self) -> SignalingClient:
        if self._ws is None:
            await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class InMemoryEndpoint(_Inbox):
    """One side of ``InMemorySignaling.pair``: the SignalingClient interface, no network.

    It mirrors the server: messages travel as JSON (so only JSON values cross), a message
    sent while alone comes back as NoPeerError, one over ``max_message_bytes`` as
    MessageTooLargeError, and ``close()`` gives the other side ``peer_left``.
    """

    def __init__(self, capabilities: Capabilities, role: str, max_message_bytes: int):
        super().__init__(capabilities)
        self._role = role
        self.max_message_bytes = max_message_bytes
        self._peer: InMemoryEndpoint | None = None

    def __repr__(self) -> str:
        return f"InMemoryEndpoint(role={self.role!r})"

    async def connect(self, retries: int = 0, backoff: float = 0.5) -> None:
        """Nothing to do: the pair is joined from the start. Here for drop-in use."""

    async def send(self, message: dict[str, Any]) -> None:
        """Deliver one message to the other endpoint (see ``SignalingClient.send``)."""
        text = _check_outgoing(message)
        if self._closed_error is not None:
            self._raise_closed()
        if len(text.encode("utf-8")) > self.max_message_bytes:
            self._deliver(MessageTooLargeError(
                f"message exceeds {self.max_message_bytes} bytes"))
            return
        peer = self._peer
        if peer is None or peer.closed:
            self._deliver(NoPeerError("no other peer in the room"))
            return
        peer._deliver(json.loads(text))

    async def close(self) -> None:
        """Leave: the other endpoint receives ``peer_left``."""
        if self._closed_error is not None:
            return
        peer, self._peer = self._peer, None
        self._mark_closed(SignalingClosedError("signaling connection closed by us", 1000))
        if peer is not None and not peer.closed:
            peer._peer = None
            peer._deliver({"type": PEER_LEFT})

    async def __aenter__(self) -> InMemoryEndpoint:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class InMemorySignaling:
    """Two joined in-process endpoints for loopback calls and tests."""

    @staticmethod
    def pair(caps_a: Capabilities, caps_b: Capabilities, *,
             max_message_bytes: int = 65536) -> tuple[InMemoryEndpoint, InMemoryEndpoint]:
        """``(a, b)``: ``a`` is "offer", ``b`` is "answer", as if a joined first.

        Like the server, ``a`` finds a ``peer`` notice in its inbox (b arrived after it),
        while ``b`` learned about ``a`` at join.
        """
        a = InMemoryEndpoint(caps_a, ROLE_OFFER, max_message_bytes)
        b = InMemoryEndpoint(caps_b, ROLE_ANSWER, max_message_bytes)
        a._peer, b._peer = b, a
        b._set_peer(Capabilities.from_dict(caps_a.to_dict()))
        a._deliver({"type": PEER, "capabilities": caps_b.to_dict()})
        return a, b
