"""Rate–distortion benchmark: our codec against x264, VP8, VP9, SVT-AV1 and the frozen keyframe.

    python -m benchmarks.rd --manifest ../shared/data/talking/MANIFEST.tsv --split dev \
        --clips 10 --frames 250 --out out/rd --codecs ours,x264,vp8,vp9,av1,frozen

    python -m benchmarks.rd --folder my_videos/ --codecs x264,frozen --frames 100 --out out/mine

``--folder DIR`` alone benchmarks every video under DIR (recursively, sorted by path; each
clip is named by its path under DIR). With ``--manifest`` it only says where the manifest's
paths live. A run that scores no clip at all exits with status 2 and the reason.

Protocol (docs/DESIGN.md, "Measuring"): a square face crop fitted on the first 5 frames and
held fixed (as ``codec.api.compress`` does), 256×256 (512 where the source has the pixels,
with ``--size 512``), resampled to 25 fps, the first 250 frames. The crops are cached per
clip as .npy under the output folder, and every (codec, setting, clip) result is written to
``results.json`` as soon as it exists, so an interrupted run resumes where it stopped.

Bits counted:
- ours: stream header + every keyframe packet + every motion packet (payload kbit/s); the
  on-wire estimate adds ``DATA_CHANNEL_OVERHEAD_BYTES`` (93 B) per message (each motion
  packet and each keyframe packet is one data-channel message).
- x264 / VP8 / VP9 / AV1: the raw elementary stream the encoder emits (Annex-B for H.264,
  bare frames for VP8/VP9, low-overhead OBUs for AV1), no container. For x264 the one
  "user data unregistered" SEI carrying x264's version and options string (~600 B, in the
  first packet) is *excluded* from the counted bytes, because it carries no picture data and a
  real-time sender can drop it; excluding it only favours the baseline. Its size is stored
  (``x264_sei_bytes``) and ``kbps_with_sei`` gives the rate with it. On-wire adds
  ``SRTP_PACKET_OVERHEAD_BYTES`` (50 B) per RTP packet of at most ``RTP_MAX_PAYLOAD`` bytes.
- frozen keyframe: one WebP q90 keyframe (``codec.keyframe.encode_keyframe``), shown for
  every frame.

Metrics come from ``codec.metrics`` (PSNR on RGB, SSIM, MS-SSIM, LPIPS AlexNet v0.1, AKD and
AED from dlib), per frame, then per clip (mean over frames), then averaged over clips.

``--metric-every K`` (default 1) scores only frames 0, K, 2K, …: every codec still encodes
and decodes every frame, and the rates count every frame's bits, but the quality metrics
(and, for our codec, the generator call that rebuilds a frame) are spent on the sampled
frames only. Our decoder still parses every motion packet (the prediction chain needs it)
and renders only the sampled frames (``Decoder.decode_stream(render=...)``). Each row
records ``metric_every`` and ``scored_frames``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.env import git_sha
from codec.progress import ProgressBar

log = logging.getLogger("benchmarks.rd")

FPS = 25.0
FIT_FRAMES = 5  # same as codec.api.FIT_FRAMES: the crop is the median box of the first 5 frames
# Per-packet cost of an SRTP video packet on the wire: IPv4 20 + UDP 8 + RTP 12 + auth tag 10.
SRTP_PACKET_OVERHEAD_BYTES = 50
RTP_MAX_PAYLOAD = 1200  # bytes of video per RTP packet (a frame larger than this is split)
UNTRAINED_MARK = "UNTRAINED MODEL — our codec's quality figures are meaningless"
METRICS = ("psnr", "ssim", "ms_ssim", "lpips", "akd", "aed")
# Lower is better for these; higher for the rest.
LOWER_IS_BETTER = {"lpips", "akd", "aed"}
ALL_CODECS = ("ours", "x264", "vp8", "vp9", "av1", "frozen")

# Sweeps. CRF 51 / the lowest targets are the codecs' floors on talking heads at 256 px.
X264_CRFS = (18, 24, 30, 36, 40, 44, 48, 51)
X264_KBPS = (4, 6, 8, 12, 20, 40)
VPX_KBPS = (6, 10, 16, 25, 40, 80, 160)
AV1_CRFS = (35, 45, 52, 58, 63)
AV1_KBPS = (4, 8, 16, 32, 64)
# --sweep quick: a few points per codec, for smoke runs on the 2-core machine.
QUICK = {"x264_crfs": (24, 36, 44, 51), "x264_kbps": (6,), "vpx_kbps": (10, 40),
         "av1_crfs": (45, 63), "av1_kbps": (8,)}


# --------------------------------------------------------------------------- small helpers


def slug(text: str) -> str:
    """A file-name-safe version of a clip path or setting."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")



