"""Signaling: the real server over 127.0.0.1, the client, the in-memory pair, the aiortc
helpers and the ``serve-signaling`` command. Every await has a timeout so nothing can hang."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from signaling import (
    BadTokenError,
    Capabilities,
    InMemorySignaling,
    MalformedMessageError,
    MessageTooLargeError,
    NoPeerError,
    NotJoinedError,
    RateLimitedError,
    RoomFullError,
    ServerFullError,
    SignalingChannel,
    SignalingClient,
    SignalingClosedError,
    SignalingError,
    SignalingServer,
    SignalingTimeoutError,
    validate_message,
)
from signaling.accounting import TokenBucket
from signaling.errors import ERROR_CLASSES, error_from_code

REPO = Path(__file__).resolve().parents[1]
TOKEN = "test-token-7f3a9c"
T = 5.0  # seconds any single await may take


def run(coro, timeout: float = 30.0) -> Any:
    """Run one async test body with an overall deadline."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def caps(name: str = "vox256", fps: float = 25.0, **kw: Any) -> Capabilities:
    return Capabilities(has_weights=True, model=name, weights_sha256_prefix="ab12cd34",
                        untrained=False, render_fps=fps, codecs=["neural", "h264"], **kw)


async def joined_pair(server: SignalingServer, room: str = "room1") -> tuple[SignalingClient, SignalingClient]:
    """Two clients in ``room``; a's ``peer`` notice already consumed."""
    a = SignalingClient(server.url, TOKEN, room, caps("a", 30.0))
    await asyncio.wait_for(a.connect(), T)
    b = SignalingClient(server.url, TOKEN, room, caps("b", 12.5))
    await asyncio.wait_for(b.connect(), T)
    notice = await a.receive(timeout=T)
    assert notice["type"] == "peer"
    return a, b


async def health(server: SignalingServer) -> dict[str, int]:
    """The token holder's /health counts, rooms and peers."""
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{server.port}/health", headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=aiohttp.ClientTimeout(total=T)) as response:
        assert response.status == 200
        reply = await response.json()
    assert reply.pop("ok") is True and reply.pop("connections") >= reply["peers"]
    return reply


async def raw_ws(session: aiohttp.ClientSession, server: SignalingServer) -> aiohttp.ClientWebSocketResponse:
    return await asyncio.wait_for(session.ws_connect(server.url), T)


def join_msg(room: str = "room1", token: str = TOKEN) -> dict[str, Any]:
    return {"type": "join", "room": room, "token": token, "capabilities": caps().to_dict()}


# ----------------------------------------------------------------------------- server + client


def test_join_roles_capabilities_and_health():
    async def body():
        async with SignalingServer(TOKEN) as server:
            assert server.url == f"ws://127.0.0.1:{server.port}/ws" and server.port > 0
            a = SignalingClient(server.url, TOKEN, "room1", caps("a", 30.0))
            await asyncio.wait_for(a.connect(), T)
            assert a.role == "offer" and a.peer_capabilities is None
            assert await health(server) == {"rooms": 1, "peers": 1}
            b = SignalingClient(server.url, TOKEN, "room1", caps("b", 12.5))
            await asyncio.wait_for(b.connect(), T)
            assert b.role == "answer"
            assert b.peer_capabilities == caps("a", 30.0)  # a's capabilities, given at join
            notice = await a.receive(timeout=T)
            assert notice == {"type": "peer", "capabilities": caps("b", 12.5).to_dict()}
            assert a.peer_capabilities == caps("b", 12.5)
            assert await a.wait_for_peer(timeout=T) == caps("b", 12.5)
            assert await b.wait_for_peer(timeout=T) == caps("a", 30.0)
            assert await health(server) == {"rooms": 1, "peers": 2}
            await a.close()
            await b.close()
    run(body())


