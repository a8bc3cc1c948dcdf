"""Soak: one long two-process call on loopback, sampled every few seconds.

    python -m benchmarks.soak --seconds 3600 --out benchmarks/results/soak-call.json

It starts ``facecodec serve-signaling`` and two ``facecodec call`` processes (the built-in
portrait, looped, with audio; neural mode with the default model) in one room, each writing
``--stats-file`` lines every ``--every`` s: resident memory, open file descriptors, threads,
and its receiver's render fps and capture-to-render latency. The JSON keeps every sample
and a verdict per peer, judged after ``--warmup`` s:

- memory flat: every sample within ±``--rss-tolerance`` (5 %) of the median after warm-up;
- descriptors: no growth, the last sample after warm-up no higher than the first.

A PNG beside the JSON plots memory and render fps against time. Exit code 0 when both
peers ran the whole call and passed, 1 otherwise.

A short call at a given picture size (issue 27), each peer recording what it receives:

    python -m benchmarks.soak --seconds 30 --every 5 --warmup 5 --resolution 640x480 --record \
        --out benchmarks/results/call-latency-640x480.json

``--source`` (a video file, with ``--loop``) and ``--resolution`` go to both peers'
``facecodec call``; ``--record`` adds each peer's recording (its size, frames and length,
read back from the file) to ``call``, beside the frames the other peer sent, the frames
rendered and the latency percentiles from the call reports.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.env import cpu_name, git_state

PEERS = ("a", "b")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def read_samples(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of one peer's --stats-file (a torn last line is skipped)."""
    samples = []
    if not path.exists():
        return samples
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            samples.append(json.loads(line))
        except ValueError:
            continue
    return samples


def slim(sample: dict[str, Any]) -> dict[str, Any]:
    """The fields of one --stats-file line that the soak keeps in its JSON."""
    receiver = sample.get("receiver") or {}
    return {"t": sample["t"], "connected": sample.get("connected"), "rss_mb": sample["rss_mb"],
            "fds": sample["fds"], "threads": sample["threads"],
            "receiver": {key: receiver.get(key) for key in ("mode", "fps", "latency_ms", "rendered",
                                                            "loss", "keyframes")} if receiver else None,
            "sender_frames": (sample.get("sender") or {}).get("frames")}


def judge(samples: list[dict[str, Any]], warmup: float, tolerance: float) -> dict[str, Any]:
    """One peer's summary and verdict (see the module docstring)."""
    after = [s for s in samples if s["t"] >= warmup and s.get("connected")]
    if len(after) < 2:
        return {"samples_after_warmup": len(after), "passed": False,
                "why": "fewer than two connected samples after warm-up"}
    rss = np.array([s["rss_mb"] for s in after], float)
    fds = [s["fds"] for s in after]
    fps = np.array([s["receiver"]["fps"] for s in after if s.get("receiver")], float)
    latency = np.array([s["receiver"]["latency_ms"] for s in after
                        if s.get("receiver") and s["receiver"].get("latency_ms") is not None], float)
    median = float(np.median(rss))
    spread = float(max(abs(rss.max() - median), abs(rss.min() - median)) / median)
    rss_flat = spread <= tolerance
    fds_flat = fds[-1] <= fds[0]
    summary = {
        "samples_after_warmup": len(after),
        "seconds_after_warmup": round(after[-1]["t"] - after[0]["t"], 1),
        "rss_mb": {"first": float(rss[0]), "last": float(rss[-1]), "median": median,
                   "min": float(rss.min()), "max": float(rss.max()),
                   "max_deviation_from_median": round(spread, 4),
                   "slope_mb_per_hour": round(float(np.polyfit([s["t"] for s in after], rss, 1)[0]) * 3600, 2)},
        "fds": {"first": fds[0], "last": fds[-1], "min": min(fds), "max": max(fds)},
        "threads": {"min": min(s["threads"] for s in after), "max": max(s["threads"] for s in after)},
        "render_fps": {"median": float(np.median(fps)) if fps.size else None,
                       "min": float(fps.min()) if fps.size else None},
        "latency_ms": {"median": float(np.median(latency)) if latency.size else None,
                       "p95": float(np.percentile(latency, 95)) if latency.size else None,
                       "max": float(latency.max()) if latency.size else None},
        "rendered": after[-1].get("receiver", {}).get("rendered"),
        "mode": after[-1].get("receiver", {}).get("mode"),
        "rss_flat": rss_flat,
        "fds_flat": fds_flat,
    }
    summary["passed"] = bool(rss_flat and fds_flat)
    return summary


def write_json(result: dict[str, Any], path: Path) -> None:
    """The result, indented, with one line per sample (a one-hour run has 360 per peer)."""
    head = json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1)
    peers = ",\n".join(
        f' {json.dumps(peer)}: [\n' + ",\n".join("  " + json.dumps(s, separators=(",", ":")) for s in samples)
        + "\n ]" for peer, samples in result["samples"].items())
    path.write_text(head[:-2] + ',\n "samples": {\n' + peers + "\n }\n}\n")


