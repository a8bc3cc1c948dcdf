"""results.json: what a run records about itself (environment, protocol, notes), the store
that rewrites it atomically after every row (so a killed run resumes), and the per-setting
averages over clips."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.env import git_state
from codec.facecrop import FIT_FRAMES
from rtc.wire_cost import DATA_CHANNEL_CHUNK_BYTES, DATA_CHANNEL_OVERHEAD_BYTES

from .baselines import RTP_MAX_PAYLOAD, SRTP_PACKET_OVERHEAD_BYTES
from .clips import FRAME_LONG_SIDE, FRAME_MIN_SHORT
from .protocol import ALL_CODECS, FPS, FRAME_STATS, SUMMARY_METRICS, UNTRAINED_MARK, metric_sampling_text


def environment() -> dict[str, Any]:
    """What the numbers depend on: code version, library versions, device, threads."""
    import av
    import torch

    return {**git_state(),
            "torch": torch.__version__, "av": av.__version__, "numpy": np.__version__,
            "device": "cpu", "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "platform": platform.platform()}


def run_meta(name: str, command: str, untrained: bool, size: int | str, frames: int, every: int,
             source: str, keyframes: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's header in results.json: environment, protocol and the notes that say how
    bytes, rates and times were counted (``every``: ``--metric-every``; ``source``: where the
    clips came from; ``keyframes``: ours' keyframe codec and quality, ``ours.shipped_keyframes``)."""
    keyframe_note = [] if keyframes is None else [
        (f"ours' keyframes: {keyframes['codec']} q{keyframes['quality']}"
         + (" (the shipped default, what compress and a call send: codec.keyframe)"
            if keyframes["shipped_default"] else " (not the shipped default: setting names say -k<codec>/-kq<Q>)")
         + "; the frozen keyframe stays WebP q90.")]
    return {
        "name": name, "env": environment(), "command": command, "ours_keyframes": keyframes,
        "untrained": untrained, "marker": UNTRAINED_MARK if untrained else None,
        "protocol": ((f"whole frames scaled so the long side is at most {FRAME_LONG_SIDE}px (clips whose "
                      f"short side is under {FRAME_MIN_SHORT}px skipped), " if size == "frame" else
                      f"face crop fitted on the first {FIT_FRAMES} frames and fixed, {size}px, ")
                     + f"{FPS:g} fps, first {frames} frames, {source}; "
                     + metric_sampling_text(every, frames)),
        "metric_every": every, "frames_requested": frames,
        "x264_sei_included": False,
        "notes": [
            ("x264 bytes are raw Annex-B without x264's version SEI (~600 B, first packet); "
             "'kbps_with_sei' in each x264 row includes it."),
            ("x264: preset medium, tune zerolatency, bframes 0, keyint infinite, scenecut 0, "
             "threads 1 (one slice per frame). VP8/VP9: libvpx deadline realtime, cpu-used 8, "
             "lag-in-frames 0, qmin 0 qmax 63. AV1: libsvtav1 preset 10, svtav1-params "
             "pred-struct=1:rtc=1 (CRF) or pred-struct=1:rc=2:rtc=1 (CBR)."),
            (f"on-wire, what the video adds to an audio call: ours = header, keyframes and patches "
             f"as data-channel messages (+ {DATA_CHANNEL_OVERHEAD_BYTES} B per SCTP chunk of <= "
             f"{DATA_CHANNEL_CHUNK_BYTES} B, rtc.wire_cost.data_channel_message_wire_bytes) + each motion "
             f"packet as a header extension element of an audio packet (its bytes + 1 or 2 + padding, "
             f"rtc.wire_cost.motion_on_audio_wire_bytes; 'wire_kbps_without_audio' in each row's extra: "
             f"one data-channel message per packet); the frozen keyframe: one data-channel message; "
             f"baselines + {SRTP_PACKET_OVERHEAD_BYTES} B per SRTP packet of <= {RTP_MAX_PAYLOAD} B."),
            ("rates are averaged over clips per setting; the headline and BD-rates use those "
             "averaged curves; per-frame arrays are in perframe/*.npz."),
            ("encode/decode ms/frame are wall times on this machine's CPU, single-threaded for the "
             "PyAV codecs (colour conversion included)"
             + ("." if every == 1 else
                "; ours' decode ms/frame is per rendered (scored) frame: the other frames' "
                "packets are parsed but not rendered.")),
            metric_sampling_text(every, frames) + " (each row: metric_every, scored_frames).",
            ("lpips_p95: per clip, the 95th percentile of the scored frames' LPIPS (the worst "
             "frames; averaged over clips in 'averages'); lpips_p95_worse_than_frozen: above the "
             "frozen keyframe's on that clip ('worst_frames' lists those clips per setting)."),
            ("steady_kbps: payload kbit/s after the first second (frames 25 on): every codec "
             "without its first keyframe or I-frame; refresh keyframes, patches and motion count. "
             "The headline stays the payload rate over the whole clip."),
            *keyframe_note,
        ]}


