"""The receiver's local web viewer: a small aiohttp server that shows the rebuilt call in a
browser over WebRTC, with live stats and free-view controls.

Routes:
  GET  /           the page (receiver/static/viewer.html, with viewer.js and viewer.css)
  POST /offer      {"sdp", "type": "offer"} -> {"sdp", "type": "answer"}; one video track per
                   viewer, fed from a ``LatestFrame``
  GET  /stats      JSON from the ``stats`` callable (any flat dict; the page shows every key)
  POST /view       {"yaw", "pitch", "roll" (degrees, clamped to ±45), "frontalize"} -> on_view

Browsers and ICE: both sides use no ICE servers. Chromium hides its host addresses behind mDNS
names (``<uuid>.local``) on pages without camera access, and aioice may fail to resolve those
(it did on the test machine). It still connects with no browser flag: this server's answer
carries its real host addresses, Chromium (the controlling agent) sends its checks to them, and
aioice learns Chromium's address from those checks as a peer-reflexive candidate. Caveat:
aioice never offers 127.0.0.1, so a machine whose only interface is loopback cannot connect.
tests/test_viewer.py runs Chromium both with and without mDNS hiding.
"""

from __future__ import annotations

import asyncio
import fractions
import importlib.resources
import ipaddress
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import av
import numpy as np
from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from aiortc.mediastreams import VIDEO_CLOCK_RATE, MediaStreamError

from receiver.frames import LatestFrame
from rtc.peer import new_peer_connection

if TYPE_CHECKING:
    # codec.api pulls in torch; import it only where a view is actually built.
    from codec.api import ViewControl

__all__ = ["MAX_VIEW_ANGLE", "LatestFrameTrack", "ViewerServer"]

log = logging.getLogger(__name__)

MAX_VIEW_ANGLE = 45.0  # degrees; beyond this the generator has never seen the head
MAX_VIEWERS = 4  # each viewer costs one video encode per frame on the receiver's CPU
MAX_BODY_BYTES = 64 * 1024  # an SDP offer is a few kB
ICE_GATHER_TIMEOUT_S = 10.0  # aiortc gathers host candidates only, so this is generous
CONNECT_TIMEOUT_S = 30.0  # a viewer that never connects gives its slot back after this
PLACEHOLDER_SIZE = (256, 256)  # H, W of the black frame shown before the first decoded frame
STATIC_FILES = {
    "/": ("viewer.html", "text/html"),
    "/viewer.js": ("viewer.js", "text/javascript"),
    "/viewer.css": ("viewer.css", "text/css"),
}
_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)


class LatestFrameTrack(VideoStreamTrack):
    """A video track that sends the newest image of a ``LatestFrame`` at a fixed rate.

    It repeats the last image while nothing new arrives (the receiver holds the picture on
    packet loss) and sends black PLACEHOLDER_SIZE frames before the first one. Timestamps come
    from the wall clock, so a late frame is sent late rather than in a catch-up burst.
    """

    kind = "video"

    def __init__(self, frames: LatestFrame, fps: float = 25.0) -> None:
        super().__init__()
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        self._frames = frames
        self._period = 1.0 / fps
        self._start: float | None = None
        self._next_due = 0.0
        self._black: np.ndarray | None = None

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = self._next_due = loop.time()
        due = self._next_due
        if due > loop.time():
            await asyncio.sleep(due - loop.time())
        now = loop.time()
        # Keep the schedule through small sleep jitter; after a real stall, restart it from now.
        self._next_due = due + self._period if now - due < self._period else now + self._period

        image, _, _ = self._frames.get()
        if image is None:
            if self._black is None:
                self._black = np.zeros((*PLACEHOLDER_SIZE, 3), np.uint8)
            image = self._black
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = round((now - self._start) * VIDEO_CLOCK_RATE)
        frame.time_base = _TIME_BASE
        return frame


class _BadRequest(Exception):
    """Client input we refuse; its message goes back in the 400 response."""


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _json_safe(value: Any) -> Any:
    """``value`` with NaN/inf as null and unknown objects as strings: browsers' JSON.parse
    rejects the NaN that json.dumps writes, and the stats callable is not ours to police."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return str(value)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def _read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or _BadRequest."""
    # Requiring application/json makes a cross-site form or fetch need a CORS preflight, which
    # this server never grants: other web pages cannot steer the view or open a stream.
    if request.content_type != "application/json":
        raise _BadRequest("Content-Type must be application/json")
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise _BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _BadRequest("body must be a JSON object")
    return body


