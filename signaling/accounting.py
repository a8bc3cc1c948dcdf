"""The signaling server's books: who is connected, who sits in which room, and how much of
the server one client address may take.

Records and rules only, no I/O: a connection (:class:`Peer`) with its token bucket and
abuse counts, a room of two (:class:`Room`), and the per-client caps counted over the open
connections (:class:`ClientLimits`). :mod:`signaling.server` keeps the books and answers
the refusals.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from signaling.messages import ROLE_ANSWER, ROLE_OFFER

if TYPE_CHECKING:
    from aiohttp import web

# File descriptors kept free of WebSockets: the listening socket, logs, imports, the loop.
FD_RESERVE = 64


def default_max_connections() -> int:
    """Connections the server accepts at once: its soft file-descriptor limit less a reserve
    (960 under the common 1,024), at most 10,000, so accept() never fails for lack of fds."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 10_000 + FD_RESERVE
    return max(16, min(10_000, soft - FD_RESERVE))


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
class Peer:
    """One WebSocket connection, joined to a room or not yet."""

    ws: web.WebSocketResponse
    bucket: TokenBucket
    remote: str = "?"  # the client's address, for the log
    room: Room | None = None
    role: str | None = None
    capabilities: dict[str, Any] | None = None
    ready: bool = True  # False: seated but not yet announced to the other peer
    strikes: int = 0  # malformed / not_joined / too_large messages so far
    # Dropped-by-rate-limit count that leaks 1/s: only sustained flooding reaches the limit.
    abuse: float = 0.0
    abuse_time: float = field(default_factory=time.monotonic)
    # Fires when the peer has sat alone in its room for the server's lone_timeout.
    alone_timer: asyncio.TimerHandle | None = None

    def count_dropped(self) -> float:
        """Count one message dropped by the rate limit; returns the leaky abuse count."""
        now = time.monotonic()
        self.abuse = max(0.0, self.abuse - (now - self.abuse_time)) + 1.0
        self.abuse_time = now
        return self.abuse


@dataclass(eq=False)
class Room:
    name: str
    seats: dict[str, Peer | None] = field(default_factory=lambda: {ROLE_OFFER: None, ROLE_ANSWER: None})

    def other(self, peer: Peer) -> Peer | None:
        for seated in self.seats.values():
            if seated is not None and seated is not peer:
                return seated
        return None

    def empty(self) -> bool:
        return all(seated is None for seated in self.seats.values())


@dataclass(frozen=True)
class ClientLimits:
    """The server's cap on connections, and what one client address may hold of them.

    Two peers on one machine share an address, as do clients behind one NAT; the server's
    defaults leave room for several calls from one address.
    """

    max_connections: int
    max_connections_per_client: int
    max_unjoined_per_client: int
    max_rooms_per_client: int

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_connections_per_client", "max_unjoined_per_client",
                     "max_rooms_per_client"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")

    def admission_refusal(self, peers: Collection[Peer], remote: str) -> tuple[str, str] | None:
        """(code, message) when one more connection from ``remote`` is over a cap; ``peers``
        are the connections open before it."""
        if len(peers) >= self.max_connections:
            return "server_full", f"the server holds its maximum of {self.max_connections} connections"
        mine = [p for p in peers if p.remote == remote]
        if len(mine) >= self.max_connections_per_client:
            return ("too_many_connections",
                    f"this address holds its maximum of {self.max_connections_per_client} connections")
        if sum(1 for p in mine if p.room is None) >= self.max_unjoined_per_client:
            message = (f"this address holds its maximum of {self.max_unjoined_per_client} "
                       "connections that have not joined a room")
            return "too_many_connections", message
        return None

    def rooms_refusal(self, peers: Collection[Peer], remote: str) -> str | None:
        """Why ``remote`` may not take another seat (it sits in its maximum of rooms), or None."""
        seats = sum(1 for p in peers if p.remote == remote and p.room is not None)
        if seats >= self.max_rooms_per_client:
            return f"this address sits in its maximum of {self.max_rooms_per_client} rooms"
        return None