def plot(result: dict[str, Any], path: Path) -> None:
    """Memory (top) and render fps (bottom) against time, one colour per peer (OpenCV)."""
    import cv2

    width, height, margin = 900, 520, 60
    image = np.full((height, width, 3), 255, np.uint8)
    colours = {"a": (200, 80, 30), "b": (30, 120, 220)}
    panels = (("rss_mb", "RSS (MB)", 20, 240), ("fps", "render fps", 280, 500))
    seconds = max((s["t"] for peer in PEERS for s in result["samples"][peer]), default=1.0)
    for key, label, top, bottom in panels:
        values = [s["rss_mb"] if key == "rss_mb" else (s.get("receiver") or {}).get("fps")
                  for peer in PEERS for s in result["samples"][peer]]
        values = [v for v in values if v is not None]
        low, high = (min(values), max(values)) if values else (0.0, 1.0)
        if key == "fps":
            low = 0.0
        elif values:  # at least ±10 % around the median, so noise does not look like growth
            middle = float(np.median(values))
            low, high = min(low, 0.9 * middle), max(high, 1.1 * middle)
        high = high if high > low else low + 1.0
        cv2.rectangle(image, (margin, top), (width - 20, bottom), (0, 0, 0), 1)
        cv2.putText(image, f"{label}: {low:.1f} - {high:.1f}", (margin + 5, top + 18),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        for peer in PEERS:
            points = []
            for s in result["samples"][peer]:
                value = s["rss_mb"] if key == "rss_mb" else (s.get("receiver") or {}).get("fps")
                if value is None:
                    continue
                x = margin + (width - 20 - margin) * s["t"] / seconds
                y = bottom - (bottom - top - 25) * (value - low) / (high - low)
                points.append((int(x), int(y)))
            if len(points) > 1:
                cv2.polylines(image, [np.array(points, np.int32)], False, colours[peer], 2, cv2.LINE_AA)
    cv2.putText(image, f"time (s), 0 - {seconds:.0f}; peer a blue, peer b orange", (margin, height - 8),
                cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.imwrite(str(path), image)


def call_figures(reports: dict[str, dict | None], recordings: dict[str, Path | None]) -> dict[str, Any]:
    """Per receiving peer: what the other sent, what it rendered, its latency percentiles over
    the whole call (its call report) and its recording as read back from the file."""
    from codec.errors import MediaError
    from codec.media import probe

    figures: dict[str, Any] = {}
    for peer, other in zip(PEERS, PEERS[::-1]):
        report, sent = reports.get(peer) or {}, (reports.get(other) or {}).get("sender") or {}
        receiver, extra = report.get("receiver") or {}, report.get("receiver_figures") or {}
        row: dict[str, Any] = {
            "call_seconds": report.get("seconds"),
            "frames_sent_by_peer": sent.get("frames"), "neural_frames_sent_by_peer": sent.get("neural_frames"),
            "skipped_late_by_peer": sent.get("skipped_late"), "keyframes_sent_by_peer": sent.get("keyframes"),
            "rendered": receiver.get("rendered"), "h264_frames": receiver.get("h264_frames"),
            "mode": receiver.get("mode"), "queue_dropped": receiver.get("queue_dropped"),
            "latency_p50_ms": extra.get("latency_p50_ms"), "latency_p95_ms": extra.get("latency_p95_ms"),
        }
        path = recordings.get(peer)
        if path is not None:
            try:
                info = probe(path)
                row["recording"] = {"width": info.width, "height": info.height, "frames": info.num_frames,
                                    "duration_s": round(info.duration, 2), "audio": info.has_audio,
                                    "stats": report.get("recording")}
            except MediaError as error:
                row["recording"] = {"error": str(error)}
        figures[peer] = row
    return figures


def run_soak(seconds: float, every: float, warmup: float, tolerance: float, mode: str,
             work: Path, source: str = "default", loop: bool = False, resolution: str | None = None,
             record: bool = False, one_way: bool = False) -> dict[str, Any]:
    token = secrets.token_hex(16)
    env = {**os.environ, "FACECODEC_SIGNALING_TOKEN": token}
    port = _free_port()
    python = sys.executable
    logs = [open(work / f"{name}.log", "w") for name in ("server", *PEERS)]  # noqa: SIM115
    server = subprocess.Popen([python, "-m", "signaling", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=logs[0])
    peers = {}
    try:
        time.sleep(1.0)
        for peer in PEERS:
            stats = work / f"{peer}.jsonl"
            stats.unlink(missing_ok=True)
            command = [python, "-m", "app", "call", "--signaling", f"ws://127.0.0.1:{port}/ws",
                       "--room", "soak", "--mode", mode,
                       "--seconds", str(seconds), "--wait", "120", "--no-rejoin",
                       "--stats-file", str(stats), "--stats-every", str(every),
                       "--report", str(work / f"{peer}-report.json")]
            # --one-way: peer b only receives (a call's cost in one direction).
            command += ["--source", "none"] if one_way and peer == "b" else \
                ["--source", source] + (["--loop"] if loop else [])
            command += ["--resolution", resolution] if resolution else []
            command += ["--record", str(work / f"{peer}.mp4")] if record else []
            peers[peer] = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                           stderr=logs[1 + PEERS.index(peer)])
        codes = {peer: proc.wait(timeout=seconds + 600) for peer, proc in peers.items()}
    finally:
        for proc in (*peers.values(), server):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for log in logs:
            log.close()
    samples = {peer: [slim(s) for s in read_samples(work / f"{peer}.jsonl")] for peer in PEERS}
    verdicts = {peer: judge(samples[peer], warmup, tolerance) for peer in PEERS}
    reports = {}
    for peer in PEERS:
        report = work / f"{peer}-report.json"
        reports[peer] = json.loads(report.read_text()) if report.exists() else None
    # The call must have lasted: both peers exited 0, each in one call that ran (almost) its
    # whole time, ended by a peer reaching it (the other then sees the peer go).
    ran = (all(code == 0 for code in codes.values())
           and all((r or {}).get("calls") == 1 and (r or {}).get("seconds", 0.0) >= 0.98 * seconds
                   for r in reports.values())
           and any("duration reached" in ((r or {}).get("end_reasons") or []) for r in reports.values()))
    recordings = {peer: (work / f"{peer}.mp4") if record else None for peer in PEERS}
    return {
        "benchmark": "soak",
        "command": " ".join(["python -m benchmarks.soak", *sys.argv[1:]]),
        "source": source, "resolution": resolution, "one_way": one_way,
        "seconds": seconds, "every": every, "warmup": warmup, "rss_tolerance": tolerance, "mode": mode,
        "exit_codes": codes, "call_ran_its_time": ran,
        "passed": bool(ran and all(v["passed"] for v in verdicts.values())),
        "verdicts": verdicts,
        "call_reports": {peer: {k: (r or {}).get(k) for k in ("calls", "seconds", "end_reasons")}
                         for peer, r in reports.items()},
        "call": call_figures(reports, recordings),
        "samples": samples,
        "load_average": os.getloadavg(),
        "cpu": cpu_name(), "cpus": os.cpu_count(), **git_state(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3600.0, help="length of the call")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=120.0, help="seconds not judged at the start")
    parser.add_argument("--rss-tolerance", type=float, default=0.05, help="allowed spread around the median")
    parser.add_argument("--mode", choices=["neural", "h264"], default="neural")
    parser.add_argument("--out", type=Path, default=Path("out/soak/soak-call.json"))
    parser.add_argument("--work", type=Path, default=None, help="logs and raw samples (default: a temp dir)")
    parser.add_argument("--source", default="default", help="both peers' --source: 'default' or a video file")
    parser.add_argument("--loop", action="store_true", help="loop a video file source")
    parser.add_argument("--resolution", default=None, metavar="WxH",
                        help="both peers' --resolution (the whole frame's cap; default: the call's)")
    parser.add_argument("--record", action="store_true",
                        help="each peer records what it receives; its size and length go into the JSON")
    parser.add_argument("--one-way", action="store_true", help="peer b sends nothing (--source none)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="soak-"))
    work.mkdir(parents=True, exist_ok=True)
    result = run_soak(args.seconds, args.every, args.warmup, args.rss_tolerance, args.mode, work,
                      source=args.source, loop=args.loop, resolution=args.resolution, record=args.record, one_way=args.one_way)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(result, args.out)
    plot(result, args.out.with_suffix(".png"))
    for peer, verdict in result["verdicts"].items():
        if "rss_mb" in verdict:
            print(f"peer {peer}: RSS {verdict['rss_mb']['first']:.1f} -> {verdict['rss_mb']['last']:.1f} MB "
                  f"(max deviation {100 * verdict['rss_mb']['max_deviation_from_median']:.1f} %), fds "
                  f"{verdict['fds']['first']} -> {verdict['fds']['last']}, render fps median "
                  f"{verdict['render_fps']['median']}, latency median {verdict['latency_ms']['median']} ms: "
                  f"{'pass' if verdict['passed'] else 'FAIL'}")
        else:
            print(f"peer {peer}: {verdict['why']}")
    for peer, row in result["call"].items():
        if row["frames_sent_by_peer"] is None:
            continue  # --one-way: the other peer sent nothing
        recording = row.get("recording") or {}
        print(f"peer {peer} received: {row['rendered']} rendered of {row['frames_sent_by_peer']} sent, latency "
              f"p50 {row['latency_p50_ms']} ms p95 {row['latency_p95_ms']} ms, recording "
              f"{recording.get('width')}x{recording.get('height')} {recording.get('duration_s')} s")
    print(f"{'passed' if result['passed'] else 'FAILED'}; wrote {args.out} (logs in {work})")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
