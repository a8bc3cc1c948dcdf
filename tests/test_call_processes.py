"""Calls between separate processes through the real signaling server (`facecodec
serve-signaling` + two `facecodec call`) on 127.0.0.1. Tiny seeded UNTRAINED model. (The call
across network namespaces on a lossy, capped link, with the default model, is
tests/test_call_impairment.py.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import av
import pytest
from conftest import REPO

TOKEN = "test-token-" + uuid.uuid4().hex[:8]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def facecodec(*args: str, netns: str | None = None, **kwargs) -> subprocess.Popen:
    command = [sys.executable, "-m", "app", *args]
    if netns is not None:
        command = ["ip", "netns", "exec", netns, *command]
    env = {**os.environ, "FACECODEC_SIGNALING_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def wait_for_port(host: str, port: int, timeout: float = 20.0, netns: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if netns is None:
            with socket.socket() as s:
                if s.connect_ex((host, port)) == 0:
                    return
        elif subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c",
                             f"import socket; socket.create_connection(('{host}', {port}), 1)"],
                            capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {host}:{port}")


def finish(process: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"process did not finish in {timeout} s:\n{err[-3000:]}")
    return process.returncode, out, err


def call_args(url: str, room: str, seconds: float, record: Path, report: Path, *extra: str) -> list[str]:
    return ["call", "--signaling", url, "--room", room, "--seconds", str(seconds), "--model", "tiny",
            "--untrained", "--mode", "neural", "--record", str(record), "--report", str(report), *extra]


def check_recording(path: Path, min_seconds: float, report: dict | None = None) -> None:
    """The recording has video of at least ``min_seconds`` and audio; ``report`` (the peer's
    call report) goes into the failure message, to tell a lost audio track from a late one."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        assert container.streams.audio, f"no audio in the recording; report: {json.dumps(report)[:3000]}"
        frames = sum(1 for _ in container.decode(video))
    assert frames >= min_seconds * 25 * 0.8, frames


def call_pair(server: subprocess.Popen, host: str, port: int, room: str, seconds: float, tmp_path: Path,
              timeout: float, namespaces: tuple[str | None, str | None] = (None, None)) -> dict[str, dict]:
    """Two `facecodec call` peers ("a", "b") through ``server``; their JSON reports by name.
    Every process started here is ended before returning."""
    url = f"ws://{host}:{port}/ws"
    peers = []
    try:
        wait_for_port(host, port, netns=namespaces[0])
        for name, ns in zip(("a", "b"), namespaces):
            peers.append(facecodec(*call_args(url, room, seconds, tmp_path / f"{name}.mp4",
                                              tmp_path / f"{name}.json"), netns=ns))
        for peer in peers:
            code, out, err = finish(peer, timeout=timeout)
            assert code == 0, err[-3000:]
            # Without -v: the call says it connected and which mode it sends, and why;
            # aiortc's and aioice's chatter (every ICE check) stays out.
            for line in ("connected to the peer in", "sending neural: asked for neural"):
                assert line in err, err[-3000:]
            assert "aioice" not in err and "aiortc" not in err, err[-3000:]
    finally:
        for process in [server, *peers]:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=10)
    return {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in ("a", "b")}


@pytest.mark.slow
def test_two_processes_call_through_the_signaling_server(tmp_path):
    port = free_port()
    server = facecodec("serve-signaling", "--port", str(port))
    seconds = 8.0
    reports = call_pair(server, "127.0.0.1", port, "room1", seconds, tmp_path, timeout=120)
    for name, other in (("a", "b"), ("b", "a")):
        report, sent = reports[name], reports[other]["sender"]
        assert report["calls"] >= 1
        assert sent["neural_frames"] >= 0.4 * seconds * 25, sent  # the rest went to set-up
        # Each side rendered most of what the other sent (a loaded CPU skips some).
        assert report["receiver"]["rendered"] >= 0.6 * sent["neural_frames"], report
        assert report["receiver"]["malformed"] == 0
        # Each side sent its own motion stream; under 10 kbit/s of payload.
        assert 0 < 8 * sent["motion_bytes"] / (sent["frames"] / 25) / 1000 < 10
        check_recording(tmp_path / f"{name}.mp4", min_seconds=0.6 * sent["frames"] / 25, report=report)
