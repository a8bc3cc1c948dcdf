"""Scoring: per-frame quality metrics from ``evaluation.metrics`` (``MetricSuite``), one clip's
result row from them and a codec run (``summarize``), AKD on the frames every setting
shares (``add_common_face_akd``), and the worst frames and the steady-state rate
(``add_frame_stats``, ``worst_frame_check``)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from codec.progress import ProgressBar

from .clips import slug
from .protocol import AKD_COMMON, FPS, METRICS, scored_indices
from .runs import CodecRun


class MetricSuite:
    """Per-frame quality metrics from ``evaluation.metrics``; a metric that cannot run is 'n/a'
    with the reason (recorded once in ``unavailable``).

    The reference clip's landmarks and embeddings are computed once per clip (``reference``)
    and reused for every codec setting; identical decoded frames (the frozen keyframe) are
    analysed once."""

    def __init__(self, batch: int = 10, wanted: Sequence[str] = METRICS) -> None:
        from evaluation import metrics  # lazy: pulls in the LPIPS backbone and dlib

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
            for i in range(n):  # per-frame values; the clip means below use evaluation.metrics' own
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
               scored_frames=len(scored_indices(n, metric_every)),
               decoded_frames=int(run.rendered if run.rendered is not None else n),
               encode_ms_per_frame=1000.0 * run.encode_s / n,
               decode_ms_per_frame=1000.0 * run.decode_s / max(
                   run.rendered if run.rendered is not None else n, 1))
    if "x264_sei_bytes" in run.extra:
        row["kbps_with_sei"] = 8.0 * (total + run.extra["x264_sei_bytes"]) / duration / 1000.0
    row.update(frame_stats(metrics.get("lpips"), run.frame_bytes, fps))
    return row


# The steady state starts after this many seconds: a call lasts minutes, a 10 s clip is mostly
# its first keyframe (ours) or I-frame (the PyAV codecs).
STEADY_AFTER_S = 1.0
WORST_PERCENTILE = 95.0


def frame_stats(lpips: np.ndarray | None, frame_bytes: np.ndarray, fps: float = FPS) -> dict[str, Any]:
    """``lpips_p95``: the 95th percentile of the scored frames' LPIPS (linear interpolation;
    None without LPIPS), the clip's worst frames beside its mean. ``steady_kbps``: payload
    kbit/s of the frames after the first ``STEADY_AFTER_S`` seconds: every codec without its
    first keyframe or I-frame (refresh keyframes, patches and motion after it count); None
    when the clip is no longer than that."""
    out: dict[str, Any] = {"lpips_p95": None, "steady_kbps": None}
    if lpips is not None:
        finite = np.asarray(lpips, np.float64)
        finite = finite[np.isfinite(finite)]
        if finite.size:
            out["lpips_p95"] = float(np.percentile(finite, WORST_PERCENTILE))
    start = round(STEADY_AFTER_S * fps)
    frame_bytes = np.asarray(frame_bytes)
    if len(frame_bytes) > start:
        out["steady_kbps"] = 8.0 * float(frame_bytes[start:].sum()) / ((len(frame_bytes) - start) / fps) / 1000.0
    return out


def add_frame_stats(rows: Sequence[dict[str, Any]], folder: Path, fps: float = FPS) -> None:
    """Fill ``lpips_p95`` and ``steady_kbps`` (``frame_stats``) of rows scored before rd recorded
    them, from their per-frame arrays in ``folder`` (perframe/*.npz); a row whose file is
    missing or belongs to another run (its frame count, scored frames or LPIPS mean disagree)
    is left without them."""
    for row in rows:
        if "lpips_p95" in row and "steady_kbps" in row:
            continue
        path = perframe_file(folder, row["codec"], row["setting"], row["clip"])
        if not path.is_file():
            continue
        with np.load(path) as data:
            frame_bytes = np.asarray(data["frame_bytes"]) if "frame_bytes" in data.files else None
            lpips = np.asarray(data["lpips"], np.float64) if "lpips" in data.files else None
        if frame_bytes is None or len(frame_bytes) != row.get("frames") \
                or int(frame_bytes.sum()) != row.get("bytes"):
            continue
        if lpips is not None:
            finite = lpips[np.isfinite(lpips)]
            if len(lpips) != row.get("scored_frames") or (row.get("lpips") is None) != (not finite.size) \
                    or (finite.size and not np.isclose(finite.mean(), row["lpips"], rtol=1e-9, atol=1e-9)):
                continue
        row.update(frame_stats(lpips, frame_bytes, fps))


def worst_frame_check(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per setting of ours (and every other codec's setting), the clips whose worst frames are
    worse than the frozen keyframe's: ``lpips_p95`` above the frozen keyframe's on the same
    clip. Each row gets ``lpips_p95_worse_than_frozen`` (True / False; None where either p95 is
    missing); the answer maps "codec setting" to {"clips": n compared, "worse": [clip, ...]}."""
    frozen = {(r["clip"], r["size"], r.get("frames_requested", r["frames"]), r.get("metric_every", 1)):
              r.get("lpips_p95") for r in rows if r["codec"] == "frozen"}
    out: dict[str, Any] = {}
    for row in rows:
        if row["codec"] == "frozen":
            continue
        key = (row["clip"], row["size"], row.get("frames_requested", row["frames"]), row.get("metric_every", 1))
        reference, own = frozen.get(key), row.get("lpips_p95")
        worse = None if reference is None or own is None else bool(own > reference)
        row["lpips_p95_worse_than_frozen"] = worse
        if worse is None:
            continue
        entry = out.setdefault(f"{row['codec']} {row['setting']}", {"clips": 0, "worse": []})
        entry["clips"] += 1
        if worse:
            entry["worse"].append(row["clip"])
    return out


def perframe_file(folder: Path, codec: str, setting: str, clip: str) -> Path:
    """Where a row's per-frame arrays live (written by the sweep, read by
    ``add_common_face_akd``)."""
    return folder / f"{slug(codec + '_' + setting + '_' + clip)}.npz"


def add_common_face_akd(rows: Sequence[dict[str, Any]], folder: Path) -> None:
    """Give every row ``akd_common``: its AKD over the frames where dlib finds the face in the
    real frame *and* in every row's rebuild of that clip, and ``akd_common_frames``, how many.

    A row's own ``akd`` skips the frames where its rebuild shows no face, so two settings are
    averaged over different frames: on headtrackr/capture4 one refresh setting lost the face
    on 152 of 247 frames and another on 103, and the first looked 0.4 px better for having
    dropped its hardest frames. On the common frames every setting is scored on the same
    pictures. The per-frame AKDs come from ``folder`` (perframe/*.npz); a clip whose file is
    missing or belongs to another run (its scored frames or AKD mean disagree with the row)
    gets None, as does a clip where no frame is shared."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        key = (row["clip"], row["size"], row.get("frames_requested", row["frames"]),
               row.get("metric_every", 1))
        groups.setdefault(key, []).append(row)
    for members in groups.values():
        values = [_row_akd(row, folder) for row in members]
        shared = None
        if all(v is not None for v in values) and len({len(v) for v in values}) == 1:
            shared = np.all(np.isfinite(np.stack(values)), axis=0)
        found = shared is not None and bool(shared.any())
        for row, akd in zip(members, values):
            row[AKD_COMMON] = float(akd[shared].mean()) if found else None
            row[AKD_COMMON + "_frames"] = int(shared.sum()) if shared is not None else 0


def _row_akd(row: dict[str, Any], folder: Path) -> np.ndarray | None:
    """The row's per-scored-frame AKD (NaN where no face), None when the file is not this row's."""
    path = perframe_file(folder, row["codec"], row["setting"], row["clip"])
    if row.get("akd") is None or not path.is_file():
        return None
    with np.load(path) as data:
        if "akd" not in data.files:
            return None
        akd = np.asarray(data["akd"], dtype=np.float64)
    finite = akd[np.isfinite(akd)]
    if len(akd) != row.get("scored_frames") or not finite.size \
            or not np.isclose(finite.mean(), row["akd"], rtol=1e-9, atol=1e-9):
        return None
    return akd
