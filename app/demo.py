"""``facecodec demo``: a loopback call in one process on the built-in default input.

Two :class:`app.call.Call` peers talk through the in-memory signaling pair over real
WebRTC (ICE, DTLS, SCTP data channels, RTP) on this machine. The sender sends the default
input (the scripted camera over the astronaut photo, with a synthetic audio bed); the
receiver renders every frame it gets and records them with the received audio. At the end the
demo writes, side by side: the crop the sender encoded | what the receiver rebuilt | H.264
at the same bitrate as our payload (or x264's floor, if that is higher), plus a JSON
report (the neural stream's payload and on-wire kbit/s, frames/s, capture-to-render latency).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from app.call import Call, CallOptions
from app.loopback import meter_once_connected, run_loopback
from codec.families.base import TalkingHeadModel

log = logging.getLogger(__name__)

# The demo's input: the built-in portrait's whole photo at this (width, height), its head
# turned in place (a face crop with ``--crop SIZE``).
DEMO_SIZE = (640, 480)


def _hold_to_grid(frames: list[tuple[float, np.ndarray]], n: int, fps: float) -> list[np.ndarray | None]:
    """Place (media time, frame) pairs on a regular grid of n frames, holding the last one."""
    grid: list[np.ndarray | None] = [None] * n
    for t, image in frames:
        i = int(round(t * fps))
        if 0 <= i < n:
            grid[i] = image
    last = None
    for i in range(n):
        if grid[i] is None:
            grid[i] = last
        last = grid[i]
    return grid


async def _loopback(model: TalkingHeadModel, seconds: float, options: CallOptions, out: Path,
                    size: tuple[int, int]) -> dict:
    from receiver.sinks import Mp4Recorder
    from sender.media_tracks import PcmAudioTrack
    from sender.sources import default_audio, default_source

    fps = options.fps
    n = int(round(seconds * fps))
    sent: list[tuple[float, np.ndarray]] = []
    shown: list[tuple[float, np.ndarray]] = []
    recorder = Mp4Recorder(out / "received.mp4", fps=fps)  # at the stream's size

    wire: dict[str, object] = {}

    async def meter(sending: Call, receiving: Call) -> None:
        wire["meter"] = await meter_once_connected(sending)
        wire["t0"] = time.monotonic()

    async def started_hook(sending: Call, receiving: Call) -> None:
        wire["task"] = asyncio.ensure_future(meter(sending, receiving))

    async def drain(sending: Call, receiving: Call) -> None:
        if "meter" in wire:  # what the sender put on its wire while it sent
            wire["seconds"] = time.monotonic() - float(wire["t0"])
            wire["counts"] = wire["meter"].snapshot()
            wire["meter"].detach()
        log.info("sender done; waiting for the receiver to render what it got")
        await asyncio.get_running_loop().run_in_executor(None, receiving.receiver_session.wait_idle, 600.0)

    started = time.monotonic()
    try:
        sending, receiving = await run_loopback(
            model, model, iter(default_source(num_frames=n, fps=fps, size=size, model=model,
                                             whole_frame=options.crop is None)),
            seconds=seconds, options=options,
            receiver_options=CallOptions(fps=fps, mode=options.mode, live=False),
            audio=PcmAudioTrack(default_audio(seconds + 1.0)), show=lambda image, t: shown.append((t, image)),
            recorder=recorder, on_sent_frame=lambda image, t: sent.append((t, image)),
            started=started_hook, finished=drain)
    finally:
        if "task" in wire:
            wire["task"].cancel()
        wall = time.monotonic() - started
        recording = recorder.close()
    stats = sending.sender_session.stats if sending.sender_session is not None else None
    rx = receiving.receiver_session
    latencies = np.array(rx.stats.latencies_ms) if rx is not None else np.array([])
    duration = n / fps
    data_bytes = (stats.motion_bytes + stats.control_bytes) if stats else 0
    counts = wire.get("counts", {})
    metered = float(wire.get("seconds", duration))
    carrier = sending.motion_carrier

    def wire_kbps(*labels: str, extra: int = 0) -> float:
        return 8.0 * (sum(counts.get(label, {}).get("wire_bytes", 0) for label in labels) + extra) \
            / max(metered, 1e-9) / 1000.0

    motion_in_audio = carrier.stats.bytes_added if carrier is not None else 0

    return {
        "sent": sent, "shown": shown,
        "report": {
            "frames_sent": stats.frames if stats else 0,
            "frames_rendered": rx.stats.rendered if rx is not None else 0,
            "mode": sending.sender_session.mode if sending.sender_session else None,
            "mode_reason": sending.mode_reason,
            # The neural stream: motion packets, keyframes, patches and control messages.
            "payload_kbps": 8.0 * data_bytes / duration / 1000.0,
            "motion_kbps": 8.0 * (stats.motion_bytes if stats else 0) / duration / 1000.0,
            "motion_on_audio_packets": stats.motion_on_audio if stats else 0,
            # Measured at the sender's sockets (rtc.wire_meter), with IPv4/UDP headers: motion is
            # its data-channel datagrams plus what its elements added to the audio packets.
            "wire_kbps": wire_kbps("motion", "control", extra=motion_in_audio),
            "motion_wire_kbps": wire_kbps("motion", extra=motion_in_audio),
            "audio_wire_kbps": wire_kbps("audio", extra=-motion_in_audio),
            "sender_encode_ms_per_frame": stats.encode_ms_per_frame if stats else None,
            "latency_ms_median": float(np.median(latencies)) if latencies.size else None,
            "latency_ms_p95": float(np.percentile(latencies, 95)) if latencies.size else None,
            "render_fps": (rx.stats.rendered / wall) if rx is not None and wall > 0 else None,
            "wall_s": wall,
            "sender_stats": asdict(stats) if stats else None,
            "receiver": rx.snapshot() if rx is not None else None,
            "recording": asdict(recording),
        },
    }


def run_demo(model: TalkingHeadModel, *, seconds: float = 4.0, fps: float = 25.0, mode: str = "neural",
             out: Path = Path("out/demo"), quality: int | None = None, size: tuple[int, int] = DEMO_SIZE,
             crop: int | None = None) -> dict:
    """Run the loopback call and write ``out``/side_by_side.mp4, received.mp4, report.json."""
    from codec.media import VideoWriter, encode_pcm_opus
    from codec.media.h264 import H264Decoder, H264Encoder
    from sender.sources import default_audio

    out.mkdir(parents=True, exist_ok=True)
    # Not live: the sender sends every frame and the receiver renders every frame, however
    # slow the CPU, so the recording and the side-by-side hold the whole clip.
    options = CallOptions(fps=fps, mode=mode, quality=quality, live=False, crop=crop, resolution=size)
    result = asyncio.run(_loopback(model, seconds, options, out, size))
    report = result["report"]
    n = int(round(seconds * fps))
    inputs = _hold_to_grid(result["sent"], n, fps)
    ours = _hold_to_grid(result["shown"], n, fps)
    first = next(image for image in inputs + ours if image is not None)
    height, width = first.shape[:2]  # the picture sent: the whole frame, or the face crop
    blank = np.zeros((height, width, 3), np.uint8)
    # H.264 at our data-channel rate: the encoder's rate control targets it; x264 cannot go
    # below its floor (~10 kbit/s at 256 px), so the achieved rate is reported, not assumed.
    target = max(report["payload_kbps"], 1.0)
    encoder, decoder = H264Encoder((width, height), fps=fps, bitrate_kbps=target), H264Decoder()
    h264_frames, h264_bytes = [], 0
    for i, image in enumerate(inputs):
        packets = encoder.encode(image if image is not None else blank, i)
        h264_bytes += sum(len(p) for p in packets)
        for packet in packets:
            h264_frames.extend(decoder.decode(packet))
    for unit in encoder.flush():
        h264_bytes += len(unit.data)
        h264_frames.extend(decoder.decode(unit.data))
    report["h264_target_kbps"] = target
    report["h264_kbps"] = 8.0 * h264_bytes / (n / fps) / 1000.0
    audio = encode_pcm_opus(default_audio(seconds))
    side = out / "side_by_side.mp4"
    with VideoWriter(side, fps=fps, size=(3 * width, height), audio=audio) as writer:
        for i in range(n):
            a = inputs[i] if inputs[i] is not None else blank
            b = ours[i] if ours[i] is not None else blank  # the receiver already bannered untrained frames
            c = h264_frames[i] if i < len(h264_frames) else blank
            writer.write(np.concatenate([a, b, c], axis=1))
    report["untrained"] = bool(model.untrained)
    report["outputs"] = {"side_by_side": side.name, "received": "received.mp4"}
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    return report