class ResultStore:
    """results.json: loaded on start, rewritten atomically after every new row.

    ``meta`` (``run_meta``: environment, command, notes) describes the invocation that scores
    rows. A resumed run records it once it adds a row; an invocation that only re-summarises
    rows already there (new averages or analysis from the per-frame arrays) keeps the meta of
    the code that scored them, and is recorded in ``resummarised`` instead."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = {"results": []}
        if path.is_file():
            self.data = json.loads(path.read_text())
        self.data.setdefault("results", [])
        self._meta: dict[str, Any] | None = meta
        if not self.data["results"]:
            self._record_meta()

    def _record_meta(self) -> None:
        if self._meta is not None:
            self.data.update(self._meta)
            self._meta = None

    def note_resummarised(self) -> None:
        """Called when a summary is written: an invocation that scored nothing says so."""
        if self._meta is not None:
            env = self._meta["env"]
            self.data.setdefault("resummarised", []).append(
                {**{k: env[k] for k in ("git_sha", "git_dirty") if k in env}, "command": self._meta["command"]})

    @staticmethod
    def key(row: dict[str, Any]) -> tuple:
        # frames_requested: --frames (a short clip's row has fewer "frames" than asked for)
        return (row["codec"], row["setting"], row["clip"], row["size"],
                row.get("frames_requested", row["frames"]), row.get("model"),
                row.get("metric_every", 1))

    def has(self, **key: Any) -> bool:
        wanted = self.key(key)
        return any(self.key(r) == wanted for r in self.data["results"])

    def add(self, row: dict[str, Any]) -> None:
        self._record_meta()
        self.data["results"] = [r for r in self.data["results"] if self.key(r) != self.key(row)]
        self.data["results"].append(row)
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(self.data, indent=1, default=_json_default))
        partial.replace(self.path)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return None if not np.isfinite(value) else float(value)
    raise TypeError(f"not JSON-serialisable: {type(value)}")


def average_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean of every numeric field per (codec, setting) over the clips it ran on (the summary
    metrics and ``FRAME_STATS`` over the clips that have them)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["codec"], row["setting"]), []).append(row)
    out = []
    for (codec, setting), members in groups.items():
        avg: dict[str, Any] = {"codec": codec, "setting": setting, "clips": len(members),
                               "untrained": any(m.get("untrained") for m in members)}
        for key in members[0]:
            values = [m.get(key) for m in members]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                avg[key] = float(np.mean(values))
            elif key in SUMMARY_METRICS or key in FRAME_STATS:
                finite = [v for v in values if isinstance(v, (int, float))]
                avg[key] = float(np.mean(finite)) if finite else None
        out.append(avg)
    return sorted(out, key=lambda r: (ALL_CODECS.index(r["codec"]) if r["codec"] in ALL_CODECS
                                      else 99, r.get("payload_kbps", 0.0)))