def test_relay_both_ways_verbatim():
    async def body():
        async with SignalingServer(TOKEN) as server:
            a, b = await joined_pair(server)
            offer = {"type": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n", "extra": [1, "x"]}
            await a.send(offer)
            assert await b.receive(timeout=T) == offer
            answer = {"type": "answer", "sdp": "v=0\r\n"}
            await b.send(answer)
            assert await a.receive(timeout=T) == answer
            host = {"candidate": "candidate:1 1 udp 1 h 1 typ host"}
            for message in ({"type": "candidate", "candidate": host},
                            {"type": "candidate", "candidate": None},
                            {"type": "app", "data": {"keyframe": "…ünïcode"}},
                            {"type": "bye"}):
                await b.send(message)
                assert await a.receive(timeout=T) == message
            await a.close()
            await b.close()
    run(body())


def test_wait_for_peer_waits_and_times_out():
    async def body():
        async with SignalingServer(TOKEN) as server:
            a = SignalingClient(server.url, TOKEN, "r", caps("a"))
            await asyncio.wait_for(a.connect(), T)
            with pytest.raises(SignalingTimeoutError):
                await a.wait_for_peer(timeout=0.2)
            with pytest.raises(SignalingTimeoutError):
                await a.receive(timeout=0.1)
            waiter = asyncio.ensure_future(a.wait_for_peer(timeout=T))
            await asyncio.sleep(0.05)
            b = SignalingClient(server.url, TOKEN, "r", caps("b"))
            await asyncio.wait_for(b.connect(), T)
            assert await asyncio.wait_for(waiter, T) == caps("b")
            await a.close()
            await b.close()
    run(body())


def test_third_peer_refused_room_full():
    async def body():
        async with SignalingServer(TOKEN) as server:
            a, b = await joined_pair(server)
            c = SignalingClient(server.url, TOKEN, "room1", caps("c"))
            with pytest.raises(RoomFullError):
                await asyncio.wait_for(c.connect(), T)
            await c.close()
            # The two in the room are unaffected.
            await a.send({"type": "app", "n": 1})
            assert await b.receive(timeout=T) == {"type": "app", "n": 1}
            assert await health(server) == {"rooms": 1, "peers": 2}
            await a.close()
            await b.close()
    run(body())


def test_bad_token_refused_and_never_logged(caplog):
    caplog.set_level(logging.DEBUG)

    async def body():
        async with SignalingServer(TOKEN) as server:
            bad = SignalingClient(server.url, TOKEN + "x", "room1", caps())
            with pytest.raises(BadTokenError):
                await asyncio.wait_for(bad.connect(), T)
            await bad.close()
            assert await health(server) == {"rooms": 0, "peers": 0}
            a, b = await joined_pair(server)  # the right token still works
            assert TOKEN not in repr(a)
            await a.close()
            await b.close()
    run(body())
    assert TOKEN not in caplog.text


def test_server_full():
    async def body():
        async with SignalingServer(TOKEN, max_rooms=1) as server:
            a = SignalingClient(server.url, TOKEN, "one", caps())
            await asyncio.wait_for(a.connect(), T)
            other = SignalingClient(server.url, TOKEN, "two", caps())
            with pytest.raises(ServerFullError):
                await asyncio.wait_for(other.connect(), T)
            await other.close()
            b = SignalingClient(server.url, TOKEN, "one", caps())  # an existing room still fills
            await asyncio.wait_for(b.connect(), T)
            assert b.role == "answer"
            await a.close()
            await b.close()
    run(body())


def test_unannounced_peer_holds_its_seat_and_shows_up_when_ready():
    """A peer joins with ready=False before its slow model load: the token and the seat are
    checked at once, the other peer learns of it only at `announce`, with its real
    capabilities, and a third peer is refused meanwhile."""
    async def body():
        async with SignalingServer(TOKEN) as server:
            a = SignalingClient(server.url, TOKEN, "room1", caps("a", 30.0))
            await asyncio.wait_for(a.connect(), T)
            b = SignalingClient(server.url, TOKEN, "room1", Capabilities(), ready=False)
            await asyncio.wait_for(b.connect(), T)
            assert b.role == "answer" and b.peer_capabilities == caps("a", 30.0)
            with pytest.raises(SignalingTimeoutError):
                await a.wait_for_peer(timeout=0.3)  # a does not see b yet
            c = SignalingClient(server.url, TOKEN, "room1", caps("c"))
            with pytest.raises(RoomFullError):
                await asyncio.wait_for(c.connect(), T)
            await c.close()
            await b.announce(caps("b", 12.5))
            assert await a.receive(timeout=T) == {"type": "peer", "capabilities": caps("b", 12.5).to_dict()}
            await b.send({"type": "app", "n": 1})
            assert await a.receive(timeout=T) == {"type": "app", "n": 1}
            await b.send_raw(json.dumps({"type": "ready", "capabilities": caps().to_dict()}))
            with pytest.raises(MalformedMessageError):  # announcing twice is a client bug
                await b.receive(timeout=T)
            # An unannounced peer leaves without a trace: the other one was never told of it.
            d = SignalingClient(server.url, TOKEN, "room2", caps("d"))
            await asyncio.wait_for(d.connect(), T)
            e = SignalingClient(server.url, TOKEN, "room2", Capabilities(), ready=False)
            await asyncio.wait_for(e.connect(), T)
            await e.close()
            with pytest.raises(SignalingTimeoutError):
                await d.receive(timeout=0.3)
            for client in (a, b, d):
                await client.close()
    run(body())


def test_server_logs_joins_leaves_and_refusals_with_the_room_never_the_token(caplog):
    caplog.set_level(logging.INFO, logger="facecodec.signaling")

    async def body():
        async with SignalingServer(TOKEN) as server:
            a, b = await joined_pair(server, "kitchen")
            for client in (SignalingClient(server.url, TOKEN + "x", "kitchen", caps()),
                           SignalingClient(server.url, TOKEN, "kitchen", caps())):
                with pytest.raises((BadTokenError, RoomFullError)):
                    await asyncio.wait_for(client.connect(), T)
                await client.close()
            await a.send_raw("{not json")
            with pytest.raises(MalformedMessageError):
                await a.receive(timeout=T)
            await b.close()
            assert await a.receive(timeout=T) == {"type": "peer_left"}
            await a.close()
    run(body())
    lines = [r.getMessage() for r in caplog.records
             if r.name == "facecodec.signaling" and r.levelno == logging.INFO]
    for expected in ("room 'kitchen': peer from 127.0.0.1 joined as offer",
                     "room 'kitchen': peer from 127.0.0.1 joined as answer",
                     "room 'kitchen': bad_token from 127.0.0.1: wrong token",
                     "room 'kitchen': room_full from 127.0.0.1: the room already has two peers",
                     "room 'kitchen': malformed from 127.0.0.1: invalid JSON",
                     "room 'kitchen': the answer peer from 127.0.0.1 left",
                     "room 'kitchen': the offer peer from 127.0.0.1 left (room closed)"):
        assert sum(line.startswith(expected) for line in lines) == 1, (expected, lines)
    assert TOKEN not in caplog.text


@pytest.mark.parametrize("text, why", [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "not an object"),
    ('{"type": 3}', "type not a string"),
    ('{"type": "nope"}', "unknown type"),
    ('{"type": "offer"}', "missing sdp"),
    ('{"type": "offer", "sdp": 5}', "wrong-typed sdp"),
    ('{"type": "candidate", "candidate": "x"}', "wrong-typed candidate"),
    ('{"type": "joined", "role": "offer", "peer": null}', "server-only type"),
    ('{"type": "join", "room": "room1", "token": "t", "capabilities": {}}', "second join"),
])
def test_malformed_message_reported_and_connection_survives(text, why):
    async def body():
        async with SignalingServer(TOKEN) as server:
            a, b = await joined_pair(server)
            await a.send_raw(text)
            with pytest.raises(MalformedMessageError):
                await a.receive(timeout=T)
            await a.send({"type": "app", "still": "open"})
            assert await b.receive(timeout=T) == {"type": "app", "still": "open"}
            await a.close()
            await b.close()
    run(body())


