"""The signaling server: rooms of two, a shared-secret token, and a verbatim relay.

It only introduces the two peers of a call (roles, capabilities, SDP offer/answer); the
call itself then runs peer to peer over WebRTC. Endpoints:

- ``GET /ws``: the WebSocket protocol of ``signaling.messages``;
- ``GET /health``: ``{"ok": true}`` for anyone (a liveness probe); with the header
  ``Authorization: Bearer <token>`` also the counts (``rooms``, ``peers``, ``connections``),
  which tell an outsider how busy the server is and so stay behind the token.

Defences:

- per connection: a join deadline, a size limit (a soft one answered with ``too_large`` and
  a hard one, aiohttp's ``max_msg_size``, that closes), a token bucket, and a cap on
  malformed messages; strings with lone UTF-16 surrogates are malformed;
- per client address: caps on open connections, on connections that have not joined yet
  and on rooms it sits in, so one token holder cannot take every room or socket (these
  caps, the token bucket and the connection and room records: :mod:`signaling.accounting`);
- per peer: a lone-peer timeout (alone in its room that long, it is told and closed);
- per server: a cap on connections below the process's file-descriptor limit, and an HTTP
  deadline equal to the join timeout, so sockets that never finish their request close.

Every refusal is a typed error (``signaling.errors``) and one log line, never a traceback.
The token is compared in constant time and never logged.

Logged at INFO, one line each, with the room and the peer's address: joins, ``ready``
announcements, leaves and every refusal or error answered (bad token, room full,
malformed, ...) with its reason; dropped-by-rate-limit messages only at DEBUG.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from signaling.accounting import ClientLimits, Peer, Room, TokenBucket, default_max_connections
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
class _WebSocket(web.WebSocketResponse):
    """aiohttp's WebSocketResponse, less a leak found under abuse (aiohttp 3.14.5).

    When the server closes first, the client's close frame arrives after ``close()`` has
    cancelled the heartbeat, and ``_on_data_received`` arms it again: the timer, then a ping
    and a pong deadline, keep the closed response, its request and its protocol alive for
    about 1.5 heartbeats (45 s at 30 s). Under a flood of refused connections that held
    ~3 KB per connection and the server's memory grew round after round. A closed socket
    needs no heartbeat, so data arriving after the close is not heartbeat-worthy.
    """

    def _on_data_received(self) -> None:
        if self.closed:
            return
        super()._on_data_received()


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
                 abuse_limit: int | None = None, heartbeat: float | None = 30.0,
                 max_connections: int | None = None, max_connections_per_client: int = 32,
                 max_unjoined_per_client: int = 8, max_rooms_per_client: int = 16,
                 lone_timeout: float = 600.0):
        if not isinstance(token, str) or not token:
            raise ValueError("the signaling server needs a non-empty token")
        try:
            token.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("the token must be valid Unicode") from None
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
        self.limits = ClientLimits(default_max_connections() if max_connections is None else max_connections,
                                   max_connections_per_client, max_unjoined_per_client, max_rooms_per_client)
        # Longer than a caller's default wait for its peer (app.call.WAIT_S, 120 s): a
        # client that waits longer is closed and rejoins, a dead one frees its room.
        self.lone_timeout = lone_timeout
        if join_timeout <= 0 or lone_timeout <= 0:
            raise ValueError("join_timeout and lone_timeout must be > 0")
        self._rooms: dict[str, Room] = {}
        self._peers: set[Peer] = set()
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
        """What ``/health`` reports to a token holder: rooms open, peers joined, connections."""
        return {"rooms": len(self._rooms), "peers": sum(1 for p in self._peers if p.room is not None),
                "connections": len(self._peers)}

    async def start(self) -> None:
        """Bind and start serving. Raises OSError when the port is taken."""
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_get("/ws", self._handle_ws)
        app.router.add_get("/health", self._handle_health)
        # No access log: request lines carry nothing useful and would be noise at call rates.
        # keepalive_timeout also runs from the moment a socket connects, so one that never
        # completes its HTTP request (or idles after /health) closes after the join timeout
        # rather than aiohttp's default of about an hour.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0,
                               keepalive_timeout=self.join_timeout)
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

    def _token_holder(self, request: web.Request) -> bool:
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        # Compared as bytes, in constant time; surrogateescape keeps any header bytes comparable.
        given = credentials.strip().encode("utf-8", "surrogateescape")
        return scheme.lower() == "bearer" and hmac.compare_digest(given, self._token)

    async def _handle_health(self, request: web.Request) -> web.Response:
        if self._token_holder(request):
            return web.json_response({"ok": True, **self.stats})
        return web.json_response({"ok": True})

    async def _handle_ws(self, request: web.Request) -> web.StreamResponse:
        if self._stopping:
            return web.Response(status=503, text="shutting down")
        remote = request.remote or "?"
        refusal = self.limits.admission_refusal(self._peers, remote)  # before this one joins the set
        ws = _WebSocket(max_msg_size=self.hard_message_bytes, heartbeat=self.heartbeat)
        await ws.prepare(request)
        peer = Peer(ws=ws, bucket=TokenBucket(self.rate, self.burst), remote=remote)
        self._peers.add(peer)
        close_code = WSCloseCode.OK
        try:
            if refusal is not None:
                code, message = refusal
                await self._error(peer, code, message, close=WSCloseCode.TRY_AGAIN_LATER)
            await self._serve(peer)
        except _Close as exc:
            close_code = exc.close_code
        except Exception as exc:  # a bug here must not flood the log with tracebacks
            log.warning("internal error serving %s: %s: %s; closing", remote, type(exc).__name__, exc)
            log.debug("internal error details", exc_info=True)
            await self._send(peer, error_message("server_error", "internal server error"))
            close_code = WSCloseCode.INTERNAL_ERROR
        finally:
            self._peers.discard(peer)
            await self._leave(peer)
            if not ws.closed:
                await ws.close(code=close_code)
        return ws

    async def _serve(self, peer: Peer) -> None:
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

    async def _join(self, peer: Peer, message: dict[str, Any]) -> None:
        name = message["room"]  # validated: 1-64 chars of [A-Za-z0-9_.-], safe to log
        if not hmac.compare_digest(message["token"].encode("utf-8"), self._token):
            await self._error(peer, "bad_token", "wrong token", close=WSCloseCode.POLICY_VIOLATION, room=name)
        room = self._rooms.get(name)
        if room is None:
            if len(self._rooms) >= self.max_rooms:
                await self._error(peer, "server_full", "the server holds its maximum number of rooms",
                                  close=WSCloseCode.TRY_AGAIN_LATER, room=name)
        # The one already present keeps its role; the newcomer takes the free seat.
        if room is not None and all(seated is not None for seated in room.seats.values()):
            await self._error(peer, "room_full", "the room already has two peers",
                              close=WSCloseCode.POLICY_VIOLATION, room=name)
        too_many = self.limits.rooms_refusal(self._peers, peer.remote)
        if too_many is not None:
            await self._error(peer, "too_many_rooms", too_many, close=WSCloseCode.POLICY_VIOLATION, room=name)
        if room is None:
            room = self._rooms[name] = Room(name)
        free = [role for role in (ROLE_OFFER, ROLE_ANSWER) if room.seats[role] is None]
        peer.role = free[0]
        peer.room = room
        # Normalized, so the other side always sees every field.
        peer.capabilities = Capabilities.from_dict(message["capabilities"]).to_dict()
        peer.ready = message.get("ready", True)
        room.seats[peer.role] = peer
        other = room.other(peer)
        if other is None:
            self._start_alone_timer(peer)
        else:
            self._stop_alone_timer(other)
        log.info("room %r: peer from %s joined as %s%s (%d of 2 seats taken)", name, peer.remote,
                 peer.role, "" if peer.ready else ", not ready yet", 2 - len(free) + 1)
        # An unannounced peer is invisible to the other until its `ready`.
        await self._send(peer, {"type": JOINED, "role": peer.role,
                                "peer": other.capabilities if other is not None and other.ready else None})
        if other is not None and peer.ready:
            await self._send(other, {"type": PEER, "capabilities": peer.capabilities})

    async def _ready(self, peer: Peer, message: dict[str, Any]) -> None:
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

    async def _relay(self, peer: Peer, text: str) -> None:
        assert peer.room is not None
        other = peer.room.other(peer)
        if other is None:
            await self._send(peer, error_message("no_peer", "no other peer in the room"))
            return
        try:
            await other.ws.send_str(text)  # verbatim: the server never re-encodes a peer's message
        except ConnectionError:
            pass  # the other side is going away; its handler announces peer_left

    def _start_alone_timer(self, peer: Peer) -> None:
        self._stop_alone_timer(peer)
        loop = asyncio.get_running_loop()
        peer.alone_timer = loop.call_later(self.lone_timeout,
                                           lambda: asyncio.ensure_future(self._evict_alone(peer)))

    @staticmethod
    def _stop_alone_timer(peer: Peer) -> None:
        if peer.alone_timer is not None:
            peer.alone_timer.cancel()
            peer.alone_timer = None

    async def _evict_alone(self, peer: Peer) -> None:
        """The lone-peer timeout: tell the peer, then close; its handler then leaves the room."""
        peer.alone_timer = None
        if peer.room is None or peer.room.other(peer) is not None or peer.ws.closed:
            return
        log.info("room %r: alone_timeout for %s: alone for %g s; closing", peer.room.name, peer.remote,
                 self.lone_timeout)
        await self._send(peer, error_message("alone_timeout",
                                             f"no other peer joined within {self.lone_timeout:g} s"))
        try:
            await peer.ws.close(code=WSCloseCode.POLICY_VIOLATION)
        except ConnectionError:
            pass

    async def _leave(self, peer: Peer) -> None:
        self._stop_alone_timer(peer)
        room = peer.room
        if room is None:
            return
        peer.room = None
        if room.seats.get(peer.role) is peer:
            room.seats[peer.role] = None
        other = room.other(peer)
        if other is not None and not self._stopping:
            self._start_alone_timer(other)
        if room.empty():
            if self._rooms.get(room.name) is room:
                del self._rooms[room.name]
        elif other is not None and peer.ready and not self._stopping:
            await self._send(other, {"type": PEER_LEFT})  # only one it was told about
        log.info("room %r: the %s peer from %s left (%s)", room.name, peer.role, peer.remote,
                 "room closed" if room.empty() else "1 of 2 seats taken")

    # ----------------------------------------------------------------- errors

    async def _send(self, peer: Peer, message: dict[str, Any]) -> None:
        if peer.ws.closed:
            return
        try:
            await peer.ws.send_str(encode_message(message))
        except ConnectionError:
            pass

    async def _error(self, peer: Peer, code: str, message: str, *, close: int | None = None,
                     room: str | None = None) -> None:
        # One line per refusal, for whoever runs the server; plain rate-limit drops would flood it.
        level = logging.DEBUG if code == "rate_limited" and close is None else logging.INFO
        where = room if room is not None else peer.room.name if peer.room is not None else None
        log.log(level, "%s: %s from %s: %s%s", "no room" if where is None else f"room {where!r}",
                code, peer.remote, message, "; closing" if close is not None else "")
        await self._send(peer, error_message(code, message))
        if close is not None:
            raise _Close(close)

    async def _strike(self, peer: Peer, code: str, message: str) -> None:
        peer.strikes += 1
        close = WSCloseCode.POLICY_VIOLATION if peer.strikes >= self.max_malformed else None
        if close is not None:
            message += f" (closing after {self.max_malformed} bad messages)"
        await self._error(peer, code, message, close=close)

    async def _rate_limited(self, peer: Peer) -> None:
        if peer.count_dropped() > self.abuse_limit:
            await self._error(peer, "rate_limited", "sustained flooding; closing",
                              close=WSCloseCode.POLICY_VIOLATION)
        await self._error(peer, "rate_limited",
                          f"over {self.rate:g} messages/s (burst {self.burst}); message dropped")

