"""The receiver's web viewer: LatestFrame, the video track, the HTTP API, and (slow) a real
headless Chromium that must end up PLAYING the stream, show the stats and steer the view.

The browser test drives the system's Chromium through playwright; it never downloads a
browser and skips, with the reason, when Chromium is missing (fails under CI, whose .ci/run
installs it).
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from conftest import skip_or_fail_in_ci

from receiver.frames import LatestFrame
from receiver.viewer import PLACEHOLDER_SIZE, LatestFrameTrack, ViewerServer

FRAME_SIZE = 128
WIDE = 224  # the browser test's frames: FRAME_SIZE high and this wide (a whole 16:9-ish frame)
FEED_FPS = 25.0
STATS = {"kbps": 12.5, "fps": 25.0, "latency_ms": 41.7, "loss": 0.0, "mode": "viewer-test"}
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def run(coro, timeout: float = 60.0):
    """Run ``coro`` on a fresh loop with an overall timeout, so no test can hang."""
    async def bounded():
        # asyncio.timeout rather than wait_for: no extra task, so a test can count leftovers.
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


def moving_frame(index: int, size: int = FRAME_SIZE, width: int | None = None) -> np.ndarray:
    """size×size×3 uint8 (size×width×3 with ``width``): a diagonal gradient that scrolls one
    step per frame."""
    ramp = np.arange(size, dtype=np.int32)
    across = np.arange(width or size, dtype=np.int32)
    base = (ramp[:, None] + across[None, :] + 4 * index) % 256
    return np.stack([base, 255 - base, (base * 2) % 256], axis=-1).astype(np.uint8)


@contextmanager
def feeding(frames: LatestFrame, fps: float = FEED_FPS, width: int | None = None) -> Iterator[None]:
    """Put moving frames into ``frames`` from a separate thread at about ``fps`` (``width``:
    FRAME_SIZE high and this wide)."""
    stop = threading.Event()

    def feed() -> None:
        index = 0
        while not stop.is_set():
            frames.put(moving_frame(index, width=width), time.monotonic())
            index += 1
            stop.wait(1.0 / fps)

    thread = threading.Thread(target=feed, name="frame-feeder", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5.0)


# -- LatestFrame -------------------------------------------------------------------------------

def test_latest_frame_keeps_only_the_newest_and_copies():
    frames = LatestFrame()
    assert frames.get() == (None, 0, 0.0)
    first = moving_frame(0)
    assert frames.put(first, 1.0) == 1
    first[:] = 0  # the holder kept its own copy
    frames.put(moving_frame(1), 2.0)
    image, counter, timestamp = frames.get()
    assert counter == 2 and timestamp == 2.0
    np.testing.assert_array_equal(image, moving_frame(1))
    assert not image.flags.writeable
    for bad in (np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32), np.zeros((0, 4, 3), np.uint8)):
        with pytest.raises(ValueError):
            frames.put(bad, 3.0)
    assert frames.get()[1] == 2


def test_latest_frame_wait_newer_wakes_on_put_from_another_thread():
    frames = LatestFrame()

    async def scenario() -> None:
        # Nothing new: returns the current snapshot after the timeout instead of raising.
        started = time.monotonic()
        assert (await frames.wait_newer(0, timeout=0.05))[1] == 0
        assert time.monotonic() - started >= 0.04

        timer = threading.Timer(0.05, frames.put, args=(moving_frame(3), 7.0))
        timer.start()
        started = time.monotonic()
        image, counter, timestamp = await frames.wait_newer(0, timeout=5.0)
        assert counter == 1 and timestamp == 7.0 and image is not None
        assert time.monotonic() - started < 2.0  # woken by put(), not by the timeout
        timer.join()
        # Already newer: returns at once.
        assert (await frames.wait_newer(0, timeout=5.0))[1] == 1
        # Many waiters on one loop all wake.
        waiters = [asyncio.ensure_future(frames.wait_newer(1, timeout=5.0)) for _ in range(5)]
        await asyncio.sleep(0)
        threading.Thread(target=frames.put, args=(moving_frame(4), 8.0)).start()
        results = await asyncio.gather(*waiters)
        assert [counter for _, counter, _ in results] == [2] * 5

    run(scenario(), timeout=10.0)


def test_track_sends_black_until_the_first_frame_then_the_newest():
    frames = LatestFrame()

    async def scenario() -> None:
        track = LatestFrameTrack(frames, fps=50.0)
        try:
            first = await track.recv()
            assert (first.height, first.width) == PLACEHOLDER_SIZE
            assert not first.to_ndarray(format="rgb24").any()
            frames.put(moving_frame(5), 0.0)
            second = await track.recv()
            third = await track.recv()  # nothing new: the same picture again
            assert (second.height, second.width) == (FRAME_SIZE, FRAME_SIZE)
            np.testing.assert_array_equal(third.to_ndarray(format="rgb24"), moving_frame(5))
            assert first.pts < second.pts < third.pts
            # Paced at the requested rate: three frames at 50 fps take about 40 ms.
            assert (third.pts - first.pts) / 90000 == pytest.approx(0.04, abs=0.03)
        finally:
            track.stop()

    run(scenario(), timeout=10.0)


# -- HTTP API without a browser ------------------------------------------------------------------

async def assert_nothing_left_running() -> None:
    """No task but the caller's is pending on the loop (the server stopped cleanly)."""
    await asyncio.sleep(0.1)
    leftovers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    assert leftovers == [], [task.get_coro().__qualname__ for task in leftovers]