def test_too_many_malformed_messages_close():
    async def body():
        async with SignalingServer(TOKEN, max_malformed=3) as server:
            a, b = await joined_pair(server)
            for _ in range(3):
                await a.send_raw("nonsense")
            for _ in range(3):
                with pytest.raises(MalformedMessageError):
                    await a.receive(timeout=T)
            with pytest.raises(SignalingClosedError) as info:
                await a.receive(timeout=T)
            assert info.value.close_code == 1008
            assert await b.receive(timeout=T) == {"type": "peer_left"}
            await a.close()
            await b.close()
    run(body())


def test_message_too_large_soft_then_hard_limit():
    async def body():
        async with SignalingServer(TOKEN, max_message_bytes=1024) as server:
            a, b = await joined_pair(server)
            # Over the limit: reported, dropped, connection kept.
            await a.send({"type": "app", "blob": "x" * 1500})
            with pytest.raises(MessageTooLargeError):
                await a.receive(timeout=T)
            await a.send({"type": "app", "blob": "x" * 900})
            assert (await b.receive(timeout=T))["blob"] == "x" * 900
            # Over aiohttp's hard limit (2x): aiohttp stops reading and closes with 1009.
            await a.send({"type": "app", "blob": "x" * 5000})
            with pytest.raises(MessageTooLargeError):
                await a.receive(timeout=T)
            with pytest.raises(SignalingClosedError) as info:
                await a.receive(timeout=T)
            assert info.value.close_code == 1009
            assert await b.receive(timeout=T) == {"type": "peer_left"}
            await a.close()
            await b.close()
    run(body())


