"""Calls on bad networks: a measured impairment matrix, in real processes.

    python -m benchmarks.impairment --out benchmarks/results/impairment.json            # the matrix
    python -m benchmarks.impairment --cells loss10-cap50 --seconds 30 --out out/imp.json  # some cells

Each cell is one real call: ``facecodec serve-signaling`` and two ``facecodec call`` processes,
the sender (a real dev clip, looped, with its audio unless the cell turns audio off) in
namespace A, the receiver (``--source none``, recording what it shows) in namespace B, the
signaling server in M between them; A↔B is shaped as :mod:`benchmarks.netimpair` says (tbf
for rate caps, iptables' statistic match for random loss, a userspace relay for delay, jitter,
Gilbert–Elliott bursts and the outage). Each cell records which mechanism shaped it.

Per cell, from both sides' reports and the receiver's recording: rendered fps, the longest
freeze and the total frozen time (no new picture for more than 0.2 s), the first picture after
connecting, capture-to-render latency p50/p95 (neural), keyframe request → first picture from
the new keyframe, each keyframe's delivery time, mode switches and the sender's adaptations
with their reasons, wire kbit/s by kind (the sender's rtc.wire_meter), the tbf's queue
(sampled every 0.25 s) and whether the call ended cleanly (exit code 0, one call, no
traceback, nothing left running in a namespace). The JSON is rewritten after every cell, so a
failed or interrupted cell never loses the others; one PNG per axis (loss, delay, rate,
outage) goes beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.env import REPO, cpu_name, git_state
from benchmarks.netimpair import A_GW, Impairment, Link, LinkUnavailable, cleanup_on_signals, tools_missing

DEFAULT_CLIP = "talking/EDTalk/pose_source2.mp4"  # dev, 256×256, 25 fps, 60 s, with audio
SIGNALING_PORT = 8765  # in M's own namespace: no clash with anything on the host
OUTAGE_AT_S = 12.0  # after the call connects
BACKLOG_EVERY_S = 0.25


@dataclass
class Cell:
    name: str
    impairment: Impairment = field(default_factory=Impairment)
    audio: bool = True
    mode: str = "neural"  # the sender's --mode
    h264_kbps: float = 30.0
    axis: str = "loss"  # which plot it belongs to


def h264_kbps_for(cap: float) -> float:
    """What H.264 mode is asked for under a cap: 60 % of it (RTP, audio and control share it)."""
    return max(5.0, 0.6 * cap)


def matrix() -> list[Cell]:
    cells = [Cell(f"loss{p}", Impairment(loss=p / 100), axis="loss") for p in (0, 2, 5, 10, 20)]
    cells += [Cell(f"burst{p}", Impairment(burst_loss=p / 100), axis="loss") for p in (2, 5, 10, 20)]
    cells += [Cell(f"delay{d}", Impairment(delay_ms=d, jitter_ms=j), axis="delay")
              for d, j in ((20, 5), (100, 20), (300, 50))]
    for cap in (100, 50, 20, 10):
        for audio in (True, False):
            tag = f"cap{cap}" + ("" if audio else "-noaudio")
            cells.append(Cell(tag, Impairment(rate_kbps=cap), audio=audio, axis="rate"))
            cells.append(Cell(tag + "-h264", Impairment(rate_kbps=cap), audio=audio, mode="h264",
                              h264_kbps=h264_kbps_for(cap), axis="rate"))
    cells.append(Cell("outage5", Impairment(outage_s=5.0), axis="outage"))
    cells.append(Cell("loss10-cap50", Impairment(loss=0.10, rate_kbps=50), axis="ci"))
    return cells


def competing_realtime() -> list[str]:
    """Other processes in a real-time scheduling class (they take the CPU before any call
    process can): what the figures must be read against."""
    result = subprocess.run(["ps", "-eo", "cls,pcpu,args"], capture_output=True, text=True)
    rows = [line.split(None, 2) for line in result.stdout.splitlines()[1:]]
    return [f"{row[1]}% {row[2][:80]}" for row in rows if len(row) == 3 and row[0] in ("FF", "RR")]


def _reader(stream, sink: list[str], events: dict[str, float], started: float) -> None:
    for line in stream:
        sink.append(line)
        if "connected to the peer" in line and "connected" not in events:
            events["connected"] = time.monotonic()


def _kbps(count: dict, seconds: float) -> float:
    return round(8.0 * count.get("wire_bytes", 0) / max(seconds, 1e-9) / 1000.0, 3)


def summarize(cell: Cell, reports: dict[str, dict | None], codes: dict[str, int | None],
              stderr: dict[str, str], backlog: list[dict], relay: dict | None, seconds: float,
              leaked: list[str]) -> dict[str, Any]:
    """The cell's figures (see the module docstring) from what the run left."""
    a, b = reports.get("a") or {}, reports.get("b") or {}
    rx, figures = b.get("receiver") or {}, b.get("receiver_figures") or {}
    sender = a.get("sender") or {}
    call_s = b.get("seconds") or seconds
    first = rx.get("first_picture_s")
    shown = rx.get("shown") or 0
    wire_s = a.get("wire_seconds") or 0.0
    wire = {label: _kbps(count, wire_s) for label, count in (a.get("wire") or {}).items()} if wire_s else {}
    tracebacks = {peer: "Traceback" in text for peer, text in stderr.items()}
    clean = (all(code == 0 for code in codes.values()) and not any(tracebacks.values())
             and a.get("calls") == 1 and b.get("calls") == 1 and not leaked)
    backlog_bytes = [s.get("to_b", {}).get("backlog_bytes", 0) for s in backlog]
    rate = cell.impairment.rate_kbps
    keyframe_delivery = figures.get("keyframe_delivery") or []
    return {
        "shown": shown,
        "rendered_fps": round(shown / call_s, 2) if call_s else None,
        "rendered_fps_after_first": round(shown / max(call_s - (first or 0.0), 1e-9), 2) if shown else 0.0,
        "first_picture_s": first,
        "longest_freeze_s": rx.get("longest_freeze_s"),
        "frozen_s": rx.get("frozen_s"),
        "freezes": figures.get("freezes"),
        "picture_stalls": b.get("picture_stalls"),  # the receiver said: video sent, no picture for 5 s
        "latency_p50_ms": figures.get("latency_p50_ms"),
        "latency_p95_ms": figures.get("latency_p95_ms"),
        "keyframe_recovery_s": figures.get("keyframe_recovery_s"),
        "keyframe_delivery_s_bytes": keyframe_delivery,
        "keyframes_received": rx.get("keyframes"),
        "keyframe_requests": rx.get("keyframe_requests"),
        "intra_requests": rx.get("intra_requests"),
        "motion_loss": rx.get("loss"),
        "missing_reference": rx.get("missing_reference"),
        "mode_at_end": rx.get("mode"),
        "mode_switches": figures.get("mode_switches"),
        "sender_adaptations": sender.get("adaptations"),
        "sender": {k: sender.get(k) for k in ("frames", "neural_frames", "h264_frames", "skipped_late",
                                               "motion_dropped", "motion_on_audio", "keyframes", "patches",
                                               "keyframe_requests", "mode_switches") if k in sender},
        "wire_kbps_by_kind": wire,
        "wire_kbps_total": round(sum(wire.values()), 3) if wire else None,
        "queue": {"tbf_backlog_max_bytes": max(backlog_bytes, default=0),
                  "tbf_backlog_max_s": round(8 * max(backlog_bytes, default=0) / (1000 * rate), 3) if rate else None,
                  "tbf_drops_to_b": backlog[-1].get("to_b", {}).get("drops") if backlog else None,
                  "samples": len(backlog)},
        "relay": relay,
        "end_reasons": {"a": a.get("end_reasons"), "b": b.get("end_reasons")},
        "calls": {"a": a.get("calls"), "b": b.get("calls")},
        "exit_codes": codes,
        "tracebacks": tracebacks,
        "leaked": leaked,
        "ended_cleanly": clean,
        "recording": b.get("recording"),
    }


