"""The baseline codecs: x264, VP8, VP9 and SVT-AV1 through PyAV (their sweeps, one encode and
decode per setting, the bytes counted as the module doc of ``benchmarks.rd`` says), and the
frozen WebP keyframe."""

from __future__ import annotations

import math
import time
from fractions import Fraction
from typing import Any

import numpy as np

from codec.media.h264 import annexb_units

from .protocol import FPS
from .runs import CodecRun, Setting

# Per-packet cost of an SRTP video packet on the wire: IPv4 20 + UDP 8 + RTP 12 + auth tag 10.
SRTP_PACKET_OVERHEAD_BYTES = 50
RTP_MAX_PAYLOAD = 1200  # bytes of video per RTP packet (a frame larger than this is split)

# Sweeps. CRF 51 / the lowest targets are the codecs' floors on talking heads at 256 px.
X264_CRFS = (18, 24, 30, 36, 40, 44, 48, 51)
X264_KBPS = (4, 6, 8, 12, 20, 40)
VPX_KBPS = (6, 10, 16, 25, 40, 80, 160)
AV1_CRFS = (35, 45, 52, 58, 63)
AV1_KBPS = (4, 8, 16, 32, 64)
# --sweep quick: a few points per codec, for smoke runs on the 2-core machine.
QUICK = {"x264_crfs": (24, 36, 44, 51), "x264_kbps": (6,), "vpx_kbps": (10, 40),
         "av1_crfs": (45, 63), "av1_kbps": (8,)}


def x264_version_sei_bytes(packet: bytes) -> int:
    """Bytes of x264's version/options SEI (a type-6 NAL holding "x264 - core") in a packet,
    start code included."""
    return sum(end - start for start, payload, end in annexb_units(packet)
               if packet[payload] & 0x1F == 6 and b"x264 - core" in packet[payload:end])


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
    enc.time_base = Fraction(1, round(fps))
    enc.framerate = Fraction(round(fps), 1)
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
    from rtc.wire_cost import data_channel_message_wire_bytes

    return CodecRun(decoded=[image] * n, frame_bytes=frame_bytes,
                    wire_bytes=data_channel_message_wire_bytes(len(data)), encode_s=encode_s,
                    decode_s=decode_s, extra={"keyframe_codec": "webp", "keyframe_quality": 90})