def test_token_bucket():
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5  # one token back
    assert [bucket.take(), bucket.take()] == [True, False]
    now[0] += 100.0  # refills only up to burst
    assert sum(bucket.take() for _ in range(10)) == 3


def test_rate_limit_drops_then_closes_on_sustained_flood():
    async def body():
        # 0.5 msg/s refill: no token comes back during the test, so counts are exact.
        async with SignalingServer(TOKEN, rate=0.5, burst=6, abuse_limit=12) as server:
            a, b = await joined_pair(server)  # the join took one token: 5 left
            for i in range(10):
                await a.send({"type": "app", "i": i})
            for i in range(5):
                assert await b.receive(timeout=T) == {"type": "app", "i": i}
            with pytest.raises(SignalingTimeoutError):
                await b.receive(timeout=0.3)  # the other 5 were dropped
            for _ in range(5):
                with pytest.raises(RateLimitedError):
                    await a.receive(timeout=T)
            # Sustained flooding: the server gives up on the connection.
            for i in range(20):
                try:
                    await a.send({"type": "app", "i": i})
                except SignalingClosedError:
                    break
            limited = 0
            with pytest.raises(SignalingClosedError) as info:
                for _ in range(40):
                    try:
                        await a.receive(timeout=T)
                    except RateLimitedError:
                        limited += 1
            assert info.value.close_code == 1008 and 5 <= limited <= 20
            assert await b.receive(timeout=T) == {"type": "peer_left"}
            await a.close()
            await b.close()
    run(body())


def test_message_before_join_and_join_validation():
    async def body():
        async with SignalingServer(TOKEN) as server, aiohttp.ClientSession() as session:
            ws = await raw_ws(session, server)
            await ws.send_json({"type": "offer", "sdp": "v=0"})
            reply = await ws.receive_json(timeout=T)
            assert reply["type"] == "error" and reply["code"] == "not_joined"
            assert isinstance(error_from_code(reply["code"], reply["message"]), NotJoinedError)
            await ws.send_json(join_msg(room="bad room!"))
            reply = await ws.receive_json(timeout=T)
            assert reply["code"] == "malformed"
            await ws.send_json(join_msg())  # still open: a valid join now works
            reply = await ws.receive_json(timeout=T)
            assert reply == {"type": "joined", "role": "offer", "peer": None}
            await ws.close()
        with pytest.raises(MalformedMessageError):
            SignalingClient("ws://127.0.0.1:1/ws", TOKEN, "x" * 65, caps())
    run(body())


def test_join_timeout_closes():
    async def body():
        async with SignalingServer(TOKEN, join_timeout=0.3) as server, aiohttp.ClientSession() as session:
            ws = await raw_ws(session, server)
            reply = await ws.receive_json(timeout=T)
            assert reply["type"] == "error" and reply["code"] == "join_timeout"
            msg = await ws.receive(timeout=T)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert ws.close_code == 1008
    run(body())


