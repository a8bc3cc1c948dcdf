"""What ``facecodec call --stats-file`` writes: the process's resources and the call's numbers,
one JSON line every few seconds, so that a long call (the soak benchmark) can be watched."""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.call import Call


def process_usage() -> dict[str, float | int]:
    """This process's resident memory (MB), open file descriptors and threads, from /proc
    (Linux; -1 where unavailable): what a long call must keep flat."""
    rss_mb, threads = -1.0, -1
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss_mb = int(line.split()[1]) / 1024.0
                elif line.startswith("Threads:"):
                    threads = int(line.split()[1])
        fds = len(os.listdir("/proc/self/fd"))
    except (OSError, ValueError):
        fds = -1
    return {"rss_mb": round(rss_mb, 2), "fds": fds, "threads": threads}


async def write_call_stats(path: str | os.PathLike[str], every: float, current: dict[str, Call | None],
                           started: float) -> None:
    """Append one JSON line to ``path`` every ``every`` s until cancelled: the process's
    memory, descriptors and threads, and the current call's receiver and sender numbers
    (``current["call"]``, set by run_peer's ``on_call``). The soak benchmark reads it."""
    with open(path, "a", encoding="utf-8") as out:
        while True:
            await asyncio.sleep(every)
            call = current.get("call")
            row: dict = {"t": round(time.monotonic() - started, 2), **process_usage(),
                         "connected": bool(call is not None and call.connected)}
            if call is not None and call.receiver_session is not None:
                row["receiver"] = call.receiver_session.snapshot()
            if call is not None and call.sender_session is not None:
                sent = asdict(call.sender_session.stats)
                row["sender"] = {key: sent[key] for key in ("frames", "neural_frames", "h264_frames",
                                                            "skipped_late", "motion_dropped", "motion_on_audio",
                                                            "keyframes")}
            out.write(json.dumps(row) + "\n")
            out.flush()