def _parse_view(body: dict[str, Any]) -> ViewControl:
    """{"yaw", "pitch", "roll" (degrees, optional, clamped to ±MAX_VIEW_ANGLE), "frontalize"
    (optional bool)} -> ViewControl, or _BadRequest."""
    from codec.api import ViewControl

    unknown = set(body) - {"yaw", "pitch", "roll", "frontalize"}
    if unknown:
        raise _BadRequest(f"unknown fields: {', '.join(sorted(unknown))}")
    angles: dict[str, float] = {}
    for name in ("yaw", "pitch", "roll"):
        value = body.get(name, 0.0)
        # bool is an int in Python; true/false for an angle is a client bug, not 1°/0°.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _BadRequest(f"{name} must be a finite number of degrees")
        angles[name] = min(MAX_VIEW_ANGLE, max(-MAX_VIEW_ANGLE, float(value)))
    frontalize = body.get("frontalize", False)
    if not isinstance(frontalize, bool):
        raise _BadRequest("frontalize must be true or false")
    return ViewControl(**angles, frontalize=frontalize)


class ViewerServer:
    """Local web viewer for the receiver: serves the page, one WebRTC video track per viewer
    (fed from ``frames``), ``stats()`` as JSON, and free-view changes to ``on_view``.

    ``stats`` and ``on_view`` run on the server's event loop and should return quickly.
    Use ``async with ViewerServer(...) as server:`` or ``await start()`` / ``await stop()``;
    ``url`` is valid once started.
    """

    def __init__(self, frames: LatestFrame, stats: Callable[[], dict[str, Any]],
                 on_view: Callable[[ViewControl], None] | None = None, *,
                 host: str = "127.0.0.1", port: int = 0, fps: float = 25.0,
                 max_viewers: int = MAX_VIEWERS) -> None:
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        self.frames = frames
        self.stats = stats
        self.on_view = on_view
        # Localhost by default: the viewer has no authentication, and anyone who can reach it
        # can watch the call and steer the view. Serving it further is a deliberate choice.
        self.host = host
        self.port = port
        self.fps = fps
        self.max_viewers = max_viewers
        self._runner: web.AppRunner | None = None
        self._peers: set[RTCPeerConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._static: dict[str, bytes] = {}

    @property
    def url(self) -> str:
        """http://host:port/ of the running server."""
        if self._runner is None:
            raise RuntimeError("the viewer server is not running; await start() first")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def viewers(self) -> int:
        """Peer connections open or being negotiated."""
        return len(self._peers)

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("the viewer server is already running")
        static = importlib.resources.files("receiver") / "static"
        self._static = {route: (static / name).read_bytes() for route, (name, _) in STATIC_FILES.items()}

        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._guard_host])
        for route in STATIC_FILES:
            app.router.add_get(route, self._handle_static)
        app.router.add_post("/offer", self._handle_offer)
        app.router.add_get("/stats", self._handle_stats)
        app.router.add_post("/view", self._handle_view)

        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]  # the real port when 0 asked the OS for a free one
        log.info("viewer at %s", self.url)

    async def stop(self) -> None:
        """Close every viewer's peer connection, then the HTTP server. Safe to call twice."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        peers, self._peers = list(self._peers), set()
        if peers:
            await asyncio.wait_for(asyncio.gather(*(pc.close() for pc in peers), return_exceptions=True),
                                   timeout=10.0)
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> ViewerServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- HTTP handlers -------------------------------------------------------------------------

    @web.middleware
    async def _guard_host(self, request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
        # DNS rebinding: a web page whose name resolves to 127.0.0.1 reaches this port as
        # same-origin. Only a loopback Host header is a page the user opened on this machine.
        if _is_loopback(self.host):
            try:
                host = request.url.host or ""
            except ValueError:  # a Host header that is not a host at all
                host = ""
            if not _is_loopback(host):
                return _json_error(403, "this viewer only answers to localhost")
        try:
            return await handler(request)
        except _BadRequest as exc:
            return _json_error(400, str(exc))
        except web.HTTPRequestEntityTooLarge:
            return _json_error(413, f"request body is larger than {MAX_BODY_BYTES} bytes")

    async def _handle_static(self, request: web.Request) -> web.Response:
        _, content_type = STATIC_FILES[request.path]
        return web.Response(body=self._static[request.path], content_type=content_type, headers={
            # The page needs nothing from outside this server (the machine may be offline).
            "Content-Security-Policy": "default-src 'self'; media-src 'self' blob: mediastream:",
            "Cache-Control": "no-store",
        })

    async def _handle_offer(self, request: web.Request) -> web.Response:
        body = await _read_json_object(request)
        sdp, kind = body.get("sdp"), body.get("type")
        if kind != "offer":
            raise _BadRequest('type must be "offer"')
        if not isinstance(sdp, str) or not sdp.startswith("v=0"):
            raise _BadRequest("sdp must be an SDP offer string")
        if "\nm=video " not in sdp.replace("\r\n", "\n"):
            raise _BadRequest("the offer has no video section (use addTransceiver('video'))")
        if len(self._peers) >= self.max_viewers:
            return _json_error(503, f"too many viewers (at most {self.max_viewers}); "
                                    "close another viewer tab and retry")

        # No ICE servers (a local viewer neither needs nor can reach a public STUN server
        # offline) and no process-wide loopback patch: the browser is on this host's addresses.
        pc = new_peer_connection(loopback=False)
        self._peers.add(pc)  # holds the slot from here, so concurrent offers cannot overshoot
        try:
            try:
                await asyncio.wait_for(pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer")),
                                       timeout=ICE_GATHER_TIMEOUT_S)
            except TimeoutError:
                raise
            except Exception as exc:  # aiortc's SDP parser raises a variety of types
                raise _BadRequest(f"cannot use this SDP offer: {exc or type(exc).__name__}") from None
            pc.addTrack(LatestFrameTrack(self.frames, self.fps))
            # aiortc gathers all candidates inside setLocalDescription and writes them into
            # the SDP, so the answer is complete (no trickle ICE needed).
            await asyncio.wait_for(pc.setLocalDescription(await pc.createAnswer()),
                                   timeout=ICE_GATHER_TIMEOUT_S)
        except BaseException:
            self._peers.discard(pc)
            await pc.close()
            raise

        @pc.on("connectionstatechange")
        async def _on_state() -> None:
            log.info("viewer connection %s", pc.connectionState)
            if pc.connectionState in ("failed", "closed"):
                await self._drop_peer(pc)

        self._spawn(self._expire_unconnected(pc))
        answer = pc.localDescription
        return web.json_response({"sdp": answer.sdp, "type": answer.type})

    async def _handle_stats(self, request: web.Request) -> web.Response:
        try:
            stats = self.stats()
        except Exception:
            log.exception("the stats callable failed")
            return _json_error(500, "the receiver's stats are unavailable")
        return web.json_response(_json_safe(stats))

    async def _handle_view(self, request: web.Request) -> web.Response:
        view = _parse_view(await _read_json_object(request))
        if self.on_view is None:
            return _json_error(404, "free view is not enabled on this receiver")
        try:
            self.on_view(view)
        except Exception:
            log.exception("on_view failed for %s", view)
            return _json_error(500, "the receiver could not apply this view")
        return web.json_response({"yaw": view.yaw, "pitch": view.pitch, "roll": view.roll,
                                  "frontalize": view.frontalize})

    # -- peer bookkeeping ----------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drop_peer(self, pc: RTCPeerConnection) -> None:
        if pc in self._peers:
            self._peers.discard(pc)
            await pc.close()

    async def _expire_unconnected(self, pc: RTCPeerConnection) -> None:
        """Free the slot of a viewer whose browser went away before ICE connected."""
        await asyncio.sleep(CONNECT_TIMEOUT_S)
        if pc.connectionState != "connected":
            log.info("viewer did not connect within %.0f s; closing it", CONNECT_TIMEOUT_S)
            await self._drop_peer(pc)