def test_peer_leaves_and_rejoins():
    async def body():
        async with SignalingServer(TOKEN) as server:
            a, b = await joined_pair(server)
            await b.close()
            assert await a.receive(timeout=T) == {"type": "peer_left"}
            assert a.peer_capabilities is None
            await a.send({"type": "app"})
            with pytest.raises(NoPeerError):
                await a.receive(timeout=T)
            b2 = SignalingClient(server.url, TOKEN, "room1", caps("b2"))
            await asyncio.wait_for(b2.connect(), T)
            assert b2.role == "answer" and a.role == "offer"
            assert (await a.receive(timeout=T))["type"] == "peer"
            await b2.send({"type": "app", "back": True})
            assert await a.receive(timeout=T) == {"type": "app", "back": True}
            # Now the offerer leaves: the answerer keeps its role and the newcomer offers.
            await a.close()
            assert await b2.receive(timeout=T) == {"type": "peer_left"}
            c = SignalingClient(server.url, TOKEN, "room1", caps("c"))
            await asyncio.wait_for(c.connect(), T)
            assert c.role == "offer" and c.peer_capabilities == caps("b2")
            await c.send({"type": "offer", "sdp": "v=0"})
            assert (await b2.receive(timeout=T))["type"] == "peer"
            assert await b2.receive(timeout=T) == {"type": "offer", "sdp": "v=0"}
            await b2.close()
            await c.close()
            assert await health(server) == {"rooms": 0, "peers": 0}
    run(body())


def test_server_restart_client_reconnects():
    async def body():
        server = SignalingServer(TOKEN)
        await server.start()
        port = server.port
        a, b = await joined_pair(server)
        await asyncio.wait_for(server.stop(), T)
        for client in (a, b):  # shutdown closes every socket with 1001 "going away"
            with pytest.raises(SignalingClosedError) as info:
                await client.receive(timeout=T)
            assert info.value.close_code == 1001
        with pytest.raises(SignalingClosedError):
            await a.send({"type": "app"})
        with pytest.raises(SignalingClosedError):  # nothing listens: no retries, fails at once
            await asyncio.wait_for(a.connect(retries=0), T)

        reconnect = asyncio.ensure_future(a.connect(retries=40, backoff=0.05))
        await asyncio.sleep(0.3)
        assert not reconnect.done()  # still retrying against the closed port
        restarted = SignalingServer(TOKEN, port=port)
        await restarted.start()
        try:
            await asyncio.wait_for(reconnect, 10)
            assert a.role == "offer" and a.peer_capabilities is None
            await asyncio.wait_for(b.connect(retries=3, backoff=0.05), T)
            assert b.role == "answer"
            assert (await a.receive(timeout=T))["type"] == "peer"
            await a.send({"type": "app", "after": "restart"})
            assert await b.receive(timeout=T) == {"type": "app", "after": "restart"}
            await a.close()
            await b.close()
        finally:
            await restarted.stop()
    run(body())


def test_serve_forever_stops():
    async def body():
        server = SignalingServer(TOKEN)
        task = asyncio.ensure_future(server.serve_forever())
        for _ in range(100):
            await asyncio.sleep(0.02)
            if server._runner is not None:
                break
        assert (await health(server))["rooms"] == 0
        await server.stop()
        await asyncio.wait_for(task, T)
    run(body())


# ----------------------------------------------------------------------------- in-memory pair


def test_in_memory_pair_behaves_like_the_server():
    async def body():
        a, b = InMemorySignaling.pair(caps("a"), caps("b"), max_message_bytes=1024)
        assert isinstance(a, SignalingChannel) and isinstance(b, SignalingChannel)
        assert isinstance(SignalingClient("ws://h/ws", TOKEN, "r", caps()), SignalingChannel)
        assert (a.role, b.role) == ("offer", "answer")
        assert a.peer_capabilities == caps("b") and b.peer_capabilities == caps("a")
        assert await a.wait_for_peer(timeout=T) == caps("b")
        assert await a.receive(timeout=T) == {"type": "peer", "capabilities": caps("b").to_dict()}
        with pytest.raises(SignalingTimeoutError):
            await b.receive(timeout=0.05)  # b learned about a at join, as from the server
        offer = {"type": "offer", "sdp": "v=0", "extra": {"k": [1]}}
        await a.send(offer)
        got = await b.receive(timeout=T)
        assert got == offer and got is not offer  # a copy, as over the wire
        await b.send({"type": "answer", "sdp": "v=1"})
        assert await a.receive(timeout=T) == {"type": "answer", "sdp": "v=1"}
        with pytest.raises(MalformedMessageError):
            await a.send({"type": "joined", "role": "offer", "peer": None})
        with pytest.raises(MalformedMessageError):
            await a.send({"type": "app", "x": float("nan")})
        await a.send({"type": "app", "blob": "x" * 2000})
        with pytest.raises(MessageTooLargeError):
            await a.receive(timeout=T)
        await b.close()
        assert await a.receive(timeout=T) == {"type": "peer_left"}
        assert a.peer_capabilities is None
        await a.send({"type": "app"})
        with pytest.raises(NoPeerError):
            await a.receive(timeout=T)
        with pytest.raises(SignalingClosedError):
            await b.receive(timeout=T)
        with pytest.raises(SignalingClosedError):
            await b.send({"type": "app"})
        with pytest.raises(SignalingClosedError):
            await b.wait_for_peer(timeout=T)
        await a.close()
        with pytest.raises(SignalingClosedError):
            await a.receive(timeout=T)
    run(body())