def run_cell(cell: Cell, work: Path, *, seconds: float, clip: str | None, model_args: Sequence[str] = ()) -> dict:
    """One call under ``cell``'s impairment; its figures (``summarize``), or why it was skipped."""
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"cell": cell.name, "axis": cell.axis, "impairment": asdict(cell.impairment),
                              "audio": cell.audio, "mode": cell.mode, "seconds": seconds,
                              "mechanisms": cell.impairment.mechanisms(), "load_before": os.getloadavg(),
                              "realtime_processes_before": competing_realtime()}
    if cell.mode == "h264":
        result["h264_kbps"] = cell.h264_kbps
    token = secrets.token_hex(16)
    env = {**os.environ, "FACECODEC_SIGNALING_TOKEN": token, "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": "1"}
    python = sys.executable
    url = f"ws://{A_GW}:{SIGNALING_PORT}/ws"
    room = "imp-" + secrets.token_hex(4)
    processes: dict[str, subprocess.Popen] = {}
    out: dict[str, list[str]] = {}
    events: dict[str, float] = {}
    backlog: list[dict] = []
    leaked: list[str] = []
    relay_stats = work / "relay.json"
    try:
        with Link(cell.impairment, relay_stats_path=str(relay_stats)) as link:
            def start(name: str, ns: str, args: list[str]) -> None:
                command = [*link.netns_exec(ns), python, "-m", "app", *args]
                processes[name] = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                                   stderr=subprocess.PIPE, text=True)
                out[name] = []
                threading.Thread(target=_reader, args=(processes[name].stderr, out[name],
                                                       events if name == "a" else {}, time.monotonic()),
                                 daemon=True).start()

            start("signaling", link.ns_m, ["serve-signaling", "--host", "0.0.0.0", "--port", str(SIGNALING_PORT)])
            time.sleep(1.0)
            common = ["call", "--signaling", url, "--room", room, "--wait", "120", "--no-rejoin", *model_args]
            start("b", link.ns_b, [*common, "--source", "none", "--mode", "neural",
                                   "--seconds", str(seconds + 5), "--record", str(work / "b.mp4"),
                                   "--report", str(work / "b.json")])
            sender = [*common, "--source", clip or "default", "--mode", cell.mode, "--seconds", str(seconds),
                      "--report", str(work / "a.json"), "--meter-wire", "--h264-kbps", str(cell.h264_kbps)]
            if clip:
                sender.append("--loop")
            if not cell.audio:
                sender.append("--no-audio")
            start("a", link.ns_a, sender)
            deadline = time.monotonic() + seconds + 150
            outage = cell.impairment.outage_s
            outage_state = 0
            while time.monotonic() < deadline and processes["a"].poll() is None or \
                    time.monotonic() < deadline and processes["b"].poll() is None:
                if cell.impairment.rate_kbps:
                    sample = link.qdisc_backlog()
                    sample["t"] = round(time.monotonic() - events.get("connected", time.monotonic()), 2)
                    backlog.append(sample)
                connected = events.get("connected")
                if outage and connected is not None:
                    since = time.monotonic() - connected
                    if outage_state == 0 and since >= OUTAGE_AT_S:
                        link.outage(True)
                        outage_state = 1
                        result["outage_at_s"] = round(since, 3)
                    elif outage_state == 1 and since >= OUTAGE_AT_S + outage:
                        link.outage(False)
                        outage_state = 2
                        result["outage_until_s"] = round(since, 3)
                time.sleep(BACKLOG_EVERY_S)
            codes: dict[str, int | None] = {}
            for name in ("a", "b"):
                if processes[name].poll() is None:
                    processes[name].kill()
                    processes[name].wait()
                    result.setdefault("killed", []).append(name)
                codes[name] = processes[name].returncode
            processes["signaling"].terminate()
            try:
                processes["signaling"].wait(timeout=10)
            except subprocess.TimeoutExpired:
                processes["signaling"].kill()
            for ns in (link.ns_a, link.ns_m, link.ns_b):
                pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
                relay_pid = str(link.relay.pid) if link.relay is not None else ""
                leaked += [f"{ns}:{pid}" for pid in pids if pid != relay_pid]
    except LinkUnavailable as exc:
        result["skipped"] = f"namespace set-up refused: {exc}"
        return result
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    time.sleep(0.2)
    reports = {}
    for name in ("a", "b"):
        path = work / f"{name}.json"
        try:
            reports[name] = json.loads(path.read_text()) if path.exists() else None
        except ValueError:
            reports[name] = None
    relay = json.loads(relay_stats.read_text()) if relay_stats.exists() else None
    stderr = {name: "".join(lines) for name, lines in out.items()}
    result.update(summarize(cell, reports, codes, {k: v for k, v in stderr.items() if k != "signaling"},
                            backlog, relay, seconds, leaked))
    result["load_after"] = os.getloadavg()
    result["events_a"] = [line.rstrip() for line in out.get("a", []) if "Traceback" in line
                          or "switch" in line or "adapt" in line or "error" in line.lower()][-40:]
    result["events_b"] = [line.rstrip() for line in out.get("b", []) if "Traceback" in line
                          or "switch" in line or "error" in line.lower()][-40:]
    if any(result["tracebacks"].values()):
        result["stderr_tail"] = {k: v[-3000:] for k, v in stderr.items()}
    return result


