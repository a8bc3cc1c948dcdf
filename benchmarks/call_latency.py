"""A live call on loopback: added latency, the sender's CPU per frame, and what each stream
costs on the wire.

One process, two :class:`app.call.Call` peers over real WebRTC on this machine (the same
path as ``facecodec demo``, but live: the receiver renders only the newest frame when it falls
behind, as in a call). Latency is capture-to-rendered-frame: from the moment the sender takes
a frame (its media time on the sender's clock) to the moment the receiver's generator has
rebuilt it, so it includes face crop, motion estimation, coding, the transport over loopback,
decoding and the generator. Sender CPU is thread CPU time of motion encoding plus face tracking.

The wire: a :class:`rtc.wire_meter.WireMeter` on each peer counts every datagram it sends
(IP and UDP headers included), split into audio, video, motion, control, SCTP housekeeping,
RTCP and ICE. Each call carries the default audio bed (Opus, as in ``facecodec demo``), and
the benchmark runs three set-ups on the same source:

- ``neural``: motion on the audio packets (the RTP header extension, the default);
- ``neural-datachannel``: motion as one data-channel message per frame (before that);
- ``h264``: the H.264 fallback.

``--capture`` also records the loopback traffic with tcpdump (where installed; root) and splits
it from the packets themselves, as a check on the meters.

    python -m benchmarks.call_latency --model landmark --seconds 10 --runs 3 --capture \
        --out out/latency

Writes ``call_latency.json`` (name, env, results, summary). Not a test: nothing here asserts
a speed; the motion stream's budget (:data:`MOTION_WIRE_BUDGET_KBPS`) is stated beside the
measured rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from benchmarks.env import cpu_name, git_state
from codec.families.base import TalkingHeadModel
from rtc.wire_cost import DATA_CHANNEL_OVERHEAD_BYTES

UDP_IPV4_HEADER_BYTES = 28
MOTION_WIRE_BUDGET_KBPS = 4.0  # what the neural stream may add to an audio call at 25 fps
SETUPS = {  # name: (CallOptions.mode, CallOptions.motion_on_audio)
    "neural": ("neural", True),
    "neural-datachannel": ("neural", False),
    "h264": ("h264", True),
}


def _kbps(count: dict | None, seconds: float) -> float:
    return 8.0 * (count or {}).get("wire_bytes", 0) / seconds / 1000.0


async def _one_run(model: TalkingHeadModel, seconds: float, setup: str, fps: float, *,
                   audio: bool = True, capture: Path | None = None) -> dict:
    from app.call import CallOptions
    from app.loopback import meter_once_connected, run_loopback
    from sender.media_tracks import PcmAudioTrack
    from sender.sources import default_audio, default_source

    mode, motion_on_audio = SETUPS[setup]
    n = int(round(seconds * fps))
    counters: dict[str, object] = {}
    meters: dict[str, object] = {}

    async def attach_meters(sending, receiving) -> None:
        meters["sender"] = await meter_once_connected(sending)
        meters["receiver"] = await meter_once_connected(receiving)
        counters["t0"], counters["wall0"] = time.monotonic(), time.time()
        carrier = sending.motion_carrier
        counters["carried0"] = carrier.stats.bytes_added if carrier is not None else 0

    async def started(sending, receiving) -> None:
        counters["attach"] = asyncio.ensure_future(attach_meters(sending, receiving))

    async def read_counters(sending, receiving) -> None:
        # What actually left the sender's socket during the call (aiortc's transport counters),
        # against the constant the codec's reports use to estimate it.
        counters["bytes"], counters["packets"] = await sending.transport_totals()
        counters["t1"], counters["wall1"] = time.monotonic(), time.time()
        counters["wire"] = {side: meter.snapshot() for side, meter in meters.items()}
        carrier = sending.motion_carrier
        counters["carried1"] = carrier.stats.bytes_added if carrier is not None else 0
        counters["carrier"] = asdict(carrier.stats) if carrier is not None else None
        counters["ports"] = meters["sender"].ports()
        counters["ssrcs"] = meters["sender"].ssrcs()
        for meter in meters.values():
            meter.detach()
        await asyncio.sleep(1.0)  # the last packets land and render

    track = PcmAudioTrack(default_audio(seconds + 5.0)) if audio else None
    dump = None
    if capture is not None:
        dump = await asyncio.create_subprocess_exec(
            "tcpdump", "-i", "lo", "-w", str(capture), "-U", "-s", "256", "udp",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        await asyncio.sleep(1.0)  # tcpdump opens the interface
    started_at = time.monotonic()
    try:
        sending, receiving = await run_loopback(
            model, model, iter(default_source(num_frames=n, fps=fps, size=(512, 512), model=model)),
            seconds=seconds, options=CallOptions(fps=fps, mode=mode, motion_on_audio=motion_on_audio),
            receiver_options=CallOptions(fps=fps, live=True), audio=track, started=started,
            finished=read_counters)
    finally:
        if "attach" in counters:
            counters["attach"].cancel()
        if dump is not None:
            dump.terminate()
            await asyncio.wait_for(dump.wait(), 10)
    wall = time.monotonic() - started_at
    sent_bytes, sent_packets = counters["bytes"], counters["packets"]
    metered = float(counters["t1"]) - float(counters["t0"])
    wire = counters["wire"]
    tx, rx = sending.sender_session.stats, receiving.receiver_session.stats
    latencies = np.asarray(rx.latencies_ms, dtype=float)
    render = np.asarray(rx.render_ms, dtype=float)
    sent, back = wire["sender"], wire["receiver"]
    motion_in_audio = int(counters["carried1"]) - int(counters["carried0"])
    motion_wire = 8.0 * (sent.get("motion", {}).get("wire_bytes", 0) + motion_in_audio) / metered / 1000.0
    result = {
        "setup": setup, "mode": sending.sender_session.mode, "audio": audio,
        "motion_on_audio": motion_on_audio, "seconds": seconds, "wall_s": wall,
        "frames_sent": tx.frames, "frames_rendered": rx.rendered, "render_skipped": rx.render_skipped,
        "h264_frames_shown": rx.h264_frames,  # (capture-to-shown latency is measured for neural frames only)
        "loss": rx.loss,
        "latency_ms": {"median": float(np.median(latencies)), "p90": float(np.percentile(latencies, 90)),
                       "p99": float(np.percentile(latencies, 99)), "min": float(latencies.min()),
                       "count": int(latencies.size)} if latencies.size else None,
        "render_ms_median": float(np.median(render)) if render.size else None,
        "sender_cpu_ms_per_frame": tx.cpu_ms_per_frame,
        "sender_encode_cpu_ms_per_frame": tx.encode_cpu_ms_total / max(tx.neural_frames, 1),
        "sender_face_cpu_ms_per_frame": tx.face_cpu_ms_total / max(tx.frames, 1),
        "sender_encode_wall_ms_per_frame": tx.encode_ms_per_frame,
        "motion_kbps": 8.0 * tx.motion_bytes / seconds / 1000.0,
        "data_channel_payload_kbps": 8.0 * (tx.motion_bytes + tx.control_bytes) / seconds / 1000.0,
        "wire_kbps_estimate": 8.0 * (tx.motion_bytes + tx.control_bytes + (tx.neural_frames + tx.keyframes)
                                     * DATA_CHANNEL_OVERHEAD_BYTES) / seconds / 1000.0,
        "wire_kbps_measured": 8.0 * (sent_bytes + UDP_IPV4_HEADER_BYTES * sent_packets) / seconds / 1000.0,
        "udp_packets_sent": sent_packets,
        # The meters: every datagram each side sent while both were connected (metered_s).
        "metered_s": metered,
        "wire_kbps": {
            # motion alone: its data-channel datagrams plus what it added to the audio packets
            "motion": motion_wire,
            "motion_in_audio": 8.0 * motion_in_audio / metered / 1000.0,
            "audio_with_motion": _kbps(sent.get("audio"), metered),
            "audio_alone": _kbps(sent.get("audio"), metered) - 8.0 * motion_in_audio / metered / 1000.0,
            "video": _kbps(sent.get("video"), metered),
            "control": _kbps(sent.get("control"), metered),
            "sctp_housekeeping": _kbps(sent.get("sctp"), metered),
            "rtcp": _kbps(sent.get("rtcp"), metered),
            "ice": _kbps(sent.get("ice"), metered),
            "sender_total": 8.0 * sum(c["wire_bytes"] for c in sent.values()) / metered / 1000.0,
            # the receiver's side: SACKs for the data channels, RTCP reports, stats, requests
            "receiver_sctp_housekeeping": _kbps(back.get("sctp"), metered),
            "receiver_total": 8.0 * sum(c["wire_bytes"] for c in back.values()) / metered / 1000.0,
        },
        "motion_wire_budget_kbps": MOTION_WIRE_BUDGET_KBPS,
        "wire_sender": sent,
        "wire_receiver": back,
        "carrier": counters["carrier"],
        "motion_packets_on_audio": tx.motion_on_audio,
        "sender_stats": asdict(tx),
    }
    if capture is not None and capture.exists():
        from benchmarks.pcap_split import split_capture
        from rtc.motion_over_audio import MOTION_EXTENSION_ID

        split = split_capture(capture, counters["ports"], counters["ssrcs"], MOTION_EXTENSION_ID,
                              window=(float(counters["wall0"]), float(counters["wall1"])))
        result["capture"] = {
            "tool": "tcpdump -i lo udp", "window_s": float(counters["wall1"]) - float(counters["wall0"]),
            **split,
            "wire_kbps_by_kind": {k: 8.0 * c["wire_bytes"] / metered / 1000.0 for k, c in split["by_kind"].items()},
            "meter_sender_total_wire_bytes": sum(c["wire_bytes"] for c in sent.values()),
        }
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--untrained", action="store_true")
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--runs", type=int, default=3, help="repeat and report the median of medians")
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--setups", default=",".join(SETUPS),
                   help=f"comma-separated, of {list(SETUPS)}")
    p.add_argument("--no-audio", action="store_true", help="calls without audio (motion then needs "
                   "the data channel)")
    p.add_argument("--capture", action="store_true", help="also capture the loopback traffic with "
                   "tcpdump and split it by kind (needs tcpdump and root)")
    p.add_argument("--out", type=Path, default=Path("out/latency"))
    args = p.parse_args(argv)
    import torch

    from codec.errors import CodecError
    from codec.zoo import resolve_model

    torch.set_num_threads(args.threads)
    try:
        model = resolve_model(args.model, untrained=args.untrained, weights=args.weights)
    except CodecError as exc:
        print(f"cannot load the model: {exc}", file=sys.stderr)
        return 2
    setups = args.setups.split(",")
    unknown = [name for name in setups if name not in SETUPS]
    if unknown:
        print(f"unknown set-up(s) {unknown}: choose from {list(SETUPS)}", file=sys.stderr)
        return 2
    capture_dir = None
    if args.capture:
        if shutil.which("tcpdump") is None:
            print("--capture: tcpdump is not installed; the meters alone are reported", file=sys.stderr)
        else:
            capture_dir = Path(tempfile.mkdtemp(prefix="call-capture-"))
    runs = []
    for i in range(args.runs):
        for setup in setups:  # interleaved, so a busy spell of the machine hits every set-up
            capture = capture_dir / f"{setup}-{i}.pcap" if capture_dir is not None else None
            run = asyncio.run(_one_run(model, args.seconds, setup, args.fps, audio=not args.no_audio,
                                       capture=capture))
            print(f"run {i + 1} {setup}: latency median "
                  f"{run['latency_ms']['median'] if run['latency_ms'] else float('nan'):.1f} ms, "
                  f"motion on the wire {run['wire_kbps']['motion']:.2f} kbit/s, "
                  f"sender total {run['wire_kbps']['sender_total']:.1f} kbit/s, "
                  f"{run['frames_rendered']}/{run['frames_sent']} rendered", file=sys.stderr)
            runs.append(run)
    if capture_dir is not None:
        shutil.rmtree(capture_dir, ignore_errors=True)

    def median(setup: str, get) -> float | None:
        values = [get(r) for r in runs if r["setup"] == setup]
        values = [v for v in values if v is not None]
        return float(np.median(values)) if values else None

    summary: dict[str, object] = {}
    for setup in setups:
        summary[setup] = {
            "latency_ms_median_of_runs": median(setup, lambda r: r["latency_ms"] and r["latency_ms"]["median"]),
            "latency_ms_p90_median_of_runs": median(setup, lambda r: r["latency_ms"] and r["latency_ms"]["p90"]),
            "motion_payload_kbps": median(setup, lambda r: r["motion_kbps"]),
            "motion_wire_kbps": median(setup, lambda r: r["wire_kbps"]["motion"]),
            "video_wire_kbps": median(setup, lambda r: r["wire_kbps"]["video"]),
            "audio_alone_wire_kbps": median(setup, lambda r: r["wire_kbps"]["audio_alone"]),
            "sender_total_wire_kbps": median(setup, lambda r: r["wire_kbps"]["sender_total"]),
            "receiver_total_wire_kbps": median(setup, lambda r: r["wire_kbps"]["receiver_total"]),
            "sender_cpu_ms_per_frame_median": median(setup, lambda r: r["sender_cpu_ms_per_frame"]),
        }
    summary["motion_wire_budget_kbps"] = MOTION_WIRE_BUDGET_KBPS
    if "neural" in summary and "neural-datachannel" in summary:
        after, before = summary["neural"], summary["neural-datachannel"]
        if after["latency_ms_median_of_runs"] is not None and before["latency_ms_median_of_runs"] is not None:
            summary["latency_added_by_audio_carriage_ms"] = \
                after["latency_ms_median_of_runs"] - before["latency_ms_median_of_runs"]
    result = {
        "name": "call_latency",
        "env": {**git_state(), "torch": torch.__version__, "device": "cpu", "cpu": cpu_name(),
                "threads": args.threads},
        "command": "python -m benchmarks.call_latency " + " ".join(sys.argv[1:] if argv is None else argv),
        "untrained": bool(model.untrained),
        "model": model.name,
        "results": runs,
        "summary": summary,
        "notes": ["loopback WebRTC in one process (ICE over this machine's interface, DTLS, SCTP, SRTP)",
                  "latency uses one clock (same process), so no clock sync error",
                  "wire_kbps: rtc.wire_meter on each peer while both were connected: every datagram with "
                  "its UDP and IPv4 headers, split by what it carried; motion = its data-channel datagrams "
                  "+ the bytes its RTP header extension elements added to the audio packets",
                  "wire_kbps_measured: aiortc's DTLS transport counters (no STUN) + 28 B IPv4/UDP per "
                  "packet, whole call; wire_kbps_estimate: payload + rtc.wire_cost's 93 B/message constant",
                  "capture (with --capture): tcpdump on lo, the sender's ports, the meters' time window",
                  "on this shared 2-core CPU the generator dominates; absolute timings count only "
                  "on the accelerator"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "call_latency.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["summary"]), file=sys.stderr)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
