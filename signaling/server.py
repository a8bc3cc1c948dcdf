"""The signaling server: rooms of two, a shared-secret token, and a verbatim relay.

It only introduces the two peers of a call (roles, capabilities, SDP offer/answer); the
call itself then runs peer to peer over WebRTC. Endpoints:

- ``GET /ws``: the WebSocket protocol of ``signaling.messages``;
- ``GET /health``: ``{"rooms": int, "peers": int}``.

Defences, all per connection: a join deadline, a size limit (a soft one answered with
``too_large`` and a hard one, aiohttp's ``max_msg_size``, that closes), a token bucket, and a
cap on malformed messages. The token is compared in constant time and never logged.

Logged at INFO, one line each, with the room and the peer's address: joins, ``ready``
announcements, leaves and every refusal or error answered (bad token, room full,
malformed, ...) with its reason; dropped-by-rate-limit messages only at DEBUG.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from signaling.errors import MalformedMessageError
from signaling.messages import (
    CLIENT_TYPES,
    JOIN,
    JOINED,
    PEER,
    PEER_LEFT,
    READY,
    ROLE_ANSWER,
    ROLE_OFFER,
    Capabilities,
    decode_message,
    encode_message,
    error_message,
)

log = logging.getLogger("facecodec.signaling")

TOKEN_ENV = "FACECODEC_SIGNALING_TOKEN"


class TokenBucket:
    """``rate`` tokens/s refill up to ``burst``; each message takes one."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic):
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self._clock = clock
        self._last = clock()

    def take(self) -> bool:
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
        self._last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(eq=False)
class _Peer:
    ws: web.WebSocketResponse
    bucket: TokenBucket
    remote: str = "?"  # the client's address, for the log
    room: _Room | None = None
    role: str | None = None
    capabilities: dict[str, Any] | None = None
    ready: bool = True  # False: seated but not yet announced to the other peer
    strikes: int = 0  # malformed / not_joined / too_large messages so far
    # Dropped-by-rate-limit count that leaks 1/s: only sustained flooding reaches the limit.
    abuse: float = 0.0
    abuse_time: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class _Room:
    name: str
    seats: dict[str, _Peer | None] = field(default_factory=lambda: {ROLE_OFFER: None, ROLE_ANSWER: None})

    def other(self, peer: _Peer) -> _Peer | None:
        for seated in self.seats.values():
            if seated is not None and seated is not peer:
                return seated
        return None

    def empty(self) -> bool:
        return all(seated is None for seated in self.seats.values())


class _Close(Exception):
    """Internal: end this connection with ``close_code`` after the error was sent."""

    def __init__(self, close_code: int):
        self.close_code = close_code