def test_http_api_validates_input_and_stops_cleanly():
    frames = LatestFrame()
    views = []
    stats = dict(STATS, latency_ms=math.nan)

    async def scenario() -> None:
        server = ViewerServer(frames, lambda: stats, views.append)
        async with server:
            assert server.url.startswith("http://127.0.0.1:")
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
                async def post(path: str, data: str, content_type: str = "application/json"):
                    async with http.post(server.url + path, data=data,
                                         headers={"Content-Type": content_type}) as response:
                        return response.status, await response.json()

                async with http.get(server.url) as response:
                    assert response.status == 200
                    assert 'id="video"' in await response.text()
                async with http.get(server.url + "viewer.js") as response:
                    assert response.status == 200 and "RTCPeerConnection" in await response.text()

                async with http.get(server.url + "stats") as response:
                    assert response.status == 200
                    # NaN is not JSON a browser can parse; it comes back as null.
                    assert await response.json() == dict(STATS, latency_ms=None)

                for body in ("{not json", "[1, 2]", '{"type": "offer"}', '{"sdp": "v=0", "type": "answer"}',
                             '{"sdp": "hello", "type": "offer"}',
                             '{"sdp": "v=0\\r\\nm=audio 9 UDP/TLS/RTP/SAVPF 0\\r\\n", "type": "offer"}',
                             '{"sdp": "v=0\\r\\nm=video 9 garbage\\r\\n", "type": "offer"}'):
                    status, reply = await post("offer", body)
                    assert status == 400 and reply["error"], body
                status, reply = await post("offer", "x" * 100_000)
                assert status in (400, 413) and reply["error"]
                assert server.viewers == 0  # refused offers hold no slot

                for body in ("{", '{"yaw": "left"}', '{"yaw": true}', '{"pitch": null}',
                             '{"roll": 1e999}', '{"frontalize": 1}', '{"zoom": 2}'):
                    status, reply = await post("view", body)
                    assert status == 400 and reply["error"], body
                # A cross-site form post (sent without a CORS preflight) is refused.
                status, _ = await post("view", '{"yaw": 10}', content_type="text/plain")
                assert status == 400
                assert views == []

                status, reply = await post("view", '{"yaw": 90, "pitch": -12.5, "frontalize": true}')
                assert status == 200
                assert reply == {"yaw": 45.0, "pitch": -12.5, "roll": 0.0, "frontalize": True}
                assert len(views) == 1
                view = views[0]
                assert (view.yaw, view.pitch, view.roll, view.frontalize) == (45.0, -12.5, 0.0, True)

                # DNS rebinding: a page served under a foreign name is refused.
                async with http.get(server.url + "stats", headers={"Host": "evil.example:80"}) as response:
                    assert response.status == 403
        with pytest.raises(RuntimeError):
            server.url  # noqa: B018
        await server.stop()  # a second stop is harmless
        await assert_nothing_left_running()

    run(scenario(), timeout=30.0)


def test_offer_gets_a_playing_stream_and_viewers_are_limited():
    from aioice.ice import get_host_addresses
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    if not get_host_addresses(use_ipv4=True, use_ipv6=True):
        # aioice never offers 127.0.0.1, so a machine with only loopback has no ICE candidate.
        pytest.skip("no non-loopback network address for ICE on this machine")
    frames = LatestFrame()
    frames.put(moving_frame(9), 0.0)

    async def scenario() -> None:
        server = ViewerServer(frames, dict, max_viewers=1)
        async with server, aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            # aiortc plays the browser here; test_headless_chromium_plays_the_stream uses a real one.
            client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            tracks: asyncio.Queue = asyncio.Queue()
            client.on("track", tracks.put_nowait)
            try:
                client.addTransceiver("video", direction="recvonly")
                await client.setLocalDescription(await client.createOffer())
                offer = {"sdp": client.localDescription.sdp, "type": "offer"}
                async with http.post(server.url + "offer", json=offer) as response:
                    assert response.status == 200
                    answer = await response.json()
                # Complete: the candidates are in the answer, no trickle needed.
                assert answer["type"] == "answer" and "a=candidate:" in answer["sdp"]
                await client.setRemoteDescription(RTCSessionDescription(**answer))
                assert server.viewers == 1
                async with http.post(server.url + "offer", json=offer) as response:
                    assert response.status == 503
                    assert "too many viewers" in (await response.json())["error"]

                track = await asyncio.wait_for(tracks.get(), 10.0)
                frame = await asyncio.wait_for(track.recv(), 10.0)
                assert (frame.width, frame.height) == (FRAME_SIZE, FRAME_SIZE)
                assert client.connectionState == "connected"
            finally:
                await client.close()
        assert server.viewers == 0  # stop() closed the server's side
        await assert_nothing_left_running()

    run(scenario(), timeout=30.0)