# ----------------------------------------------------------------------------- messages


def test_capabilities_round_trip():
    c = caps()
    assert Capabilities.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    minimal = Capabilities.from_dict({"has_weights": False, "untrained": True, "render_fps": 0,
                                      "codecs": [], "future_field": 1})
    assert minimal.model is None and minimal.render_fps == 0.0 and isinstance(minimal.render_fps, float)


GOOD = caps().to_dict()


@pytest.mark.parametrize("bad", [
    None, [], "caps",
    {k: v for k, v in GOOD.items() if k != "render_fps"},
    {**GOOD, "has_weights": "yes"},
    {**GOOD, "has_weights": 1},
    {**GOOD, "untrained": None},
    {**GOOD, "render_fps": True},
    {**GOOD, "render_fps": "25"},
    {**GOOD, "render_fps": -1.0},
    {**GOOD, "render_fps": float("inf")},
    {**GOOD, "render_fps": float("nan")},
    {**GOOD, "model": 3},
    {**GOOD, "model": ""},
    {**GOOD, "weights_sha256_prefix": "XYZ"},
    {**GOOD, "weights_sha256_prefix": "AB12"},
    {**GOOD, "weights_sha256_prefix": "a" * 65},
    {**GOOD, "codecs": "neural"},
    {**GOOD, "codecs": ["neural", 3]},
    {**GOOD, "codecs": [""]},
    {**GOOD, "codecs": ["c"] * 17},
])
def test_capabilities_from_dict_rejects(bad):
    with pytest.raises(MalformedMessageError):
        Capabilities.from_dict(bad)


def test_error_codes_map_to_classes():
    for code, cls in ERROR_CLASSES.items():
        error = error_from_code(code, "m")
        assert type(error) is cls and error.code == code
    unknown = error_from_code("brand_new", "m")
    assert type(unknown) is SignalingError and unknown.code == "brand_new"


SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
JSON = st.recursive(SCALARS, lambda inner: (st.lists(inner, max_size=4)
                                            | st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                    max_leaves=12)
MESSAGE_LIKE = st.fixed_dictionaries(
    {"type": st.sampled_from(["join", "joined", "peer", "peer_left", "error", "offer", "answer",
                              "candidate", "bye", "app", "other"])},
    optional={"room": JSON | st.just("room1"), "token": JSON, "capabilities": JSON | st.just(GOOD),
              "role": JSON | st.just("offer"), "peer": JSON, "sdp": JSON, "candidate": JSON,
              "code": JSON, "message": JSON})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(JSON, MESSAGE_LIKE))
def test_validate_message_accepts_or_raises_typed(obj):
    try:
        assert validate_message(obj) is obj
    except MalformedMessageError:
        pass


# ----------------------------------------------------------------------------- aiortc


def test_allow_loopback_candidates_idempotent():
    import aioice.ice

    from rtc.peer import allow_loopback_candidates

    allow_loopback_candidates()
    allow_loopback_candidates()
    addresses = aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False)
    assert addresses.count("127.0.0.1") == 1
    assert "::1" not in addresses


def test_sdp_dict_round_trip():
    from aiortc import RTCSessionDescription

    from rtc.peer import dict_to_sdp, sdp_to_dict

    desc = RTCSessionDescription(sdp="v=0\r\n", type="offer")
    as_dict = sdp_to_dict(desc)
    assert as_dict == {"type": "offer", "sdp": "v=0\r\n"} and validate_message(as_dict)
    assert dict_to_sdp(as_dict) == desc
    for bad in (None, {"type": "offer"}, {"type": "bogus", "sdp": ""}, {"type": "answer", "sdp": 1}):
        with pytest.raises(MalformedMessageError):
            dict_to_sdp(bad)