class SignalingServer:
    """An aiohttp signaling server for two-party calls.

    ``port=0`` binds a free port; ``.port`` and ``.url`` give the real one after ``start()``.
    Use as ``async with SignalingServer(token) as server:`` or ``start()`` / ``stop()``.
    """

    def __init__(self, token: str, host: str = "127.0.0.1", port: int = 0, *,
                 max_message_bytes: int = 65536, rate: float = 50.0, burst: int = 100,
                 max_rooms: int = 1000, join_timeout: float = 10.0, max_malformed: int = 10,
                 abuse_limit: int | None = None, heartbeat: float | None = 30.0):
        if not isinstance(token, str) or not token:
            raise ValueError("the signaling server needs a non-empty token")
        if max_message_bytes < 256:
            raise ValueError("max_message_bytes must be at least 256")
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._token = token.encode("utf-8")
        self.host = host
        self._requested_port = port
        self.max_message_bytes = max_message_bytes
        # Between the soft and the hard limit the client gets a `too_large` error and stays
        # connected; past the hard limit aiohttp stops reading the frame and closes (1009).
        self.hard_message_bytes = 2 * max_message_bytes
        self.rate = rate
        self.burst = burst
        self.max_rooms = max_rooms
        self.join_timeout = join_timeout
        self.max_malformed = max_malformed
        self.abuse_limit = burst if abuse_limit is None else abuse_limit
        self.heartbeat = heartbeat
        self._rooms: dict[str, _Room] = {}
        self._peers: set[_Peer] = set()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._stopping = False
        self._stopped = asyncio.Event()

    # ----------------------------------------------------------------- lifecycle

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port 0)."""
        if self._port is None:
            raise RuntimeError("the signaling server is not started")
        return self._port

    @property
    def url(self) -> str:
        """``ws://host:port/ws``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}/ws"

    @property
    def stats(self) -> dict[str, int]:
        """What ``/health`` reports: rooms open and peers joined."""
        return {"rooms": len(self._rooms), "peers": sum(1 for p in self._peers if p.room is not None)}

    async def start(self) -> None:
        """Bind and start serving. Raises OSError when the port is taken."""
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_get("/ws", self._handle_ws)
        app.router.add_get("/health", self._handle_health)
        # No access log: request lines carry nothing useful and would be noise at call rates.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = runner.addresses[0][1]
        self._stopping = False
        self._stopped = asyncio.Event()
        log.info("signaling server listening on %s", self.url)

    async def stop(self) -> None:
        """Close every socket with 1001 (going away), then stop listening."""
        if self._runner is None:
            return
        self._stopping = True
        closes = [p.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
                  for p in list(self._peers)]
        if closes:
            try:
                await asyncio.wait_for(asyncio.gather(*closes, return_exceptions=True), timeout=5.0)
            except TimeoutError:
                log.warning("some peers did not acknowledge the close; dropping them")
        runner, self._runner = self._runner, None
        await runner.cleanup()
        self._rooms.clear()
        self._peers.clear()
        self._stopped.set()
        log.info("signaling server stopped")

    async def serve_forever(self) -> None:
        """Start if needed and run until ``stop()`` is called (or the task is cancelled)."""
        await self.start()
        try:
            await self._stopped.wait()
        finally:
            await self.stop()

    async def __aenter__(self) -> SignalingServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ----------------------------------------------------------------- handlers

    async def _handle_health(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats)

    async def _handle_ws(self, request: web.Request) -> web.StreamResponse:
        if self._stopping:
            return web.Response(status=503, text="shutting down")
        ws = web.WebSocketResponse(max_msg_size=self.hard_message_bytes, heartbeat=self.heartbeat)
        await ws.prepare(request)
        peer = _Peer(ws=ws, bucket=TokenBucket(self.rate, self.burst), remote=request.remote or "?")
        self._peers.add(peer)
        close_code = WSCloseCode.OK
        try:
            await self._serve(peer)
        except _Close as exc:
            close_code = exc.close_code
        finally:
            self._peers.discard(peer)
            await self._leave(peer)
            if not ws.closed:
                await ws.close(code=close_code)
        return ws

    async def _serve(self, peer: _Peer) -> None:
        ws = peer.ws
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.join_timeout
        while True:
            timeout = None
            if peer.room is None:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    await self._error(peer, "join_timeout", f"no join within {self.join_timeout:g} s",
                                      close=WSCloseCode.POLICY_VIOLATION)
            try:
                msg = await ws.receive(timeout=timeout)
            except TimeoutError:
                continue  # the deadline check above answers it
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue
            size = len(msg.data.encode("utf-8")) if msg.type == WSMsgType.TEXT else len(msg.data)
            if size > self.max_message_bytes:
                await self._strike(peer, "too_large",
                                   f"message of {size} bytes exceeds {self.max_message_bytes}")
                continue
            if not peer.bucket.take():
                await self._rate_limited(peer)
                continue
            if msg.type == WSMsgType.BINARY:
                await self._strike(peer, "malformed", "messages are JSON text frames")
                continue
            try:
                message = decode_message(msg.data)
                if message["type"] not in CLIENT_TYPES:
                    raise MalformedMessageError(f"clients may not send {message['type']!r}")
            except MalformedMessageError as exc:
                await self._strike(peer, "malformed", str(exc))
                continue
            if message["type"] == JOIN:
                if peer.room is not None:
                    await self._strike(peer, "malformed", "already joined")
                else:
                    await self._join(peer, message)
            elif peer.room is None:
                await self._strike(peer, "not_joined", "the first message must be 'join'")
            elif message["type"] == READY:
                await self._ready(peer, message)
            else:
                await self._relay(peer, msg.data)

    # ----------------------------------------------------------------- protocol

    async def _join(self, peer: _Peer, message: dict[str, Any]) -> None:
        name = message["room"]  # validated: 1-64 chars of [A-Za-z0-9_.-], safe to log
        if not hmac.compare_digest(message["token"].encode("utf-8"), self._token):
            await self._error(peer, "bad_token", "wrong token", close=WSCloseCode.POLICY_VIOLATION, room=name)
        room = self._rooms.get(name)
        if room is None:
            if len(self._rooms) >= self.max_rooms:
                await self._error(peer, "server_full", "the server holds its maximum number of rooms",
                                  close=WSCloseCode.TRY_AGAIN_LATER, room=name)
            room = self._rooms[name] = _Room(name)
        # The one already present keeps its role; the newcomer takes the free seat.
        free = [role for role in (ROLE_OFFER, ROLE_ANSWER) if room.seats[role] is None]
        if not free:
            await self._error(peer, "room_full", "the room already has two peers",
                              close=WSCloseCode.POLICY_VIOLATION, room=name)
        peer.role = free[0]
        peer.room = room
        # Normalized, so the other side always sees every field.
        peer.capabilities = Capabilities.from_dict(message["capabilities"]).to_dict()
        peer.ready = message.get("ready", True)
        room.seats[peer.role] = peer
        other = room.other(peer)
        log.info("room %r: peer from %s joined as %s%s (%d of 2 seats taken)", name, peer.remote,
                 peer.role, "" if peer.ready else ", not ready yet", 2 - len(free) + 1)
        # An unannounced peer is invisible to the other until its `ready`.
        await self._send(peer, {"type": JOINED, "role": peer.role,
                                "peer": other.capabilities if other is not None and other.ready else None})
        if other is not None and peer.ready:
            await self._send(other, {"type": PEER, "capabilities": peer.capabilities})

    async def _ready(self, peer: _Peer, message: dict[str, Any]) -> None:
        assert peer.room is not None
        if peer.ready:
            await self._strike(peer, "malformed", "'ready' after a join that was already ready")
            return
        peer.capabilities = Capabilities.from_dict(message["capabilities"]).to_dict()
        peer.ready = True
        log.info("room %r: the %s peer from %s is ready", peer.room.name, peer.role, peer.remote)
        other = peer.room.other(peer)
        if other is not None:
            await self._send(other, {"type": PEER, "capabilities": peer.capabilities})

    async def _relay(self, peer: _Peer, text: str) -> None:
        assert peer.room is not None
        other = peer.room.other(peer)
        if other is None:
            await self._send(peer, error_message("no_peer", "no other peer in the room"))
            return
        try:
            await other.ws.send_str(text)  # verbatim: the server never re-encodes a peer's message
        except ConnectionError:
            pass  # the other side is going away; its handler announces peer_left

    async def _leave(self, peer: _Peer) -> None:
        room = peer.room
        if room is None:
            return
        peer.room = None
        if room.seats.get(peer.role) is peer:
            room.seats[peer.role] = None
        other = room.other(peer)
        if room.empty():
            if self._rooms.get(room.name) is room:
                del self._rooms[room.name]
        elif other is not None and peer.ready and not self._stopping:
            await self._send(other, {"type": PEER_LEFT})  # only one it was told about
        log.info("room %r: the %s peer from %s left (%s)", room.name, peer.role, peer.remote,
                 "room closed" if room.empty() else "1 of 2 seats taken")

    # ----------------------------------------------------------------- errors

    async def _send(self, peer: _Peer, message: dict[str, Any]) -> None:
        if peer.ws.closed:
            return
        try:
            await peer.ws.send_str(encode_message(message))
        except ConnectionError:
            pass

    async def _error(self, peer: _Peer, code: str, message: str, *, close: int | None = None,
                     room: str | None = None) -> None:
        # One line per refusal, for whoever runs the server; plain rate-limit drops would flood it.
        level = logging.DEBUG if code == "rate_limited" and close is None else logging.INFO
        where = room if room is not None else peer.room.name if peer.room is not None else None
        log.log(level, "%s: %s from %s: %s%s", "no room" if where is None else f"room {where!r}",
                code, peer.remote, message, "; closing" if close is not None else "")
        await self._send(peer, error_message(code, message))
        if close is not None:
            raise _Close(close)

    async def _strike(self, peer: _Peer, code: str, message: str) -> None:
        peer.strikes += 1
        close = WSCloseCode.POLICY_VIOLATION if peer.strikes >= self.max_malformed else None
        if close is not None:
            message += f" (closing after {self.max_malformed} bad messages)"
        await self._error(peer, code, message, close=close)

    async def _rate_limited(self, peer: _Peer) -> None:
        now = time.monotonic()
        peer.abuse = max(0.0, peer.abuse - (now - peer.abuse_time)) + 1.0
        peer.abuse_time = now
        if peer.abuse > self.abuse_limit:
            await self._error(peer, "rate_limited", "sustained flooding; closing",
                              close=WSCloseCode.POLICY_VIOLATION)
        await self._error(peer, "rate_limited",
                          f"over {self.rate:g} messages/s (burst {self.burst}); message dropped")