def environment() -> dict[str, Any]:
    """What the numbers depend on: code version, library versions, device, threads."""
    import av
    import torch

    return {"git_sha": git_sha(),
            "torch": torch.__version__, "av": av.__version__, "numpy": np.__version__,
            "device": "cpu", "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "platform": platform.platform()}


# --------------------------------------------------------------------------- clips and crops


@dataclass
class Clip:
    """One clip to benchmark: a manifest row, or a video under ``--folder``."""

    path: Path
    name: str  # the manifest's relative path (or the path under --folder): the clip's id


def manifest_clips(manifest: Path, split: str, folder: Path | None = None) -> list[Clip]:
    """The manifest's clips of ``split``, in manifest order; paths relative to ``folder``
    (default: the manifest's own folder)."""
    base = folder if folder is not None else manifest.parent
    clips = []
    with open(manifest, newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row.get("split") == split:
                clips.append(Clip(path=base / row["path"], name=row["path"]))
    return clips


def folder_clips(folder: Path) -> list[Clip]:
    """Every video under ``folder`` (recursively; ``codec.training.dataset.VIDEO_SUFFIXES``),
    sorted by path, each named by its path relative to ``folder``."""
    from codec.training.dataset_builder import jobs_from_folder

    return [Clip(path=Path(job.path), name=job.source) for job in jobs_from_folder(folder)]


def skip_summary(skipped: dict[str, str], clips: Sequence[Clip]) -> str:
    """The skip reasons of ``clips`` counted, e.g. "not found: 3, no frames: 1" (the clip's
    own path and any detail after the first colon are left out so equal reasons group)."""
    counts: dict[str, int] = {}
    for clip in clips:
        reason = skipped.get(clip.name)
        if reason is None:
            continue
        kind = reason.replace(str(clip.path), "").strip().split(":")[0].strip() or reason
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{kind}: {n}" for kind, n in sorted(counts.items(), key=lambda kv: -kv[1]))


class SkipClip(Exception):
    """The clip cannot be used under the protocol (logged with the reason, then skipped)."""


def load_crops(clip: Clip, size: int, frames: int, cache_dir: Path) -> np.ndarray:
    """The protocol's crops of a clip: N×size×size×3 uint8 RGB, cached as .npy.

    The crop box is fitted on the first FIT_FRAMES frames and held fixed. At sizes above
    256 the clip is skipped when the box has fewer source pixels than ``size`` (it would
    be an upscale, not a 512 px test)."""
    from codec.errors import CodecError
    from codec.facecrop import FaceCropper
    from codec.media import read_frames

    cache = cache_dir / f"{slug(clip.name)}_{size}px_{frames}f.npy"
    if cache.is_file():
        return np.load(cache, mmap_mode="r")
    if not clip.path.exists():
        raise SkipClip(f"{clip.path} not found")
    try:
        images = [item.image for item in read_frames(clip.path, fps=FPS, max_frames=frames)]
        if not images:
            raise SkipClip("no frames")
        cropper = FaceCropper(out_size=size)
        box = cropper.fit(images[:FIT_FRAMES])
    except CodecError as exc:
        raise SkipClip(f"{type(exc).__name__}: {exc}") from exc
    if size > 256 and box.side < size:
        raise SkipClip(f"crop box is {box.side}px in the source, fewer than {size}px")
    crops = np.stack([box.crop(image, size) for image in images])
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(cache.name + ".partial.npy")
    np.save(partial, crops)
    partial.replace(cache)  # a killed run never leaves a half cache under the real name
    return crops


# --------------------------------------------------------------------------- codec runs


@dataclass
class CodecRun:
    """What one codec setting did on one clip.

    ``frame_bytes[i]`` are the bytes attributed to frame i (for ours: its keyframe packet,
    if any, plus its motion packet; the stream header goes to frame 0). ``decoded`` holds
    every frame, or only the frames ``scored`` names when the codec was asked to rebuild
    just those (ours with ``metric_every`` > 1)."""

    decoded: list[np.ndarray]  # N (or len(scored)) × H×W×3 uint8 RGB at the crop size
    frame_bytes: np.ndarray  # N int
    wire_bytes: int  # payload + per-message/per-packet transport overhead
    encode_s: float
    decode_s: float
    extra: dict[str, Any] = field(default_factory=dict)
    scored: np.ndarray | None = None  # frame indices ``decoded`` holds when not all frames
    rendered: int | None = None  # frames actually rebuilt (decode_s covers these), if not N

    def scored_frames(self, metric_every: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """(indices, decoded frames) of frames 0, K, 2K, … (K = ``metric_every``)."""
        n = len(self.frame_bytes)
        wanted = scored_indices(n, metric_every)
        if self.scored is not None:
            if not np.array_equal(self.scored, wanted):
                raise ValueError(f"run holds frames {self.scored[:4]}…, not every {metric_every}th")
            return wanted, list(self.decoded)
        return wanted, [self.decoded[i] for i in wanted]


def scored_indices(n: int, metric_every: int) -> np.ndarray:
    """Frames 0, K, 2K, … below n: the frames whose quality is measured."""
    if metric_every < 1:
        raise ValueError("metric_every must be >= 1")
    return np.arange(0, n, metric_every, dtype=np.int64)


@dataclass(frozen=True)
class Setting:
    """One point of a codec's sweep."""

    codec: str
    name: str  # e.g. "crf36", "kbps20", "q3-kf0"
    params: dict[str, Any]


def _annexb_nals(data: bytes) -> list[tuple[int, int, int]]:
    """(nal_type, start, end) of each NAL unit in an Annex-B buffer; start includes the
    start code (3 or 4 bytes), so the byte counts add up to len(data)."""
    starts = [m.start() for m in re.finditer(b"\x00\x00\x01", data)]
    out = []
    for k, s in enumerate(starts):
        begin = s - 1 if s > 0 and data[s - 1] == 0 else s  # 4-byte start code
        if k == 0:
            begin = 0
        end = starts[k + 1] if k + 1 < len(starts) else len(data)
        if k + 1 < len(starts) and starts[k + 1] > 0 and data[starts[k + 1] - 1] == 0:
            end = starts[k + 1] - 1
        out.append((data[s + 3] & 0x1F if s + 3 < len(data) else -1, begin, end))
    return out


def x264_version_sei_bytes(packet: bytes) -> int:
    """Bytes of x264's version/options SEI (a type-6 NAL holding "x264 - core") in a packet."""
    return sum(end - begin for nal, begin, end in _annexb_nals(packet)
               if nal == 6 and b"x264 - core" in packet[begin:end])


def _pyav_settings(codec: str, quick: bool = False) -> list[Setting]:
    """The sweep for a PyAV codec: encoder name, options, and the decoder to read it back."""
    out: list[Setting] = []
    x264_crfs, x264_kbps = (QUICK["x264_crfs"], QUICK["x264_kbps"]) if quick else (X264_CRFS, X264_KBPS)
    vpx_kbps = QUICK["vpx_kbps"] if quick else VPX_KBPS
    av1_crfs, av1_kbps = (QUICK["av1_crfs"], QUICK["av1_kbps"]) if quick else (AV1_CRFS, AV1_KBPS)
    if codec == "x264":
        # One slice per frame: threads=1 (with zerolatency each thread adds a slice and
        # raises the rate floor). One keyframe: keyint=infinite, no scene-cut I-frames.
        base = {"preset": "medium", "tune": "zerolatency", "bframes": "0",
                "x264-params": "keyint=infinite:scenecut=0"}
        out += [Setting(codec, f"crf{c}", {"encoder": "libx264", "decoder": "h264",
                                           "options": base | {"crf": str(c)}})
                for c in x264_crfs]
        out += [Setting(codec, f"kbps{k}", {"encoder": "libx264", "decoder": "h264",
                                            "options": dict(base), "kbps": k}) for k in x264_kbps]
    elif codec in ("vp8", "vp9"):
        options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        encoder = "libvpx" if codec == "vp8" else "libvpx-vp9"
        if codec == "vp9":
            options |= {"row-mt": "0"}
        out += [Setting(codec, f"kbps{k}", {"encoder": encoder, "decoder": codec,
                                            "options": dict(options), "kbps": k, "qmin": 0,
                                            "qmax": 63}) for k in vpx_kbps]
    elif codec == "av1":
        # SVT-AV1 low delay: pred-struct=1; in that mode only CRF (CQP) or CBR (rc=2) are
        # accepted (rc=1 VBR is refused), and rtc=1 selects the real-time tuning.
        out += [Setting(codec, f"crf{c}", {"encoder": "libsvtav1", "decoder": "libdav1d",
                                           "options": {"preset": "10", "crf": str(c),
                                                       "svtav1-params": "pred-struct=1:rtc=1"}})
                for c in av1_crfs]
        out += [Setting(codec, f"kbps{k}", {"encoder": "libsvtav1", "decoder": "libdav1d",
                                            "options": {"preset": "10",
                                                        "svtav1-params": "pred-struct=1:rc=2:rtc=1"},
                                            "kbps": k}) for k in av1_kbps]
    else:
        raise ValueError(codec)
    return out


def run_pyav(crops: np.ndarray, params: dict[str, Any], fps: float = FPS) -> CodecRun:
    """Encode crops with a PyAV encoder (one keyframe, no lookahead), decode them back."""
    import av

    n, height, width = crops.shape[:3]
    enc = av.CodecContext.create(params["encoder"], "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base = Fraction(1, int(round(fps)))
    enc.framerate = Fraction(int(round(fps)), 1)
    enc.gop_size = 100_000  # one keyframe for the whole clip
    enc.thread_count = 1  # one slice (x264) and comparable single-core timings
    if "kbps" in params:
        enc.bit_rate = int(params["kbps"] * 1000)
    if "qmin" in params:
        enc.qmin, enc.qmax = params["qmin"], params["qmax"]
    enc.options = dict(params["options"])
    frame_bytes = np.zeros(n, dtype=np.int64)
    packets: list[bytes] = []
    owners: list[int] = []  # which input frame a packet was emitted after
    started = time.perf_counter()
    for i in range(n):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(crops[i]), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = i
        for packet in enc.encode(frame):
            packets.append(bytes(packet))
            owners.append(i)
    for packet in enc.encode(None):
        packets.append(bytes(packet))
        owners.append(n - 1)
    encode_s = time.perf_counter() - started
    extra: dict[str, Any] = {"encoder": params["encoder"], "options": params["options"],
                             "threads": 1, "packets": len(packets)}
    if "kbps" in params:
        extra["target_kbps"] = params["kbps"]
    sei = 0
    if params["encoder"] == "libx264":
        sei = sum(x264_version_sei_bytes(p) for p in packets)
        extra["x264_sei_bytes"] = sei
        extra["x264_sei_included"] = False
    for owner, data in zip(owners, packets):
        frame_bytes[owner] += len(data)
    if sei and packets:
        frame_bytes[owners[0]] -= sei  # counted bytes exclude the version SEI (see module doc)
    dec = av.CodecContext.create(params["decoder"], "r")
    dec.thread_count = 1
    decoded: list[np.ndarray] = []
    started = time.perf_counter()
    for data in packets:
        for frame in dec.decode(av.Packet(data)):
            decoded.append(frame.to_ndarray(format="rgb24"))
    for frame in dec.decode(None):
        decoded.append(frame.to_ndarray(format="rgb24"))
    decode_s = time.perf_counter() - started
    extra["decoded_frames"] = len(decoded)
    if not decoded:
        raise RuntimeError(f"{params['encoder']}: the decoder returned no frames")
    while len(decoded) < n:  # a dropped frame is shown as the previous one (what a player does)
        decoded.append(decoded[-1])
    wire = int(frame_bytes.sum()) + sum(
        SRTP_PACKET_OVERHEAD_BYTES * max(1, math.ceil(b / RTP_MAX_PAYLOAD)) for b in frame_bytes if b)
    return CodecRun(decoded=decoded[:n], frame_bytes=frame_bytes, wire_bytes=wire,
                    encode_s=encode_s, decode_s=decode_s, extra=extra)


def run_frozen(crops: np.ndarray) -> CodecRun:
    """Frame 1 as a WebP q90 keyframe, shown for every frame: 0 bit/s after it, no motion."""
    from codec.keyframe import decode_keyframe, encode_keyframe

    n = crops.shape[0]
    started = time.perf_counter()
    data = encode_keyframe(np.ascontiguousarray(crops[0]), "webp", 90)
    encode_s = time.perf_counter() - started
    started = time.perf_counter()
    image = decode_keyframe(data, "webp")
    decode_s = time.perf_counter() - started
    frame_bytes = np.zeros(n, dtype=np.int64)
    frame_bytes[0] = len(data)
    from codec.api import DATA_CHANNEL_OVERHEAD_BYTES

    return CodecRun(decoded=[image] * n, frame_bytes=frame_bytes,
                    wire_bytes=len(data) + DATA_CHANNEL_OVERHEAD_BYTES, encode_s=encode_s,
                    decode_s=decode_s, extra={"keyframe_codec": "webp", "keyframe_quality": 90})


def run_ours(crops: np.ndarray, loaded, quality: int, keyframe_refresh_s: float,
             fps: float = FPS, progress: ProgressBar | None = None,
             metric_every: int = 1, refresh_policy=None) -> CodecRun:
    """Encoder over the crops, Decoder to rebuild them; counts header + keyframes + motion.

    ``keyframe_refresh_s`` = 0: one keyframe; N: a new keyframe every N seconds.
    ``refresh_policy``: the sender's closed loop instead (``codec.api.RefreshPolicy``): a new
    keyframe when its own rebuild stays under a PSNR threshold. Every frame
    is encoded and every packet decoded, but with ``metric_every`` = K > 1 only frames 0, K,
    2K, … are rendered by the generator (the others advance the motion chain only), and
    ``decoded`` holds just those."""
    import cv2

    from codec.api import DATA_CHANNEL_OVERHEAD_BYTES, Decoder, Encoder

    n, size = crops.shape[0], crops.shape[1]
    encoder = Encoder(loaded, quality=quality, frame_rate=fps, refresh=refresh_policy)
    header = encoder.header()
    period = int(round(keyframe_refresh_s * fps)) if keyframe_refresh_s > 0 else 0
    frame_bytes = np.zeros(n, dtype=np.int64)
    frame_bytes[0] += len(header)
    messages = 0
    stream: list[bytes] = []
    started = time.perf_counter()
    for i in range(n):
        if period and i > 0 and i % period == 0:
            encoder.request_keyframe()
        packets = encoder.encode(np.ascontiguousarray(crops[i]), timestamp=i / fps)
        frame_bytes[i] += sum(len(p) for p in packets)
        messages += len(packets)
        stream.extend(packets)
        if progress is not None:
            progress.update()
    encode_s = time.perf_counter() - started
    decoder = Decoder.from_header(header, model=loaded)
    decoded: list[np.ndarray] = []
    wanted = scored_indices(n, metric_every)
    render = None if metric_every == 1 else (lambda seq: seq % metric_every == 0)
    started = time.perf_counter()
    for frame in decoder.decode_stream(stream, batch_size=1, render=render):
        image = frame.image
        if image.shape[0] != size:  # e.g. the tiny model renders 64 px; compare at crop size
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_CUBIC)
        decoded.append(image)
        if progress is not None:
            progress.update(metric_every)
    decode_s = time.perf_counter() - started
    if len(decoded) != len(wanted):
        raise RuntimeError(f"our decoder returned {len(decoded)} frames for {len(wanted)}")
    stats = encoder.stats
    return CodecRun(
        decoded=decoded, frame_bytes=frame_bytes,
        wire_bytes=int(frame_bytes.sum()) + messages * DATA_CHANNEL_OVERHEAD_BYTES,
        encode_s=encode_s, decode_s=decode_s,
        extra={"model": loaded.name, "untrained": bool(loaded.untrained), "quality": quality,
               "keyframe_refresh_s": keyframe_refresh_s,
               "refresh_policy": None if refresh_policy is None else str(refresh_policy),
               "refreshes": [seq for seq, _ in stats.refreshes], "keyframes": stats.keyframes,
               "keyframe_bytes": stats.keyframe_bytes, "motion_bytes": stats.motion_bytes,
               "header_bytes": len(header), "messages": messages,
               "model_size": loaded.image_size,
               "data_channel_overhead_bytes": DATA_CHANNEL_OVERHEAD_BYTES,
               "rendered_frames": len(decoded)},
        scored=None if metric_every == 1 else wanted,
        rendered=None if metric_every == 1 else len(decoded))


# --------------------------------------------------------------------------- metrics


class MetricSuite:
    """Per-frame quality metrics from ``codec.metrics``; a metric that cannot run is 'n/a'
    with the reason (recorded once in ``unavailable``).

    The reference clip's landmarks and embeddings are computed once per clip (``reference``)
    and reused for every codec setting; identical decoded frames (the frozen keyframe) are
    analysed once."""

    def __init__(self, batch: int = 10, wanted: Sequence[str] = METRICS) -> None:
        import codec.metrics as metrics  # lazy: pulls in the LPIPS backbone and dlib

        self.m = metrics
        self.batch = batch
        self.wanted = set(wanted)
        self.unavailable: dict[str, str] = {}
        self._lpips = None
        self._faces = None
        if "lpips" in self.wanted:
            try:
                self._lpips = metrics.lpips_model()
            except Exception as exc:  # noqa: BLE001 — any failure means "n/a", with its reason
                self.unavailable["lpips"] = f"{type(exc).__name__}: {exc}"
        if self.wanted & {"akd", "aed"}:
            self._faces, reason = metrics.landmark_metrics_or_reason()
            if reason:
                self.unavailable["akd"] = self.unavailable["aed"] = reason
        for name in set(METRICS) - self.wanted:
            self.unavailable[name] = "not requested (--metrics)"
        self._ref_key: str | None = None
        self._ref: tuple[list, list] | None = None

    def _face_features(self, frames: Sequence[np.ndarray]) -> tuple[list, list]:
        """(landmarks, embeddings) per frame, None where no face; duplicates analysed once."""
        unique: dict[bytes, int] = {}
        order = []
        firsts: list[np.ndarray] = []
        for frame in frames:
            digest = hashlib.blake2b(np.ascontiguousarray(frame).tobytes(), digest_size=16).digest()
            if digest not in unique:
                unique[digest] = len(firsts)
                firsts.append(np.ascontiguousarray(frame))
            order.append(unique[digest])
        landmarks = self._faces.landmarks(firsts)
        embeddings: list = [None] * len(firsts)
        if "aed" in self.wanted:
            try:
                embeddings = self._faces.embeddings(firsts, landmarks)
            except self.m.MetricUnavailableError as exc:
                self.unavailable.setdefault("aed", str(exc))
        return [landmarks[i] for i in order], [embeddings[i] for i in order]

    def reference(self, key: str, target: np.ndarray) -> tuple[list, list] | None:
        """The target clip's face features, computed once per clip ``key``."""
        if self._faces is None:
            return None
        if self._ref_key != key:
            self._ref = self._face_features(list(target))
            self._ref_key = key
        return self._ref

    def _batched(self, name: str, fn: Callable, pred, target) -> np.ndarray:
        try:
            return np.asarray(fn(pred, target).detach().reshape(-1).cpu().numpy(), dtype=np.float64)
        except Exception as exc:  # noqa: BLE001 — e.g. MS-SSIM on frames under 161 px
            self.unavailable.setdefault(name, f"{type(exc).__name__}: {exc}")
            return np.full(pred.shape[0], np.nan)

    def per_frame(self, decoded: Sequence[np.ndarray], target: np.ndarray, clip_key: str,
                  progress: ProgressBar | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Metric arrays (N values each; NaN where unavailable or no face) and side counts."""
        import torch

        n = len(decoded)
        out = {name: np.full(n, np.nan) for name in METRICS}
        with torch.inference_mode():
            for s in range(0, n, self.batch):
                e = min(n, s + self.batch)
                pred = self.m.frames_to_tensor(np.stack(decoded[s:e]))
                ref = self.m.frames_to_tensor(np.asarray(target[s:e]))
                for name in ("psnr", "ssim", "ms_ssim"):
                    if name in self.wanted:
                        out[name][s:e] = self._batched(name, getattr(self.m, name), pred, ref)
                if self._lpips is not None:
                    out["lpips"][s:e] = self._batched("lpips", self._lpips, pred.float(), ref.float())
                if progress is not None:
                    progress.update(e - s)
        side: dict[str, Any] = {}
        ref_features = self.reference(clip_key, target)
        if ref_features is not None:
            ref_lms, ref_emb = ref_features
            lms, emb = self._face_features(decoded)
            for i in range(n):  # per-frame values; the clip means below use codec.metrics' own
                if lms[i] is not None and ref_lms[i] is not None:
                    out["akd"][i] = float(np.linalg.norm(lms[i] - ref_lms[i], axis=1).mean())
                if emb[i] is not None and ref_emb[i] is not None:
                    out["aed"][i] = float(np.linalg.norm(emb[i] - ref_emb[i]))
            if "akd" in self.wanted:
                akd = self._faces.akd_from_landmarks(lms, ref_lms)
                side.update(akd_frames=akd.frames, akd_face_missing=akd.skipped)
            else:
                out["akd"][:] = np.nan
            if "aed" in self.wanted:
                aed = self._faces.aed_from_embeddings(emb, ref_emb)
                side.update(aed_frames=aed.frames, aed_face_missing=aed.skipped)
            else:
                out["aed"][:] = np.nan
        return out, side


def summarize(metrics: dict[str, np.ndarray], run: CodecRun, fps: float = FPS,
              metric_every: int = 1) -> dict[str, Any]:
    """One clip's row: metric means over the scored frames (0, K, 2K, … with K =
    ``metric_every``), rates over every frame, and speeds.

    ``decode_ms_per_frame`` divides by the frames the decoder rebuilt: all of them for the
    PyAV codecs and the frozen keyframe, only the scored ones for ours when K > 1 (its
    skipped frames cost a motion-packet parse, not a generator call)."""
    n = len(run.frame_bytes)
    duration = n / fps
    total = int(run.frame_bytes.sum())
    row: dict[str, Any] = {name: (None if np.all(np.isnan(v)) else float(np.nanmean(v)))
                           for name, v in metrics.items()}
    row.update(frames=n, bytes=total, bits_per_frame=8.0 * total / n,
               payload_kbps=8.0 * total / duration / 1000.0,
               wire_kbps=8.0 * run.wire_bytes / duration / 1000.0,
               metric_every=int(metric_every),
               scored_frames=int(len(scored_indices(n, metric_every))),
               decoded_frames=int(run.rendered if run.rendered is not None else n),
               encode_ms_per_frame=1000.0 * run.encode_s / n,
               decode_ms_per_frame=1000.0 * run.decode_s / max(
                   run.rendered if run.rendered is not None else n, 1))
    if "x264_sei_bytes" in run.extra:
        row["kbps_with_sei"] = 8.0 * (total + run.extra["x264_sei_bytes"]) / duration / 1000.0
    return row


# --------------------------------------------------------------------------- curve maths


def _envelope(rates: Sequence[float], values: Sequence[float],
              sign: float) -> tuple[np.ndarray, np.ndarray]:
    """(log-rates, sign·quality) of a curve's monotone envelope: points sorted by rate, each
    kept only if it improves on every cheaper point (``sign`` = −1 for lower-is-better)."""
    pts = sorted((float(r), float(v)) for r, v in zip(rates, values)
                 if v is not None and np.isfinite(r) and np.isfinite(v) and r > 0)
    kept: list[tuple[float, float]] = []
    for r, v in pts:
        if not kept or sign * v > kept[-1][1]:
            kept.append((r, sign * v))
    return np.log([k[0] for k in kept]), np.array([k[1] for k in kept])


def bd_rate(rate_a: Sequence[float], metric_a: Sequence[float], rate_b: Sequence[float],
            metric_b: Sequence[float], lower_is_better: bool | None = None) -> float | None:
    """Bjøntegaard delta rate of curve B against curve A, in percent.

    Each curve is reduced to its monotone envelope (a point that is no better than a cheaper
    one is dropped), log(rate) is interpolated piecewise-linearly in the metric between the
    envelope's points, both are averaged over the metric interval where the curves overlap,
    and the mean log-rate difference becomes a percentage: −50 means B needs half A's rate
    for the same quality. Piecewise-linear rather than the classic cubic fit, because a cubic
    through a curve with a knee (x264 near its floor) swings far outside the measured rates
    and gives absurd answers such as −100 %. ``lower_is_better`` (inferred from curve A's
    ends when None) picks the metric's direction. None when the curves do not overlap or
    have fewer than 2 envelope points."""
    if lower_is_better is None:
        pts = sorted((float(r), float(v)) for r, v in zip(rate_a, metric_a)
                     if v is not None and np.isfinite(r) and np.isfinite(v) and r > 0)
        if len(pts) < 2:
            return None
        lower_is_better = pts[-1][1] < pts[0][1]
    sign = -1.0 if lower_is_better else 1.0
    curves = [_envelope(rate_a, metric_a, sign), _envelope(rate_b, metric_b, sign)]
    if any(len(q) < 2 for _, q in curves):
        return None
    low = max(q[0] for _, q in curves)
    high = min(q[-1] for _, q in curves)
    if not high > low:
        return None
    # Piecewise-linear integrands: the trapezoid rule over every breakpoint is exact.
    grid = np.unique(np.concatenate([[low, high]] + [q[(q > low) & (q < high)] for _, q in curves]))
    means = [float(np.trapezoid(np.interp(grid, q, log_rate), grid)) / (high - low)
             for log_rate, q in curves]
    return float((math.exp(means[1] - means[0]) - 1.0) * 100.0)


def rate_for_quality(rates: Sequence[float], values: Sequence[float], target: float,
                     lower_is_better: bool) -> float | None:
    """The rate at which a codec's curve reaches ``target`` quality, interpolating
    log-rate linearly between the two neighbouring points of its convex-hull-free
    monotone envelope (points sorted by rate, each kept only if it improves on all cheaper
    ones). None when the target lies outside what the curve reaches."""
    pts = sorted((float(r), float(v)) for r, v in zip(rates, values)
                 if r > 0 and np.isfinite(r) and np.isfinite(v))
    sign = -1.0 if lower_is_better else 1.0  # make "higher is better" internally
    envelope: list[tuple[float, float]] = []
    for r, v in pts:
        if not envelope or sign * v > envelope[-1][1]:
            envelope.append((r, sign * v))
    goal = sign * target
    if not envelope or goal < envelope[0][1] or goal > envelope[-1][1]:
        return None
    if len(envelope) == 1:
        return envelope[0][0]
    for (r0, q0), (r1, q1) in zip(envelope, envelope[1:]):
        if q0 <= goal <= q1:
            t = 0.0 if q1 == q0 else (goal - q0) / (q1 - q0)
            return float(math.exp(math.log(r0) + t * (math.log(r1) - math.log(r0))))
    return None


def value_at_rate(rates: Sequence[float], values: Sequence[float], rate: float) -> float | None:
    """A metric interpolated at ``rate`` along a curve (linear in log-rate); None outside it."""
    pts = sorted((float(r), float(v)) for r, v in zip(rates, values)
                 if r > 0 and np.isfinite(r) and v is not None and np.isfinite(v))
    if not pts or rate < pts[0][0] or rate > pts[-1][0]:
        return None
    xs = np.log([p[0] for p in pts])
    return float(np.interp(math.log(rate), xs, [p[1] for p in pts]))


def headline(ours: dict[str, float], x264_curve: list[dict[str, float]],
             rate_key: str = "payload_kbps") -> dict[str, Any]:
    """x264 rate needed to match our LPIPS (interpolated on x264's curve) ÷ our rate.

    Counted only where our AKD is no worse than x264's AKD at that matched rate (else the
    match rewards sharp frames that do not move, as the frozen keyframe shows)."""
    rates = [p[rate_key] for p in x264_curve]
    lpips = [p.get("lpips") for p in x264_curve]
    out: dict[str, Any] = {"rate_key": rate_key, "ours_kbps": ours.get(rate_key),
                           "ours_lpips": ours.get("lpips"), "ours_akd": ours.get("akd")}
    if ours.get("lpips") is None or any(v is None for v in lpips) or not rates:
        return out | {"ratio": None, "counted": False, "reason": "LPIPS unavailable"}
    matched = rate_for_quality(rates, lpips, ours["lpips"], lower_is_better=True)
    if matched is None:
        best = min(lpips)
        why = ("our LPIPS is better than x264's best point" if ours["lpips"] < best
               else "our LPIPS is worse than x264's floor")
        return out | {"ratio": None, "counted": False, "reason": why}
    out["x264_kbps"] = matched
    out["ratio"] = matched / ours[rate_key] if ours[rate_key] else None
    x264_akd = value_at_rate(rates, [p.get("akd") for p in x264_curve], matched)
    out["x264_akd_at_match"] = x264_akd
    if ours.get("akd") is None or x264_akd is None:
        return out | {"counted": False, "reason": "AKD unavailable"}
    counted = ours["akd"] <= x264_akd
    return out | {"counted": counted,
                  "reason": "ok" if counted else "our AKD is worse than x264's at the matched rate"}


# --------------------------------------------------------------------------- results file


class ResultStore:
    """results.json: loaded on start, rewritten atomically after every new row."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = {"results": []}
        if path.is_file():
            self.data = json.loads(path.read_text())
        self.data.update(meta)
        self.data.setdefault("results", [])

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
    """Mean of every numeric field per (codec, setting) over the clips it ran on."""
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
            elif key in METRICS:
                finite = [v for v in values if isinstance(v, (int, float))]
                avg[key] = float(np.mean(finite)) if finite else None
        out.append(avg)
    return sorted(out, key=lambda r: (ALL_CODECS.index(r["codec"]) if r["codec"] in ALL_CODECS
                                      else 99, r.get("payload_kbps", 0.0)))


def curves_by_codec(averages: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Averaged points grouped into one curve per codec (ours: one per keyframe refresh)."""
    curves: dict[str, list[dict[str, Any]]] = {}
    for row in averages:
        label = row["codec"]
        if label == "ours":
            refresh = row["setting"].split("-", 1)[-1]  # kf0 | kf<seconds> | ad<dB>
            # One curve across qualities with one keyframe, one across periodic refresh
            # periods, one across the closed loop's thresholds.
            label = ("ours kf0" if refresh == "kf0" else "ours adaptive" if refresh.startswith("ad")
                     else "ours adaptive (drop)" if refresh.startswith("dr") else "ours periodic")
        curves.setdefault(label, []).append(row)
    for points in curves.values():
        points.sort(key=lambda r: r["payload_kbps"])
    return curves


def analysis(averages: list[dict[str, Any]]) -> dict[str, Any]:
    """Headline ratios (each of our settings against x264) and BD-rates against x264."""
    curves = curves_by_codec(averages)
    x264 = curves.get("x264", [])
    out: dict[str, Any] = {"headline": [], "bd_rate_vs_x264": {}}
    for row in averages:
        if row["codec"] == "ours" and x264:
            for rate_key, x264_key in (("payload_kbps", "payload_kbps"), ("wire_kbps", "wire_kbps")):
                item = headline({"lpips": row.get("lpips"), "akd": row.get("akd"),
                                 rate_key: row[rate_key]},
                                [{"lpips": p.get("lpips"), "akd": p.get("akd"),
                                  rate_key: p[x264_key]} for p in x264], rate_key=rate_key)
                out["headline"].append({"setting": row["setting"]} | item)
    for label, points in curves.items():
        if label == "x264" or not x264 or label == "frozen":
            continue
        for metric in METRICS:
            a = [(p["payload_kbps"], p.get(metric)) for p in x264 if p.get(metric) is not None]
            b = [(p["payload_kbps"], p.get(metric)) for p in points if p.get(metric) is not None]
            if len(a) >= 2 and len(b) >= 2:
                value = bd_rate(*zip(*a), *zip(*b), lower_is_better=metric in LOWER_IS_BETTER)
                out["bd_rate_vs_x264"].setdefault(label, {})[metric] = value
    return out


# --------------------------------------------------------------------------- plots


COLOURS = {"x264": (31, 119, 180), "vp8": (255, 127, 14), "vp9": (44, 160, 44),
           "av1": (148, 103, 189), "frozen": (0, 0, 0)}  # RGB
OURS_COLOURS = [(214, 39, 40), (227, 119, 194), (140, 86, 75), (188, 189, 34)]


def _colour(label: str, index: int) -> tuple[int, int, int]:
    if label.split()[0] in COLOURS:
        return COLOURS[label.split()[0]]
    return OURS_COLOURS[index % len(OURS_COLOURS)]


def plot_curves(averages: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Like ``curves_by_codec``, but a CRF sweep and a bitrate sweep of one codec are drawn
    as two lines ("x264 crf", "x264 kbps"): joined, they zigzag."""
    curves: dict[str, list[dict[str, Any]]] = {}
    for label, points in curves_by_codec(averages).items():
        if label.startswith("ours") or label == "frozen":
            curves[label] = points
            continue
        for p in points:
            mode = re.sub(r"[0-9.]+$", "", p["setting"])
            curves.setdefault(f"{label} {mode}", []).append(p)
    return curves


def plot_all(averages: list[dict[str, Any]], out_dir: Path, untrained: bool,
             rate_key: str = "payload_kbps") -> tuple[list[Path], str]:
    """One PNG per metric (kbit/s on a log axis vs the metric), the frozen keyframe on the
    same axes as a point and a dashed line. matplotlib if it is installed, else OpenCV."""
    curves = plot_curves(averages)
    paths = []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: F401
        backend = "matplotlib"
    except ImportError:
        backend = "opencv"
    for metric in METRICS:
        if not any(p.get(metric) is not None for c in curves.values() for p in c):
            continue
        path = out_dir / f"rd_{metric}.png"
        title = f"{metric.upper()} vs {rate_key.replace('_', ' ').replace('kbps', 'kbit/s')}"
        if untrained:
            title = "UNTRAINED — " + title
        if backend == "matplotlib":
            _plot_matplotlib(curves, metric, rate_key, title, path)
        else:
            _plot_opencv(curves, metric, rate_key, title, path)
        paths.append(path)
    return paths, backend


def _plot_matplotlib(curves: dict[str, list[dict]], metric: str, rate_key: str, title: str,
                     path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ours_index = 0
    for label, points in curves.items():
        pts = [(p[rate_key], p[metric]) for p in points if p.get(metric) is not None]
        if not pts:
            continue
        colour = [c / 255 for c in _colour(label, ours_index)]
        ours_index += label.startswith("ours")
        xs, ys = zip(*pts)
        if label == "frozen":
            ax.axhline(ys[0], color=colour, linestyle="--", linewidth=1)
            ax.plot(xs, ys, "s", color=colour, label="frozen keyframe")
        else:
            style = "o--" if label.endswith("kbps") else "o-"  # bitrate sweeps dashed
            ax.plot(xs, ys, style, color=colour, label=label, markersize=4)
    ax.set_xscale("log")
    ax.set_xlabel(rate_key.replace("_", " ").replace("kbps", "kbit/s"))
    ax.set_ylabel(metric.upper() + (" (lower is better)" if metric in LOWER_IS_BETTER else ""))
    ax.set_title(title, color="red" if title.startswith("UNTRAINED") else "black")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_opencv(curves: dict[str, list[dict]], metric: str, rate_key: str, title: str,
                 path: Path) -> None:
    """The same plot drawn with OpenCV primitives (no matplotlib on this machine)."""
    import cv2

    title = title.replace("—", "-")  # Hershey fonts are ASCII only

    width, height = 900, 580
    left, right, top, bottom = 80, 190, 50, 60
    img = np.full((height, width, 3), 255, np.uint8)
    series = []
    for label, points in curves.items():
        pts = [(p[rate_key], p[metric]) for p in points
               if p.get(metric) is not None and p[rate_key] > 0]
        if pts:
            series.append((label, pts))
    xs = [x for _, pts in series for x, _ in pts]
    ys = [y for _, pts in series for _, y in pts]
    x_lo, x_hi = math.log10(min(xs)), math.log10(max(xs))
    x_lo, x_hi = math.floor(x_lo * 2) / 2, math.ceil(x_hi * 2) / 2 + (0.5 if x_hi == x_lo else 0)
    y_lo, y_hi = min(ys), max(ys)
    pad = 0.05 * (y_hi - y_lo) if y_hi > y_lo else max(abs(y_hi) * 0.05, 0.01)
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def to_px(x: float, y: float) -> tuple[int, int]:
        px = left + (math.log10(x) - x_lo) / (x_hi - x_lo) * (width - left - right)
        py = height - bottom - (y - y_lo) / (y_hi - y_lo) * (height - top - bottom)
        return int(round(px)), int(round(py))

    grey, black = (225, 225, 225), (0, 0, 0)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for decade in range(int(math.floor(x_lo)), int(math.ceil(x_hi)) + 1):
        for mult in (1, 2, 5):
            x = mult * 10.0 ** decade
            if x_lo <= math.log10(x) <= x_hi:
                px, _ = to_px(x, y_lo)
                cv2.line(img, (px, top), (px, height - bottom), grey, 1)
                cv2.putText(img, f"{x:g}", (px - 12, height - bottom + 20), font, 0.45, black, 1,
                            cv2.LINE_AA)
    for k in range(6):
        y = y_lo + (y_hi - y_lo) * k / 5
        _, py = to_px(10 ** x_lo, y)
        cv2.line(img, (left, py), (width - right, py), grey, 1)
        cv2.putText(img, f"{y:.3g}", (8, py + 5), font, 0.45, black, 1, cv2.LINE_AA)
    cv2.rectangle(img, (left, top), (width - right, height - bottom), black, 1)
    xlabel = rate_key.replace("_", " ").replace("kbps", "kbit/s") + " (log)"
    cv2.putText(img, xlabel, (left + 200, height - 15), font, 0.55, black, 1, cv2.LINE_AA)
    ylabel = metric.upper() + (" (lower is better)" if metric in LOWER_IS_BETTER else "")
    cv2.putText(img, ylabel, (left, top - 8), font, 0.5, black, 1, cv2.LINE_AA)
    title_colour = (220, 0, 0) if title.startswith("UNTRAINED") else black
    cv2.putText(img, title, (left, 25), font, 0.65, title_colour, 2, cv2.LINE_AA)
    ours_index = 0
    legend_y = top + 10
    for label, pts in series:
        colour = _colour(label, ours_index)
        ours_index += label.startswith("ours")
        pixels = [to_px(x, y) for x, y in pts]
        if label == "frozen":
            y_px = pixels[0][1]
            for x0 in range(left, width - right, 12):  # dashed horizontal line
                cv2.line(img, (x0, y_px), (min(x0 + 6, width - right), y_px), colour, 1)
            for px, py in pixels:
                cv2.rectangle(img, (px - 4, py - 4), (px + 4, py + 4), colour, -1)
        else:
            if len(pixels) > 1:
                thick = 1 if label.endswith("kbps") else 2  # bitrate sweeps thin, CRF sweeps bold
                cv2.polylines(img, [np.array(pixels, np.int32)], False, colour, thick, cv2.LINE_AA)
            for p in pixels:
                cv2.circle(img, p, 4, colour, -1, cv2.LINE_AA)
        cv2.line(img, (width - right + 12, legend_y), (width - right + 36, legend_y), colour, 2)
        cv2.putText(img, "frozen keyframe" if label == "frozen" else label,
                    (width - right + 42, legend_y + 5), font, 0.45, black, 1, cv2.LINE_AA)
        legend_y += 22
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


# --------------------------------------------------------------------------- markdown


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


TABLE_COLUMNS = ("codec", "setting", "clips", "scored_frames", "payload_kbps", "wire_kbps",
                 "bits_per_frame", "psnr", "ssim", "ms_ssim", "lpips", "akd", "aed", "encode_ms_per_frame",
                 "decode_ms_per_frame")


def markdown_table(averages: list[dict[str, Any]]) -> str:
    """The averaged results as a markdown table (untrained rows flagged)."""
    head = ["codec", "setting", "clips", "scored frames/clip", "payload kbit/s", "on-wire kbit/s",
            "bits/frame", "PSNR", "SSIM", "MS-SSIM", "LPIPS", "AKD", "AED", "enc ms/f", "dec ms/f"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in averages:
        cells = []
        for key in TABLE_COLUMNS:
            value = row.get(key)
            if key == "codec" and row.get("untrained"):
                value = f"{value} (UNTRAINED)"
            if key == "scored_frames" and value is not None and row.get("frames") is not None:
                value = f"{value:.4g} of {row['frames']:.4g}"
            cells.append(_fmt(value, 4 if key in ("ssim", "ms_ssim", "lpips") else 3))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_summary(data: dict[str, Any], plot_paths: Sequence[str]) -> str:
    """The run as markdown: banner, table, headline, BD-rates, plots, notes."""
    lines = [f"# Rate–distortion benchmark: {data['name']}", ""]
    if data.get("untrained"):
        lines += [f"> **{UNTRAINED_MARK}.** Rows marked UNTRAINED come from randomly initialised "
                  "weights: they test the pipeline only.", ""]
    env = data.get("env", {})
    lines += [f"- command: `{data.get('command', '')}`",
              f"- git sha: `{env.get('git_sha')}`; torch {env.get('torch')}, PyAV {env.get('av')}, "
              f"{env.get('device')} with {env.get('cpu_threads')} threads",
              f"- protocol: {data.get('protocol', '')}",
              "- **metric sampling: " + metric_sampling_text(
                  data.get("metric_every", 1), data.get("frames_requested") or 250) + ".**",
              f"- clips: {', '.join(data.get('clips', [])) or 'none'}"]
    if data.get("skipped"):
        lines.append("- skipped: " + "; ".join(f"{k} ({v})" for k, v in data["skipped"].items()))
    if data.get("metrics_unavailable"):
        lines.append("- n/a metrics: " + "; ".join(f"{k}: {v}"
                                                   for k, v in data["metrics_unavailable"].items()))
    lines += ["", markdown_table(data.get("averages", [])), ""]
    ana = data.get("analysis", {})
    if ana.get("headline"):
        lines += ["## Headline: x264 rate to match our LPIPS ÷ our rate", "",
                  "| our setting | rate | ours kbit/s | x264 kbit/s at our LPIPS | ratio | "
                  "our AKD | x264 AKD there | counted |", "|" + " --- |" * 8]
        for h in ana["headline"]:
            lines.append(
                f"| {h['setting']} | {h['rate_key']} | {_fmt(h.get('ours_kbps'))} | "
                f"{_fmt(h.get('x264_kbps'))} | {_fmt(h.get('ratio'))} | {_fmt(h.get('ours_akd'))} | "
                f"{_fmt(h.get('x264_akd_at_match'))} | "
                f"{'yes' if h.get('counted') else 'no: ' + h.get('reason', '')} |")
        lines.append("")
    if ana.get("bd_rate_vs_x264"):
        lines += ["## BD-rate against x264 (payload kbit/s; negative = fewer bits for the same "
                  "quality; log-rate interpolated piecewise-linearly on each curve's monotone "
                  "envelope; n/a = no overlap)", "",
                  "| curve | " + " | ".join(m.upper() for m in METRICS) + " |",
                  "|" + " --- |" * (len(METRICS) + 1)]
        for label, values in ana["bd_rate_vs_x264"].items():
            cells = [(_fmt(values.get(m)) + " %") if values.get(m) is not None else "n/a"
                     for m in METRICS]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    if plot_paths:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plot_paths] + [""]
    lines += ["## Notes", ""] + [f"- {note}" for note in data.get("notes", [])]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- driver


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    repo = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(prog="python -m benchmarks.rd", description=__doc__.split("\n")[0])
    default_manifest = repo.parent / "shared" / "data" / "talking" / "MANIFEST.tsv"
    p.add_argument("--manifest", type=Path, default=None,
                   help="TSV with 'path' and 'split' columns; its rows of --split are the clips "
                        "(default: ../shared/data/talking/MANIFEST.tsv, unless --folder is "
                        "given alone)")
    p.add_argument("--split", default="dev",
                   help="the manifest's split to run (default: %(default)s); does not apply "
                        "to --folder without --manifest")
    p.add_argument("--folder", type=Path, default=None,
                   help="without --manifest: benchmark every video under this folder "
                        "(recursively, sorted by path; clip name = path under the folder; "
                        "--split does not apply). With --manifest: where the manifest's paths "
                        "live (default: the manifest's folder)")
    p.add_argument("--clips", type=int, default=None,
                   help="first N clips (of the split, or of the folder)")
    p.add_argument("--frames", type=int, default=250)
    p.add_argument("--size", type=int, default=256, choices=(256, 512))
    p.add_argument("--out", type=Path, default=Path("out/rd"))
    p.add_argument("--codecs", default=",".join(ALL_CODECS))
    p.add_argument("--model", default="landmark", help="model name (default: %(default)s)")
    p.add_argument("--untrained", action="store_true",
                   help="run our codec with seeded random weights (every output marked UNTRAINED)")
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--no-refiner", action="store_true",
                   help="landmark family: score the plain warp, without the learned refiner")
    p.add_argument("--qualities", default="0,1,2,3,4,5")
    p.add_argument("--keyframe-refresh", default="0",
                   help="comma list of keyframe refresh periods in seconds (0 = one keyframe), "
                        "each run at every --qualities value; R@Q runs period R at quality Q "
                        "only; aT (or aT@Q) the sender's closed-loop refresh at a T dB rebuild "
                        "threshold, dT at T dB below the rebuild just after a keyframe "
                        "(e.g. 0,4@3,a24@3,d6@3)")
    p.add_argument("--metrics", default=",".join(METRICS),
                   help="subset of psnr,ssim,ms_ssim,lpips,akd,aed (SSIM/MS-SSIM cost ~0.5 s/frame "
                        "each on the 2-core machine); the rest are n/a")
    p.add_argument("--metric-every", type=int, default=1, metavar="K",
                   help="score quality metrics on frames 0, K, 2K, ... only (every frame is still "
                        "encoded and decoded and its bits counted; ours renders only the scored "
                        "frames). Default 1: every frame")
    p.add_argument("--sweep", choices=("full", "quick"), default="full",
                   help="quick: 2-5 points per baseline codec (smoke runs)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's own, at most the CPU count)")
    p.add_argument("--name", default=None, help="run name in the JSON (default: the out folder's)")
    args = p.parse_args(argv)
    args.folder_mode = args.manifest is None and args.folder is not None
    if args.manifest is None and not args.folder_mode:
        args.manifest = default_manifest
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    unknown = sorted(set(codecs) - set(ALL_CODECS))
    if unknown:
        print(f"unknown codecs {unknown}; have {list(ALL_CODECS)}", file=sys.stderr)
        return 2
    if args.metric_every < 1:
        print("--metric-every must be >= 1", file=sys.stderr)
        return 2
    if args.clips is not None and args.clips < 1:
        print("--clips must be >= 1", file=sys.stderr)
        return 2
    if args.folder_mode:
        if not args.folder.is_dir():
            print(f"no clip to score: folder not found: {args.folder}", file=sys.stderr)
            return 2
        clips = folder_clips(args.folder)
        source = "every video under --folder"
        if not clips:
            from codec.training.dataset import VIDEO_SUFFIXES

            print(f"no clip to score: no video under {args.folder} (looked for "
                  f"{' '.join(VIDEO_SUFFIXES)}, recursively)", file=sys.stderr)
            return 2
    else:
        if not args.manifest.is_file():
            print(f"manifest not found: {args.manifest}", file=sys.stderr)
            return 2
        clips = manifest_clips(args.manifest, args.split, args.folder)
        source = f"split {args.split}"
        if not clips:
            print(f"no clip to score: no row of split {args.split!r} in {args.manifest}",
                  file=sys.stderr)
            return 2
    if args.clips is not None:
        clips = clips[: args.clips]
    every = args.metric_every
    qualities = [int(q) for q in args.qualities.split(",") if q.strip()]
    try:
        ours_points = ours_sweep(args.keyframe_refresh, qualities)
    except ValueError as exc:
        print(f"--keyframe-refresh: {exc}", file=sys.stderr)
        return 2
    loaded = None
    if "ours" in codecs:
        from codec.errors import CodecError
        from codec.zoo import resolve_model

        try:  # refuses without registered weights unless --untrained / --weights
            loaded = resolve_model(args.model, untrained=args.untrained, weights=args.weights,
                                   refiner=not args.no_refiner)
        except CodecError as exc:
            print(f"our codec cannot run: {exc}", file=sys.stderr)
            return 2
        if loaded.untrained:
            print(f"*** {UNTRAINED_MARK} ***", file=sys.stderr)
    threads = args.threads if args.threads else torch.get_num_threads()
    torch.set_num_threads(max(1, min(threads, os.cpu_count() or 1)))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    untrained = bool(loaded is not None and loaded.untrained)
    command = "python -m benchmarks.rd " + " ".join(
        sys.argv[1:] if argv is None else list(argv))
    store = ResultStore(out / "results.json", {
        "name": args.name or out.name, "env": environment(), "command": command,
        "untrained": untrained, "marker": UNTRAINED_MARK if untrained else None,
        "protocol": (f"face crop fitted on the first {FIT_FRAMES} frames and fixed, {args.size}px, "
                     f"{FPS:g} fps, first {args.frames} frames, {source}; "
                     + metric_sampling_text(every, args.frames)),
        "metric_every": every, "frames_requested": args.frames,
        "x264_sei_included": False,
        "notes": [
            "x264 bytes are raw Annex-B without x264's version SEI (~600 B, first packet); "
            "'kbps_with_sei' in each x264 row includes it.",
            "x264: preset medium, tune zerolatency, bframes 0, keyint infinite, scenecut 0, "
            "threads 1 (one slice per frame). VP8/VP9: libvpx deadline realtime, cpu-used 8, "
            "lag-in-frames 0, qmin 0 qmax 63. AV1: libsvtav1 preset 10, svtav1-params "
            "pred-struct=1:rtc=1 (CRF) or pred-struct=1:rc=2:rtc=1 (CBR).",
            f"on-wire: ours + {93} B per data-channel message (codec.api."
            f"DATA_CHANNEL_OVERHEAD_BYTES; each motion and keyframe packet is one message); "
            f"baselines + {SRTP_PACKET_OVERHEAD_BYTES} B per SRTP packet of <= {RTP_MAX_PAYLOAD} B.",
            "rates are averaged over clips per setting; the headline and BD-rates use those "
            "averaged curves; per-frame arrays are in perframe/*.npz.",
            "encode/decode ms/frame are wall times on this machine's CPU, single-threaded for the "
            "PyAV codecs (colour conversion included)"
            + ("." if every == 1 else
               "; ours' decode ms/frame is per rendered (scored) frame: the other frames' "
               "packets are parsed but not rendered."),
            metric_sampling_text(every, args.frames) + " (each row: metric_every, scored_frames).",
        ]})
    store.data["codecs"] = codecs
    store.data.setdefault("skipped", {})
    store.data.setdefault("metrics_unavailable", {})
    settings: list[Setting] = []
    for codec in codecs:
        if codec in ("x264", "vp8", "vp9", "av1"):
            settings += _pyav_settings(codec, quick=args.sweep == "quick")
        elif codec == "frozen":
            settings.append(Setting("frozen", "webp-q90", {}))
        elif codec == "ours":
            settings += [Setting("ours", f"q{q}-{_refresh_name(r)}", {"quality": q, "refresh": r})
                         for r, q in ours_points]
    suite: MetricSuite | None = None
    cache_dir = out / "crops"
    frame_dir = out / "perframe"
    frame_dir.mkdir(exist_ok=True)
    used_clips = []
    started = time.perf_counter()
    for ci, clip in enumerate(clips):
        model_tag = loaded.name if loaded is not None else None
        pending = [s for s in settings if not store.has(
            codec=s.codec, setting=s.name, clip=clip.name, size=args.size, frames=args.frames,
            model=model_tag if s.codec == "ours" else None, metric_every=every)]
        try:
            crops = load_crops(clip, args.size, args.frames, cache_dir)
        except SkipClip as exc:
            log.warning("skipping %s: %s", clip.name, exc)
            store.data["skipped"][clip.name] = str(exc)
            store.save()
            continue
        used_clips.append(clip.name)
        print(f"[{ci + 1}/{len(clips)}] {clip.name}: {len(crops)} frames, "
              f"{len(pending)} settings to run ({len(settings) - len(pending)} done before)",
              file=sys.stderr)
        if pending and suite is None:
            suite = MetricSuite(wanted=[m.strip() for m in args.metrics.split(",") if m.strip()])
        for setting in pending:
            label = f"  {setting.codec} {setting.name}"
            if setting.codec == "ours":
                bar = ProgressBar(2 * len(crops), label.strip() + " codec")
                refresh = setting.params["refresh"]
                periodic = refresh if isinstance(refresh, float) else 0.0
                policy = None
                if isinstance(refresh, str):
                    from codec.api import RefreshPolicy

                    value = float(refresh[1:])
                    policy = (RefreshPolicy(threshold_db=value) if refresh[0] == "a"
                              else RefreshPolicy(drop_db=value))
                run = run_ours(crops, loaded, setting.params["quality"], periodic, refresh_policy=policy,
                               progress=bar, metric_every=every)
                bar.close()
            elif setting.codec == "frozen":
                run = run_frozen(crops)
            else:
                run = run_pyav(crops, setting.params)
            index, decoded = run.scored_frames(every)
            bar = ProgressBar(len(index), label.strip() + " metrics")
            metric_started = time.perf_counter()
            values, side = suite.per_frame(decoded, crops[index], f"{clip.name}@every{every}",
                                           progress=bar)
            metric_s = time.perf_counter() - metric_started
            bar.close()
            row = {"codec": setting.codec, "setting": setting.name, "clip": clip.name,
                   "size": args.size, "frames": len(crops), "frames_requested": args.frames,
                   "model": model_tag if setting.codec == "ours" else None,
                   "untrained": bool(setting.codec == "ours" and untrained)}
            row.update(summarize(values, run, metric_every=every))
            row["metric_ms_per_scored_frame"] = 1000.0 * metric_s / max(len(index), 1)
            row.update(side)
            row["extra"] = run.extra
            np.savez_compressed(frame_dir / f"{slug(setting.codec + '_' + setting.name + '_' + clip.name)}.npz",
                                frame_bytes=run.frame_bytes, scored=index, **values)
            store.data["metrics_unavailable"].update(suite.unavailable)
            store.add(row)
    rows = [r for r in store.data["results"] if r["size"] == args.size
            and r.get("frames_requested", r["frames"]) == args.frames
            and r.get("metric_every", 1) == every and r["clip"] in used_clips
            and (r["codec"], r["setting"]) in {(s.codec, s.name) for s in settings}
            and (r["codec"] != "ours" or r.get("model") == (loaded.name if loaded else None))]
    if not used_clips:
        hint = ("" if args.folder_mode or args.folder is None else
                "; with --manifest, --folder only relocates the manifest's paths (give --folder "
                "alone to benchmark every video in it)")
        print(f"no clip scored: all {len(clips)} clips skipped "
              f"({skip_summary(store.data['skipped'], clips)}){hint}", file=sys.stderr)
        return 2
    averages = average_rows(rows)
    store.data["clips"] = used_clips
    store.data["averages"] = averages
    store.data["analysis"] = analysis(averages)
    plots, backend = plot_all(averages, out, untrained)
    store.data["plots"] = [p.name for p in plots]
    store.data["plot_backend"] = backend
    store.data["wall_s"] = time.perf_counter() - started  # this invocation
    # a resumed run: every invocation's wall time, so the total cost stays on record
    store.data["wall_s_invocations"] = store.data.get("wall_s_invocations", []) + [
        store.data["wall_s"]]
    store.save()
    (out / "summary.md").write_text(markdown_summary(store.data, [p.name for p in plots]))
    print(f"wrote {out / 'results.json'}, {out / 'summary.md'} and {len(plots)} plots "
          f"({backend}) in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if untrained:
        print(f"*** {UNTRAINED_MARK} ***", file=sys.stderr)
    return 0


def _refresh_name(refresh: float | str) -> str:
    """kf<seconds> for a periodic refresh (kf0: one keyframe); for the closed loop ad<dB>
    (absolute threshold) or dr<dB> (drop below the first check after a keyframe)."""
    if isinstance(refresh, str):
        return ("ad" if refresh[0] == "a" else "dr") + f"{float(refresh[1:]):g}"
    return f"kf{refresh:g}"


def ours_sweep(spec: str, qualities: Sequence[int]) -> list[tuple[float | str, int]]:
    """(refresh, quality) pairs of our codec's sweep from ``--keyframe-refresh``: "R" runs
    every quality at period R seconds, "R@Q" quality Q only; "aT" / "aT@Q" the sender's
    closed-loop refresh at a T dB threshold (kept as the string "aT"). Order kept,
    duplicates dropped."""
    out: list[tuple[float | str, int]] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        period, _, only = item.partition("@")
        refresh: float | str
        if period[:1] in ("a", "d"):
            threshold = float(period[1:])
            if not 0 < threshold < 100:
                raise ValueError(f"bad adaptive threshold {item!r}")
            refresh = f"{period[0]}{threshold:g}"
        else:
            refresh = float(period)
            if refresh < 0 or not math.isfinite(refresh):
                raise ValueError(f"bad refresh period {item!r}")
        for q in ([int(only)] if only else qualities):
            if (refresh, q) not in out:
                out.append((refresh, q))
    return out


def metric_sampling_text(metric_every: int, frames: int) -> str:
    """The plain statement of which frames the quality metrics cover (JSON, summary, README)."""
    if metric_every == 1:
        return "quality metrics on every frame; rates count every frame"
    return (f"quality metrics sampled on every {metric_every}th frame (frames 0, {metric_every}, "
            f"{2 * metric_every}, …: {len(scored_indices(frames, metric_every))} of {frames}) "
            f"while rates count all frames (every frame is encoded and decoded)")


if __name__ == "__main__":
    raise SystemExit(main())