def test_aiortc_data_channel_through_server_on_loopback_only(monkeypatch):
    """Two aiortc peers meet through the real server and exchange a data-channel message,
    with the interface list cut down to loopback, as on a machine with no other network."""
    import aioice.ice
    import ifaddr

    from rtc.peer import dict_to_sdp, new_peer_connection, sdp_to_dict

    adapters = [adapter for adapter in ifaddr.get_adapters()
                if any(ip.ip == "127.0.0.1" for ip in adapter.ips)]
    monkeypatch.setattr(aioice.ice.ifaddr, "get_adapters", lambda: adapters)

    async def next_of(channel, kind: str) -> dict[str, Any]:
        while True:
            message = await channel.receive(timeout=T)
            if message["type"] == kind:
                return message

    async def body():
        loop = asyncio.get_running_loop()
        pc_a, pc_b = new_peer_connection(), new_peer_connection()
        clients: list[SignalingClient] = []
        try:
            async with SignalingServer(TOKEN) as server:
                a, b = clients[:] = await joined_pair(server, "call")
                opened, received = loop.create_future(), loop.create_future()
                channel = pc_a.createDataChannel("motion")
                channel.on("open", lambda: opened.done() or opened.set_result(True))

                @pc_b.on("datachannel")
                def on_channel(remote):
                    remote.on("message", lambda m: received.done() or received.set_result(m))

                await asyncio.wait_for(pc_a.setLocalDescription(await pc_a.createOffer()), T)
                assert "127.0.0.1" in pc_a.localDescription.sdp  # loopback candidates gathered
                await a.send(sdp_to_dict(pc_a.localDescription))
                offer = await next_of(b, "offer")
                await asyncio.wait_for(pc_b.setRemoteDescription(dict_to_sdp(offer)), T)
                await asyncio.wait_for(pc_b.setLocalDescription(await pc_b.createAnswer()), T)
                await b.send(sdp_to_dict(pc_b.localDescription))
                answer = await next_of(a, "answer")
                await asyncio.wait_for(pc_a.setRemoteDescription(dict_to_sdp(answer)), T)
                await asyncio.wait_for(opened, 10)
                channel.send("hello over loopback")
                assert await asyncio.wait_for(received, T) == "hello over loopback"
        finally:
            await asyncio.wait_for(asyncio.gather(pc_a.close(), pc_b.close(),
                                                  *(c.close() for c in clients)), T)
    run(body(), timeout=40)


# ----------------------------------------------------------------------------- command line


def _env_without_token() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FACECODEC_SIGNALING_TOKEN"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_cli_refuses_to_start_without_token(monkeypatch, capsys):
    from signaling.__main__ import main

    monkeypatch.delenv("FACECODEC_SIGNALING_TOKEN", raising=False)
    assert main(["--port", "0"]) == 2
    assert "FACECODEC_SIGNALING_TOKEN" in capsys.readouterr().err
    proc = subprocess.run([sys.executable, "-m", "signaling", "--port", "0"], cwd=REPO,
                          env=_env_without_token(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "token" in proc.stderr


def test_cli_serves_and_stops_on_sigterm():
    env = _env_without_token()
    env["FACECODEC_SIGNALING_TOKEN"] = TOKEN
    proc = subprocess.Popen([sys.executable, "-m", "signaling", "--port", "0"], cwd=REPO, env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if "ws://" in line:
                found.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert found.wait(60), "".join(lines)
        url = next(line for line in lines if "ws://" in line).split()[-1]
        port = int(url.rsplit(":", 1)[1].split("/")[0])

        async def probe():
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/health",
                                       timeout=aiohttp.ClientTimeout(total=T)) as response:
                    return await response.json()
        assert run(probe()) == {"ok": True}  # no token: liveness only, no counts
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        reader.join(timeout=5)
        assert "stopped" in "".join(lines) and TOKEN not in "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        reader.join(timeout=5)
        proc.stderr.close()