# -- a real browser ------------------------------------------------------------------------------

def chromium_path() -> str | None:
    candidate = os.environ.get("FACECODEC_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return candidate if Path(candidate).is_file() else None


@pytest.mark.slow
@pytest.mark.parametrize("hide_local_ips", [True, False], ids=["mdns-candidates", "plain-candidates"])
def test_headless_chromium_plays_the_stream(tmp_path, monkeypatch, hide_local_ips):
    from playwright import async_api as playwright_api

    chromium = chromium_path()
    if chromium is None:
        skip_or_fail_in_ci("no Chromium on this machine (set FACECODEC_CHROMIUM to its executable)")
    # Never let playwright fetch a browser of its own: we always pass executable_path.
    monkeypatch.setenv("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from aioice.ice import get_host_addresses

    if not get_host_addresses(use_ipv4=True, use_ipv6=True):
        pytest.skip("no non-loopback network address for ICE on this machine")
    args = list(CHROMIUM_ARGS)
    if not hide_local_ips:
        # Chromium's default for pages without camera access is to hide host addresses behind
        # mDNS names; the viewer must work both ways.
        args.append("--disable-features=WebRtcHideLocalIpsWithMdns")

    frames = LatestFrame()
    views = []

    async def scenario() -> None:
        async with ViewerServer(frames, lambda: STATS, views.append) as server, \
                playwright_api.async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=chromium, headless=True, args=args,
                timeout=20_000)
            try:
                page = await context.new_page()
                console: list[str] = []
                page.on("console", lambda message: console.append(message.text))
                await page.goto(server.url, timeout=10_000)
                try:
                    await page.wait_for_function(
                        "() => { const v = document.getElementById('video');"
                        f" return v.readyState >= 2 && v.videoWidth === {WIDE}; }}", timeout=15_000)
                except playwright_api.Error:
                    status = await page.text_content("#status")
                    pytest.fail(f"the video never started; status {status!r}; console {console}")
                # The case under test is the one we meant: Chromium's own offer either hides its
                # host addresses behind mDNS names or does not. (aioice cannot resolve them here
                # and connects through the peer-reflexive address of Chromium's checks.)
                offer = await page.evaluate("() => pc.localDescription.sdp")
                candidates = [line for line in offer.splitlines() if line.startswith("a=candidate:")]
                assert candidates, offer
                assert all((".local " in line) == hide_local_ips for line in candidates), candidates
                video = page.locator("#video")
                assert await video.evaluate("v => v.videoHeight") == FRAME_SIZE
                # A wide picture (a whole frame) is shown at its own aspect, not in a square box.
                aspect = await video.evaluate("v => v.clientWidth / v.clientHeight")
                assert aspect == pytest.approx(WIDE / FRAME_SIZE, rel=0.03)
                start = await video.evaluate("v => v.currentTime")
                await asyncio.sleep(1.0)
                assert await video.evaluate("v => !v.paused && !v.ended")
                assert await video.evaluate("v => v.currentTime") > start + 0.5
                # The pictures are ours (a gradient, not the black placeholder).
                mean = await video.evaluate(
                    "v => { const c = document.createElement('canvas'); c.width = c.height = 128;"
                    " const g = c.getContext('2d'); g.drawImage(v, 0, 0);"
                    " const d = g.getImageData(0, 0, 128, 128).data;"
                    " let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i]; return s / (d.length / 4); }")
                assert 60 < mean < 200
                assert await page.text_content("#status") == "Connected"

                await page.wait_for_function(
                    "() => document.querySelector('#stats td[data-key=mode]')?.textContent === 'viewer-test'",
                    timeout=5_000)
                assert await page.text_content("#stats td[data-key=latency_ms]") == "41.7"

                await page.fill("#yaw", "20")
                deadline = time.monotonic() + 5.0
                while not views and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert views, "moving the yaw slider did not reach on_view"
                assert (views[-1].yaw, views[-1].pitch, views[-1].roll) == (20.0, 0.0, 0.0)
                assert await page.text_content("#yaw-value") == "20°"
            finally:
                await context.close()

    with feeding(frames, width=WIDE):
        started = time.monotonic()
        run(scenario(), timeout=60.0)
    assert time.monotonic() - started < 30.0