# ---------------------------------------------------------------------- plots (OpenCV)

def _plot(path: Path, title: str, xlabel: str, series: dict[str, list[tuple[float, float]]],
          ylabel: str, log_x: bool = False) -> None:
    import cv2

    width, height, left, bottom_margin = 820, 460, 70, 60
    image = np.full((height, width, 3), 255, np.uint8)
    points = [p for values in series.values() for p in values if p[1] is not None]
    if not points:
        return
    xs = [np.log10(max(p[0], 1e-3)) if log_x else p[0] for p in points]
    x_low, x_high = min(xs), max(xs)
    x_high = x_high if x_high > x_low else x_low + 1
    y_high = max(p[1] for p in points) * 1.1 or 1.0
    top, bottom, right = 40, height - bottom_margin, width - 180
    cv2.rectangle(image, (left, top), (right, bottom), (0, 0, 0), 1)
    cv2.putText(image, title, (left, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    for frac in (0, 0.5, 1.0):
        y = int(bottom - (bottom - top) * frac)
        cv2.putText(image, f"{y_high * frac:.2f}", (5, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    colours = [(200, 80, 30), (30, 120, 220), (40, 160, 40), (150, 40, 150), (0, 0, 0), (120, 120, 0)]
    for index, (label, values) in enumerate(series.items()):
        colour = colours[index % len(colours)]
        drawn = []
        for x, y in sorted(v for v in values if v[1] is not None):
            xv = np.log10(max(x, 1e-3)) if log_x else x
            px = int(left + (right - left) * (xv - x_low) / (x_high - x_low))
            py = int(bottom - (bottom - top) * y / y_high)
            cv2.circle(image, (px, py), 4, colour, -1)
            cv2.putText(image, f"{x:g}", (px - 8, bottom + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
            drawn.append((px, py))
        if len(drawn) > 1:
            cv2.polylines(image, [np.array(drawn, np.int32)], False, colour, 2, cv2.LINE_AA)
        cv2.putText(image, label, (right + 10, top + 20 + 20 * index), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    colour, 1, cv2.LINE_AA)
    cv2.putText(image, f"{xlabel}; y: {ylabel}", (left, height - 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                (0, 0, 0), 1, cv2.LINE_AA)
    cv2.imwrite(str(path), image)


def plot_all(result: dict, out: Path) -> list[str]:
    """One PNG per axis beside ``out``; their names."""
    cells = [c for c in result["cells"] if "skipped" not in c]
    made = []

    def series(pred, x, y) -> list[tuple[float, float]]:
        return [(x(c), y(c)) for c in cells if pred(c)]

    stem = out.with_suffix("")
    path = Path(f"{stem}_loss.png")
    _plot(path, "loss: longest freeze and frozen time (s), neural", "loss %", {
        "random: longest freeze": series(lambda c: c["cell"].startswith("loss") and c["axis"] == "loss",
                                         lambda c: 100 * c["impairment"]["loss"], lambda c: c["longest_freeze_s"]),
        "random: frozen": series(lambda c: c["cell"].startswith("loss") and c["axis"] == "loss",
                                 lambda c: 100 * c["impairment"]["loss"], lambda c: c["frozen_s"]),
        "burst: longest freeze": series(lambda c: c["cell"].startswith("burst"),
                                        lambda c: 100 * c["impairment"]["burst_loss"],
                                        lambda c: c["longest_freeze_s"]),
        "burst: frozen": series(lambda c: c["cell"].startswith("burst"),
                                lambda c: 100 * c["impairment"]["burst_loss"], lambda c: c["frozen_s"]),
    }, "seconds")
    made.append(path.name)
    path = Path(f"{stem}_delay.png")
    _plot(path, "delay (+ jitter): capture-to-render latency (ms), neural", "one-way delay ms", {
        "p50": series(lambda c: c["axis"] == "delay" or c["cell"] == "loss0",
                      lambda c: c["impairment"]["delay_ms"], lambda c: c["latency_p50_ms"]),
        "p95": series(lambda c: c["axis"] == "delay" or c["cell"] == "loss0",
                      lambda c: c["impairment"]["delay_ms"], lambda c: c["latency_p95_ms"]),
    }, "ms")
    made.append(path.name)
    path = Path(f"{stem}_rate.png")
    rate = {}
    for mode in ("neural", "h264"):
        for audio in (True, False):
            rate[f"{mode}{'' if audio else ' no audio'}"] = series(
                lambda c, m=mode, a=audio: c["axis"] == "rate" and c["mode"] == m and c["audio"] == a,
                lambda c: c["impairment"]["rate_kbps"], lambda c: c["rendered_fps"])
    _plot(path, "rate cap: rendered frames/s over the call", "cap kbit/s (log)", rate, "frames/s", log_x=True)
    made.append(path.name)
    path = Path(f"{stem}_outage.png")
    outage = [c for c in cells if c["axis"] == "outage"]
    if outage:
        freezes = outage[0].get("freezes") or []
        _plot(path, "5 s outage: each freeze (start s after connecting, length s)", "freeze start s",
              {"freeze length": [(start, length) for start, length in freezes]}, "seconds")
        made.append(path.name)
    return made


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(result: dict, cells: Sequence[str] | None = None) -> str:
    """The cells as a markdown table (docs/calls.md; ``cells`` picks rows for the README)."""
    rows = ["| cell | shaped by | mode | fps | first picture s | longest freeze s | frozen s | "
            "latency p50/p95 ms | keyframe request → picture s (max) | wire kbit/s (audio) | clean | commit, load |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in result["cells"]:
        if cells is not None and c["cell"] not in cells:
            continue
        if "skipped" in c or "failed" in c:
            rows.append(f"| {c['cell']} | {c.get('skipped') or c.get('failed')} |" + " |" * 10)
            continue
        shaped = ", ".join(k.replace("_", " ") + ": " + v.split(":")[0] for k, v in c["mechanisms"].items()) or "–"
        recovery = c.get("keyframe_recovery_s") or []
        wire = c.get("wire_kbps_by_kind") or {}
        mode = c["mode"] + ("" if c["audio"] else ", no audio")
        if c.get("mode_at_end") and c["mode_at_end"] != c["mode"]:
            mode += f" → {c['mode_at_end']}"
        latency = f"{_fmt(c.get('latency_p50_ms'), 0)}/{_fmt(c.get('latency_p95_ms'), 0)}"
        rows.append(
            f"| {c['cell']} | {shaped} | {mode} | {_fmt(c.get('rendered_fps'))} | "
            f"{_fmt(c.get('first_picture_s'))} | {_fmt(c.get('longest_freeze_s'))} | {_fmt(c.get('frozen_s'))} | "
            f"{latency} | {_fmt(max(recovery), 1) if recovery else '–'} ({len(recovery)}) | "
            f"{_fmt(c.get('wire_kbps_total'))} ({_fmt(wire.get('audio'))}) | {'yes' if c.get('ended_cleanly') else 'NO'} | "
            f"{(c.get('git_sha') or '–')[:7]}, {_fmt((c.get('load_before') or [None])[0])} |")
    return "\n".join(rows)


def write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str))
    tmp.replace(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.impairment", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/impairment/impairment.json"))
    parser.add_argument("--seconds", type=float, default=30.0, help="each cell's call, from connecting")
    parser.add_argument("--cells", default="", help="comma-separated cell names (default: the whole matrix)")
    parser.add_argument("--clip", default=DEFAULT_CLIP, help="under ../shared/data; 'default' for the built-in")
    parser.add_argument("--work", type=Path, default=None, help="keep each cell's reports and recording here")
    parser.add_argument("--table", type=Path, default=None,
                        help="print the markdown table of an existing result JSON and exit")
    args = parser.parse_args(argv)
    if args.table is not None:
        print(markdown_table(json.loads(args.table.read_text())))
        return 0
    cleanup_on_signals()
    cells = matrix()
    if args.cells:
        wanted = args.cells.split(",")
        unknown = set(wanted) - {c.name for c in cells}
        if unknown:
            parser.error(f"unknown cells: {sorted(unknown)}")
        cells = [c for c in cells if c.name in wanted]
    else:
        cells = [c for c in cells if c.axis != "ci"]
    clip = None
    if args.clip != "default":
        data = Path(os.environ.get("FACECODEC_DATA", REPO.parent / "shared" / "data"))
        clip = str((data / args.clip).resolve())
        if not Path(clip).is_file():
            parser.error(f"no clip at {clip} (--clip default uses the built-in source)")
    result = {"name": "impairment", "env": {**git_state(), "cpu": cpu_name(), "cores": os.cpu_count()},
              "command": "python -m benchmarks.impairment " + " ".join(argv if argv is not None else sys.argv[1:]),
              "clip": args.clip, "seconds": args.seconds, "tools_missing": tools_missing(), "cells": []}
    work_root = args.work or Path(tempfile.mkdtemp(prefix="impairment-"))
    for cell in cells:
        print(f"cell {cell.name} ...", file=sys.stderr, flush=True)
        try:
            figures = run_cell(cell, work_root / cell.name, seconds=args.seconds, clip=clip)
        except Exception as exc:  # a broken cell is recorded, the others still run
            figures = {"cell": cell.name, "axis": cell.axis, "failed": f"{type(exc).__name__}: {exc}"}
        figures["git_sha"] = result["env"].get("git_sha")  # cells merged from runs at other commits say which
        result["cells"].append(figures)
        write(result, args.out)
        print(f"  {cell.name}: " + json.dumps({k: figures.get(k) for k in (
            "skipped", "failed", "rendered_fps", "first_picture_s", "longest_freeze_s", "frozen_s",
            "latency_p50_ms", "latency_p95_ms", "wire_kbps_total", "ended_cleanly")}), file=sys.stderr, flush=True)
    leftover = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    result["leaked_namespaces"] = [line.split()[0] for line in leftover.splitlines() if line.startswith("fcimp")]
    result["plots"] = plot_all(result, args.out)
    write(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
