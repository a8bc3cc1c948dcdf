"""Our codec in the benchmark: its sweep (quality × keyframe refresh, from ``--qualities`` and
``--keyframe-refresh``) and one run through ``codec.api``'s Encoder and Decoder."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from codec.families.base import TalkingHeadModel
from codec.progress import ProgressBar

from .protocol import FPS, scored_indices
from .runs import CodecRun, Setting


def ours_sweep(spec: str, qualities: Sequence[int]) -> list[tuple[float | str, int]]:
    """(refresh, quality) pairs of our codec's sweep from ``--keyframe-refresh``: "R" runs
    every quality at period R seconds, "R@Q" quality Q only; "aP" / "aP@Q" the sender's
    closed-loop refresh at gain P (kept as the string "aP"), "aPtD" with its head-turn
    trigger at D degrees instead of the policy's default; "Rf" a period of R seconds whose
    refresh waits for a frame where the face is detected (kept as the string "fR"). Order
    kept, duplicates dropped."""
    out: list[tuple[float | str, int]] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        period, _, only = item.partition("@")
        refresh: float | str
        if period[:1] == "a":
            gain_text, _, turn_text = period[1:].partition("t")
            gain = float(gain_text)
            if not 0 < gain < 100:
                raise ValueError(f"bad adaptive gain {item!r}")
            refresh = f"a{gain:g}"
            if turn_text:
                turn = float(turn_text)
                if not 0 < turn <= 90:
                    raise ValueError(f"bad head-turn trigger {item!r}")
                refresh += f"t{turn:g}"
        else:
            seconds = float(period.removesuffix("f"))
            if seconds < 0 or not math.isfinite(seconds) or (period.endswith("f") and seconds == 0):
                raise ValueError(f"bad refresh period {item!r}")
            refresh = f"f{seconds:g}" if period.endswith("f") else seconds
        for q in ([int(only)] if only else qualities):
            if (refresh, q) not in out:
                out.append((refresh, q))
    return out


def _refresh_name(refresh: float | str) -> str:
    """kf<seconds> for a periodic refresh (kf0: one keyframe), kf<seconds>f when it waits for a
    face; ad<gain> for the closed loop."""
    if isinstance(refresh, str):
        return f"kf{refresh[1:]}f" if refresh.startswith("f") else f"ad{refresh[1:]}"
    return f"kf{refresh:g}"


def ours_settings(points: Sequence[tuple[float | str, int]], patches: bool = True,
                  keyframe_quality: int | None = None, keyframe_codec: str | None = None,
                  references: int | None = None, reference_policy: str = "lru",
                  predicted_refresh: bool = True, predicted_crf: int | None = None,
                  whole_frame: bool = False, damping: bool = False) -> list[Setting]:
    """One ``Setting`` per (refresh, quality) pair of ``ours_sweep``, named q<Q>-<refresh>
    (with a ``-nopatch`` suffix when the sender sends no reference patches, ``-k<codec>`` when
    keyframes are not the shipped codec, ``-kq<Q>`` when their quality is not the codec's
    default, ``-r<K>`` with K > 1 reference slots, ``-rcov`` when they are replaced by pose
    coverage, ``-nopred`` when closed-loop refreshes are always whole, ``-crf<N>`` when predicted
    ones are not at the default CRF, ``-damp`` when the sender damps motion, ``codec.damping``,
    which it does not ship with). None: what ``compress`` and a call use
    (:func:`ours_config`: the shipped keyframes, of whole frames with ``whole_frame``; K = 4 with
    the closed loop, else 1; predicted refreshes at ``codec.predicted_keyframe.DEFAULT_CRF``)."""
    from codec.keyframe import DEFAULT_KEYFRAME_CODEC
    from codec.predicted_keyframe import DEFAULT_CRF

    settings = []
    for r, q in points:
        config = ours_config(r, keyframe_codec, keyframe_quality, references, predicted_refresh, predicted_crf,
                             whole_frame, damping, motion_quality=q)
        codec, quality, k = config["keyframe_codec"], config["keyframe_quality"], config["references"]
        crf = config["predicted_crf"]
        suffix = ("" if patches else "-nopatch") \
            + ("" if codec == DEFAULT_KEYFRAME_CODEC else f"-k{codec}") \
            + ("" if config["keyframe_quality_default"] else f"-kq{quality}") \
            + ("" if k == 1 else f"-r{k}") \
            + ("" if reference_policy == "lru" else "-rcov") \
            + ("" if predicted_refresh else "-nopred") \
            + ("" if not predicted_refresh or crf == DEFAULT_CRF else f"-crf{crf}") \
            + ("-damp" if damping else "")
        settings.append(Setting("ours", f"q{q}-{_refresh_name(r)}{suffix}",
                                {"quality": q, "refresh": r, "patches": patches, "keyframe_quality": quality,
                                 "keyframe_codec": codec, "references": k,
                                 "reference_policy": reference_policy,
                                 "predicted_refresh": predicted_refresh, "predicted_crf": crf,
                                 "damping": damping}))
    return settings


def ours_config(refresh: float | str | None, keyframe_codec: str | None = None,
                keyframe_quality: int | None = None, references: int | None = None,
                predicted_refresh: bool = True, predicted_crf: int | None = None,
                whole_frame: bool = False, damping: bool = False,
                motion_quality: int | None = None) -> dict[str, Any]:
    """Ours' sender settings for a refresh of ``ours_sweep`` (None: any), each None resolved to
    what ``compress`` and a call use (the Encoder's defaults), and whether each is that default:
    the motion quality (``codec.motion_coding.default_quality``: finer with the closed loop),
    the keyframe codec and quality (``codec.keyframe``, of crops or ``whole_frame``s), K reference
    slots (``DEFAULT_REFERENCES`` with the closed loop, else 1: nothing chooses among them),
    closed-loop refreshes predicted from the held reference (``codec.predicted_keyframe``) at
    ``predicted_crf``, damped motion (``codec.api.DEFAULT_DAMPING``: none)."""
    from codec.api import DEFAULT_DAMPING, DEFAULT_REFERENCES
    from codec.keyframe import DEFAULT_KEYFRAME_CODEC, default_keyframe_quality
    from codec.motion_coding import default_quality as default_motion_quality
    from codec.predicted_keyframe import DEFAULT_CRF

    codec = keyframe_codec or DEFAULT_KEYFRAME_CODEC
    quality = default_keyframe_quality(codec, whole_frame) if keyframe_quality is None else keyframe_quality
    closed_loop = isinstance(refresh, str) and refresh.startswith("a")
    shipped_motion = default_motion_quality(closed_loop)
    motion = shipped_motion if motion_quality is None else motion_quality
    shipped_k = DEFAULT_REFERENCES if closed_loop else 1
    k = shipped_k if references is None else references
    crf = DEFAULT_CRF if predicted_crf is None else predicted_crf
    default_quality = default_keyframe_quality(codec, whole_frame)
    return {"motion_quality": motion, "motion_quality_default": motion == shipped_motion,
            "keyframe_codec": codec, "keyframe_quality": quality,
            "keyframe_quality_default": quality == default_quality,
            "references": k, "references_default": k == shipped_k,
            "predicted_refresh": predicted_refresh, "predicted_crf": crf,
            "predicted_default": predicted_refresh and crf == DEFAULT_CRF,
            "damping": damping, "damping_default": damping == (DEFAULT_DAMPING is not None),
            "shipped_default": (motion == shipped_motion and codec == DEFAULT_KEYFRAME_CODEC
                                and quality == default_quality and k == shipped_k and predicted_refresh and crf == DEFAULT_CRF
                                and damping == (DEFAULT_DAMPING is not None))}


def shipped_keyframes(keyframe_codec: str | None = None, keyframe_quality: int | None = None,
                      whole_frame: bool = False, damping: bool = False) -> dict[str, Any]:
    """Ours' keyframe codec and quality in a run (None: the shipped defaults of
    ``codec.keyframe``, what ``compress`` and a call send, for crops or ``whole_frame``s) and
    whether they are those."""
    from codec.keyframe import DEFAULT_KEYFRAME_CODEC, default_keyframe_quality

    codec = keyframe_codec or DEFAULT_KEYFRAME_CODEC
    quality = default_keyframe_quality(codec, whole_frame) if keyframe_quality is None else keyframe_quality
    return {"codec": codec, "quality": quality,
            "shipped_default": (codec, quality) == (DEFAULT_KEYFRAME_CODEC,
                                                    default_keyframe_quality(DEFAULT_KEYFRAME_CODEC, whole_frame))}


def refresh_policy(refresh: float | str) -> Any:
    """The sender's closed-loop ``codec.api.RefreshPolicy`` for an "aG" refresh (gain G);
    None for a period."""
    if not isinstance(refresh, str) or not refresh.startswith("a"):
        return None
    from codec.api import RefreshPolicy

    gain, _, turn = refresh[1:].partition("t")
    if turn:
        return RefreshPolicy(gain=float(gain), pose_limit_deg=float(turn))
    return RefreshPolicy(gain=float(gain))


def run_ours_setting(crops: np.ndarray, model: Any, params: dict[str, Any],
                     progress: ProgressBar | None = None, metric_every: int = 1,
                     whole_frame: bool = False) -> CodecRun:
    """``run_ours`` for one ``ours_settings`` point: a periodic refresh or the closed loop."""
    refresh = params["refresh"]
    face_wait = isinstance(refresh, str) and refresh.startswith("f")
    periodic = float(refresh[1:]) if face_wait else refresh if isinstance(refresh, float) else 0.0
    return run_ours(crops, model, params["quality"], periodic, refresh_policy=refresh_policy(refresh),
                    face_wait=face_wait,
                    progress=progress, metric_every=metric_every, patches=params.get("patches", True),
                    keyframe_quality=params.get("keyframe_quality"),
                    keyframe_codec=params.get("keyframe_codec"),
                    references=params.get("references", 1),
                    reference_policy=params.get("reference_policy", "lru"), whole_frame=whole_frame,
                    predicted_refresh=params.get("predicted_refresh", True),
                    predicted_crf=params.get("predicted_crf"),
                    damping=params.get("damping", False))


def run_ours(crops: np.ndarray, model: TalkingHeadModel, quality: int, keyframe_refresh_s: float,
             fps: float = FPS, progress: ProgressBar | None = None,
             metric_every: int = 1, refresh_policy=None, patches: bool = True,
             keyframe_quality: int | None = None, keyframe_codec: str | None = None,
             face_wait: bool = False, references: int = 1, reference_policy: str = "lru",
             whole_frame: bool = False, predicted_refresh: bool = True,
             predicted_crf: int | None = None, damping: bool = False) -> CodecRun:
    """Encoder over the crops, Decoder to rebuild them; counts header + keyframes + motion.

    ``keyframe_refresh_s`` = 0: one keyframe; N: a new keyframe every N seconds; with
    ``face_wait`` a due refresh waits for a frame after one where the tracker detected a face
    (the closed loop does the same: a keyframe without a face serves nothing after it).
    ``refresh_policy``: the sender's closed loop instead (``codec.api.RefreshPolicy``): a new
    keyframe when its own rebuild has drifted from the real frames long enough. ``patches``: the sender's
    reference patches of the mouth and eyes (their bytes count like the rest). Every frame
    is encoded and every packet decoded, but with ``metric_every`` = K > 1 only frames 0, K,
    2K, … are rendered by the generator (the others advance the motion chain only), and
    ``decoded`` holds just those. ``keyframe_codec`` / ``keyframe_quality``: None, the
    shipped defaults (``shipped_keyframes``). ``references``: K reference slots
    (``reference_policy`` replaces them). ``predicted_refresh`` / ``predicted_crf``: closed-loop
    refreshes coded against the warp of the held reference at that x264 CRF (None: the default).
    ``damping``: the sender's damped motion on frames its reference cannot show
    (``codec.damping``, off as shipped)."""
    import cv2

    from codec.api import DampingPolicy, Decoder, Encoder
    from codec.bitstream import is_motion_packet
    from rtc.wire_cost import (
        DATA_CHANNEL_OVERHEAD_BYTES,
        data_channel_message_wire_bytes,
        motion_on_audio_wire_bytes,
    )

    n, height, width = crops.shape[:3]
    # Our model at the pictures' own size where its family renders any (the landmark family:
    # a 512 crop at 512, a whole frame as it is); else its own, compared after a resize.
    try:
        model = model.at_size(width, height, whole_frame=whole_frame)
    except ValueError:
        if whole_frame:
            raise
    keyframes = shipped_keyframes(keyframe_codec, keyframe_quality, whole_frame)
    keyframe_codec, keyframe_quality = keyframes["codec"], keyframes["quality"]
    from codec.predicted_keyframe import DEFAULT_CRF

    predicted_crf = DEFAULT_CRF if predicted_crf is None else predicted_crf
    encoder = Encoder(model, quality=quality, frame_rate=fps, refresh=refresh_policy, patches=patches,
                      keyframe_quality=keyframe_quality, keyframe_codec=keyframe_codec,
                      references=references, reference_policy=reference_policy,
                      predicted_refresh=predicted_refresh, predicted_crf=predicted_crf,
                      damping=DampingPolicy() if damping else None)
    header = encoder.header()
    period = round(keyframe_refresh_s * fps) if keyframe_refresh_s > 0 else 0
    frame_bytes = np.zeros(n, dtype=np.int64)
    frame_bytes[0] += len(header)
    messages = 0
    # On the wire, as a call with audio sends it: header, keyframes and patches as data-channel
    # messages, motion packets as header extension elements of the audio packets.
    wire_bytes = data_channel_message_wire_bytes(len(header))
    wire_bytes_without_audio = len(header) + DATA_CHANNEL_OVERHEAD_BYTES
    stream: list[bytes] = []
    started = time.perf_counter()
    due = False
    for i in range(n):
        due = due or bool(period and i > 0 and i % period == 0)
        if due and (not face_wait or encoder.face_seen):
            encoder.request_keyframe()
            due = False
        packets = encoder.encode(np.ascontiguousarray(crops[i]), timestamp=i / fps)
        frame_bytes[i] += sum(len(p) for p in packets)
        messages += len(packets)
        for p in packets:
            motion = is_motion_packet(p)
            wire_bytes += motion_on_audio_wire_bytes(len(p)) if motion else data_channel_message_wire_bytes(len(p))
            wire_bytes_without_audio += data_channel_message_wire_bytes(len(p))
        stream.extend(packets)
        if progress is not None:
            progress.update()
    encode_s = time.perf_counter() - started
    decoder = Decoder.from_header(header, model=model)
    decoded: list[np.ndarray] = []
    wanted = scored_indices(n, metric_every)
    render = None if metric_every == 1 else (lambda seq: seq % metric_every == 0)
    started = time.perf_counter()
    for frame in decoder.decode_stream(stream, batch_size=1, render=render):
        image = frame.image
        if image.shape[:2] != (height, width):  # e.g. the tiny model renders 64 px; compare at crop size
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC)
        decoded.append(image)
        if progress is not None:
            progress.update(metric_every)
    decode_s = time.perf_counter() - started
    if len(decoded) != len(wanted):
        raise RuntimeError(f"our decoder returned {len(decoded)} frames for {len(wanted)}")
    stats = encoder.stats
    return CodecRun(
        decoded=decoded, frame_bytes=frame_bytes,
        wire_bytes=wire_bytes,
        encode_s=encode_s, decode_s=decode_s,
        extra={"model": model.name, "untrained": bool(model.untrained), "quality": quality,
               "keyframe_refresh_s": keyframe_refresh_s, "face_wait": face_wait,
               "keyframe_codec": keyframe_codec,
               "keyframe_quality": keyframe_quality,
               "keyframes_shipped_default": keyframes["shipped_default"],
               "refresh_policy": None if refresh_policy is None else str(refresh_policy),
               "refreshes": [seq for seq, _ in stats.refreshes], "keyframes": stats.keyframes,
               "keyframe_bytes": stats.keyframe_bytes, "motion_bytes": stats.motion_bytes,
               # refreshes coded both ways: (seq, predicted bytes, whole bytes, predicted sent)
               "predicted_keyframes": stats.predicted_keyframes, "refresh_choices": stats.refresh_choices,
               "patches": stats.patches, "patch_bytes": stats.patch_bytes,
               "references": references, "reference_policy": reference_policy,
               "predicted_refresh": predicted_refresh, "predicted_crf": predicted_crf,
               "predicted_keyframe_bytes": sum(p for _, p, _, sent in stats.refresh_choices if sent),
               "whole_refresh_bytes": sum(w for _, _, w, sent in stats.refresh_choices if not sent),
               # damped motion (codec.damping): frames tried, and damped by candidate
               "damping": damping, "damping_tried": stats.damping_tried, "damped": dict(stats.damped),
               "keyframe_slots": stats.keyframe_slots,
               # (seq, slot): the frames from which a held reference was reused, for free
               "reference_switches": [list(item) for item in stats.switches],
               "header_bytes": len(header), "messages": messages,
               "model_size": model.image_size, "picture_size": [width, height], "whole_frame": whole_frame,
               "data_channel_overhead_bytes": DATA_CHANNEL_OVERHEAD_BYTES,
               "wire_model": "motion on the audio packets",
               # a call without audio: every packet one data-channel message
               "wire_kbps_without_audio": 8.0 * wire_bytes_without_audio / (n / fps) / 1000.0,
               "rendered_frames": len(decoded)},
        scored=None if metric_every == 1 else wanted,
        rendered=None if metric_every == 1 else len(decoded))

