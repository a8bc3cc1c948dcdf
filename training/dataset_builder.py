"""Build the training / dev set: fixed-crop 256×256 face segments + per-frame labels.

Usage::

    python -m training.dataset_builder --manifest ../shared/data/talking/MANIFEST.tsv \
        --split train --out cache/train256
    python -m training.dataset_builder --manifest ... --split dev --out cache/dev256
    python -m training.dataset_builder --folder ~/voxceleb/train --out cache/vox256

What it writes under ``--out``::

    index.json            every segment (file, identity, source, licence, frames, fps, box)
    summary.json          totals, skips with reasons, x264 settings, build time
    segments/NAME.mp4     H.264 (yuv420p) size×size crops at 25 fps, readable by OpenCV alone
    segments/NAME.npz     pose N×3 float32 (yaw, pitch, roll; degrees),
                          landmarks N×68×2 float16 (x, y in crop pixels),
                          detected N bool (False: landmarks interpolated over a short gap)

Train clips (VoxCeleb-style): 68 landmarks on every frame (dlib, tracked in a region
around the last face, full-frame fallback), the crop box fitted like
:meth:`codec.facecrop.FaceCropper.fit` (median box over the first frames) and held fixed;
a new segment (re-fitted box) starts when :meth:`FaceCropper.face_left_box` fires.
Stretches without a face, tiny faces, crops mostly outside the frame and segments under
``--min-seconds`` are skipped and logged with the reason.

Dev clips follow the benchmark protocol: ONE segment per clip, its first 250 frames at
25 fps, the crop fixed from the start (median box of the first 5 frames, as
:func:`codec.files.compress` does), keyframe = frame 1.

Head pose pseudo-labels come from :mod:`training.head_pose`; the segments are planned by
:mod:`training.segment_plan` and the clips listed by :mod:`training.clip_jobs`.

PyAV is used for reading sources and writing H.264 (lazily, through codec.media); the
trainer reads the result with OpenCV only (see :mod:`training.dataset`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from codec.errors import FaceNotFoundError, MediaError
from codec.facecrop import FIT_FRAMES, FaceCropper
from training.clip_jobs import ClipJob, jobs_from_folder, jobs_from_manifest
from training.dataset import VIDEO_SUFFIXES
from training.head_pose import fill_nearest, head_poses
from training.segment_plan import (
    DEV_FRAMES,
    LandmarkTracker,
    SegmentPlan,
    Skip,
    interpolate_gaps,
    landmarks_to_crop,
    plan_dev_segment,
    plan_segments,
)

__all__ = ["BuildConfig", "build_dataset", "main"]

INDEX_VERSION = 1


# ------------------------------------------------------------------------------ building


@dataclass
class BuildConfig:
    """Options of one build (see ``--help``)."""

    out: str
    split: str = "train"
    size: int = 256
    fps: float = 25.0
    crf: int = 22
    preset: str = "slow"
    max_mb: float = 35.0
    also_size: int | None = None  # e.g. 512: also written where the source has the pixels
    native_fraction: float = 0.9  # box side ≥ this × also_size to count as "has the pixels"
    min_seconds: float = 1.0
    max_gap: int = 3
    min_box: float = 96.0
    min_inside: float = 0.75
    detect_every: int = 1
    workers: int = 1
    limit: int | None = None

    def x264_options(self) -> dict[str, str]:
        # one thread per encoder: clips are processed in parallel instead. No B-frame
        # limits or zerolatency: these files are only decoded whole, so every tool that
        # saves bytes is welcome.
        return {"preset": self.preset, "threads": "1"}


@dataclass
class ClipResult:
    """What processing one clip produced (picklable, returned from worker processes)."""

    source: str
    segments: list[dict[str, Any]] = field(default_factory=list)
    skips: list[dict[str, Any]] = field(default_factory=list)
    frames_read: int = 0
    seconds: float = 0.0
    full_searches: int = 0


def _slug(source: str) -> str:
    stem = os.path.splitext(source)[0] if os.path.splitext(source)[1].lower() in VIDEO_SUFFIXES \
        else source
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem.replace("/", "__")).strip("_") or "clip"


def _detect_all(path: str, cfg: BuildConfig, cropper: FaceCropper) -> tuple[np.ndarray, tuple[int, int], int]:
    """Pass 1: landmarks of every output frame. Returns (N×68×2 NaN-padded, (w, h), full searches)."""
    from codec.media import read_frames  # lazy: PyAV

    max_frames = DEV_FRAMES if cfg.split == "dev" else None
    tracker = LandmarkTracker(cropper)
    rows: list[np.ndarray] = []
    size = (0, 0)
    for item in read_frames(path, fps=cfg.fps, max_frames=max_frames):
        size = (item.image.shape[1], item.image.shape[0])
        if cfg.detect_every > 1 and item.index % cfg.detect_every:
            rows.append(np.full((68, 2), np.nan))  # filled by interpolation below
            continue
        lm = tracker(item.image)
        rows.append(lm if lm is not None else np.full((68, 2), np.nan))
    landmarks = np.array(rows, np.float64).reshape(-1, 68, 2)
    if cfg.detect_every > 1:
        # only the skipped in-between frames are filled here; real misses stay NaN unless short
        landmarks = interpolate_gaps(landmarks, cfg.detect_every - 1)
    return landmarks, size, tracker.full_searches


def _write_segment_files(
    job: ClipJob, cfg: BuildConfig, plans: Sequence[SegmentPlan], filled: np.ndarray,
    detected: np.ndarray,
) -> list[dict[str, Any]]:
    """Pass 2: decode again, crop each planned range, write .mp4 + .npz per segment."""
    from codec.media import VideoWriter, read_frames  # lazy: PyAV

    seg_dir = Path(cfg.out) / "segments"
    seg_dir.mkdir(parents=True, exist_ok=True)
    slug = _slug(job.source)
    records: list[dict[str, Any]] = []
    pending = list(plans)
    writers: list[Any] = []
    current: SegmentPlan | None = None
    extra_ok = False
    last_stop = max((p.stop for p in plans), default=0)

    def open_plan(k: int, plan: SegmentPlan) -> None:
        nonlocal extra_ok
        name = f"{slug}__{k:02d}"
        main = VideoWriter(seg_dir / f"{name}.mp4", cfg.fps, (cfg.size, cfg.size), crf=cfg.crf,
                           options=cfg.x264_options())
        writers[:] = [main]
        extra_ok = cfg.also_size is not None and plan.box.size >= cfg.native_fraction * cfg.also_size
        if extra_ok:
            writers.append(VideoWriter(seg_dir / f"{name}_{cfg.also_size}.mp4", cfg.fps,
                                       (cfg.also_size, cfg.also_size), crf=cfg.crf,
                                       options=cfg.x264_options()))
        lm = landmarks_to_crop(filled[plan.start : plan.stop], plan.box, cfg.size)
        pose = head_poses(lm, cfg.size)
        np.savez_compressed(
            seg_dir / f"{name}.npz",
            pose=pose.astype(np.float32),
            landmarks=lm.astype(np.float16),
            detected=detected[plan.start : plan.stop].astype(bool),
        )
        files_extra = {str(cfg.also_size): f"segments/{name}_{cfg.also_size}.mp4"} if extra_ok else {}
        records.append({
            "name": name,
            "file": f"segments/{name}.mp4",
            "labels": f"segments/{name}.npz",
            "files_extra": files_extra,
            "identity": job.identity,
            "source": job.source,
            "repo": job.repo,
            "license": job.license,
            "split": cfg.split,
            "start_frame": plan.start,
            "frames": plan.frames,
            "fps": cfg.fps,
            "size": cfg.size,
            "box": [round(plan.box.cx, 2), round(plan.box.cy, 2), round(plan.box.size, 2)],
        })

    k = 0
    try:
        for item in read_frames(job.path, fps=cfg.fps, max_frames=last_stop or 1):
            if current is not None and item.index >= current.stop:
                for w in writers:
                    w.close()
                writers.clear()
                current = None
            if current is None and pending and item.index == pending[0].start:
                current = pending.pop(0)
                open_plan(k, current)
                k += 1
            if current is not None:
                writers[0].write(current.box.crop(item.image, cfg.size))
                if len(writers) > 1:
                    writers[1].write(current.box.crop(item.image, cfg.also_size or cfg.size))
    finally:
        for w in writers:
            w.close()
    for rec in records:  # the decoder may end early (a clip shorter on 2nd read): trust the file
        rec["bytes"] = (seg_dir / Path(rec["file"]).name).stat().st_size
        rec["bytes_extra"] = {k: (seg_dir / Path(v).name).stat().st_size
                              for k, v in rec["files_extra"].items()}
    return records


def process_clip(job: ClipJob, cfg: BuildConfig) -> ClipResult:
    """Landmarks → plan → crops + labels for one clip. Never raises for a bad clip: the
    failure becomes a logged skip."""
    started = time.perf_counter()
    result = ClipResult(job.source)
    cropper = FaceCropper(out_size=cfg.size, fit_frames=FIT_FRAMES)
    try:
        landmarks, frame_size, result.full_searches = _detect_all(job.path, cfg, cropper)
        result.frames_read = len(landmarks)
        detected = np.all(np.isfinite(landmarks.reshape(len(landmarks), -1)), axis=1)
        if len(landmarks) == 0:
            raise MediaError(f"{job.source}: no frames")
        if cfg.split == "dev":
            plans, skips = plan_dev_segment(landmarks, cropper, job.source)
            # protocol: every frame stays, so carry landmarks over misses (nearest) rather
            # than dropping frames; `detected` says which ones were real detections
            filled = fill_nearest(landmarks.reshape(len(landmarks), -1)).reshape(-1, 68, 2)
        else:
            plans, skips, filled = plan_segments(
                landmarks, frame_size, cropper, job.source,
                min_frames=max(1, round(cfg.min_seconds * cfg.fps)), max_gap=cfg.max_gap,
                min_box=cfg.min_box, min_inside=cfg.min_inside,
            )
        if cfg.also_size is not None:
            for p in plans:
                if p.box.size < cfg.native_fraction * cfg.also_size:
                    skips.append(Skip(job.source, f"no {cfg.also_size}px file: crop box "
                                      f"{p.box.size:.0f} px < {cfg.native_fraction:.0%} of "
                                      f"{cfg.also_size}", (p.start, p.stop)))
        result.skips = [asdict(s) for s in skips]
        if plans:
            result.segments = _write_segment_files(job, cfg, plans, filled, detected)
    except (MediaError, FaceNotFoundError, OSError, ValueError) as exc:
        result.skips.append(asdict(Skip(job.source, f"{type(exc).__name__}: {exc}")))
    result.seconds = time.perf_counter() - started
    return result


def _process_star(args: tuple[ClipJob, BuildConfig]) -> ClipResult:
    return process_clip(*args)


def _reencode(path: Path, crf: int, preset: str) -> None:
    """Re-code one segment at another CRF (only used when the set exceeds --max-mb)."""
    from codec.media import frames_to_video, read_frames

    tmp = path.with_name(path.stem + ".tmp.mp4")
    frames_to_video(tmp, (f.image for f in read_frames(path, fps=None)), fps=25.0, crf=crf,
                    options={"preset": preset, "threads": "1"})
    os.replace(tmp, path)


def build_dataset(jobs: Sequence[ClipJob], cfg: BuildConfig, log: Any = sys.stdout) -> dict[str, Any]:
    """Process ``jobs`` into ``cfg.out``; writes index.json and summary.json, returns the index.

    Raises:
        ValueError: a job's split differs from ``cfg.split`` (train/dev never mix).
    """
    for job in jobs:
        if job.split != cfg.split:
            raise ValueError(f"{job.source}: split {job.split!r} in a {cfg.split!r} build")
    started = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    # longest first, so parallel workers end together
    ordered = sorted(jobs, key=lambda j: -j.duration_s)[: cfg.limit]
    results: list[ClipResult] = []
    from codec.progress import ProgressBar

    # The per-clip lines go to ``log`` (kept in files and CI); the bar only to a terminal.
    with ProgressBar(len(ordered), f"{cfg.split} clips", unit="clip") as bar:
        if cfg.workers > 1:
            with ProcessPoolExecutor(cfg.workers) as pool:
                for res in pool.map(_process_star, [(j, cfg) for j in ordered]):
                    results.append(res)
                    _log_clip(res, log)
                    bar.update()
        else:
            for job in ordered:
                res = process_clip(job, cfg)
                results.append(res)
                _log_clip(res, log)
                bar.update()
    results.sort(key=lambda r: r.source)
    segments = [s for r in results for s in r.segments]
    skips = [s for r in results for s in r.skips]

    # size budget: re-code at a higher CRF until the set fits (generation loss is small
    # next to the crf step); only the primary size counts
    crf = cfg.crf
    total = sum(s["bytes"] for s in segments)
    while cfg.max_mb and total > cfg.max_mb * 1e6 and crf < 40:
        crf += 2
        print(f"  {total / 1e6:.1f} MB > {cfg.max_mb} MB: re-encoding at crf {crf}", file=log)
        for s in segments:
            _reencode(out / s["file"], crf, cfg.preset)
            s["bytes"] = (out / s["file"]).stat().st_size
        total = sum(s["bytes"] for s in segments)

    identities = sorted({s["identity"] for s in segments})
    frames = sum(s["frames"] for s in segments)
    summary = {
        "split": cfg.split,
        "size": cfg.size,
        "fps": cfg.fps,
        "clips": len(jobs) if cfg.limit is None else len(ordered),
        "clips_used": len({s["source"] for s in segments}),
        "segments": len(segments),
        "identities": len(identities),
        "frames": frames,
        "seconds": round(frames / cfg.fps, 2),
        "bytes": total,
        "bytes_per_frame": round(total / max(1, frames), 1),
        "bytes_extra": {str(cfg.also_size): sum(sum(s.get("bytes_extra", {}).values())
                                                for s in segments)} if cfg.also_size else {},
        "kbit_per_s": round(total * 8 / max(1e-9, frames / cfg.fps) / 1000, 1),
        "frames_read": sum(r.frames_read for r in results),
        "skips": len(skips),
        "skip_reasons": _count_reasons(skips),
        "x264": {"codec": "libx264", "pix_fmt": "yuv420p", "crf": crf, **cfg.x264_options()},
        "build_seconds": round(time.perf_counter() - started, 1),
        "clip_seconds_sum": round(sum(r.seconds for r in results), 1),
        "workers": cfg.workers,
        "detect_every": cfg.detect_every,
        "full_frame_searches": sum(r.full_searches for r in results),
    }
    index = {
        "format": "facecodec-face-segments",
        "version": INDEX_VERSION,
        "split": cfg.split,
        "size": cfg.size,
        "fps": cfg.fps,
        "pose_convention": ("degrees; R = Rz(roll)·Ry(yaw)·Rx(pitch), x right, y down, z away "
                            "from camera; yaw>0 nose to image left, pitch>0 nose down, roll>0 "
                            "head tilted clockwise on screen"),
        "landmarks": f"68 dlib points, x/y in pixels of the {cfg.size}px crop, float16",
        "identities": identities,
        "segments": segments,
        "skips": skips,
        "summary": summary,
    }
    (out / "index.json").write_text(json.dumps(index, indent=1, ensure_ascii=False), encoding="utf-8")
    (out / "summary.json").write_text(
        json.dumps({**summary, "skip_list": skips}, indent=1, ensure_ascii=False), encoding="utf-8")
    _print_summary(summary, skips, log)
    return index


def _count_reasons(skips: Sequence[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in skips:
        key = re.sub(r"\(.*?\)", "(…)", s["reason"])  # group "(12 frames)" variants
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _log_clip(res: ClipResult, log: Any) -> None:
    n = sum(s["frames"] for s in res.segments)
    print(f"  {res.source}: {res.frames_read} frames read, {len(res.segments)} segment(s), "
          f"{n} frames kept, {len(res.skips)} skip(s), {res.seconds:.1f} s", file=log, flush=True)
    for s in res.skips:
        print(f"    skip {s['frames'] or ''} {s['reason']}", file=log)


def _print_summary(summary: dict[str, Any], skips: Sequence[dict[str, Any]], log: Any) -> None:
    rows = [
        ("split", summary["split"]), ("size", f"{summary['size']} px"),
        ("clips used / given", f"{summary['clips_used']} / {summary['clips']}"),
        ("identities", summary["identities"]), ("segments", summary["segments"]),
        ("frames", summary["frames"]), ("seconds", summary["seconds"]),
        ("bytes", f"{summary['bytes']} ({summary['bytes'] / 1e6:.2f} MB, "
                  f"{summary['bytes_per_frame']} B/frame, {summary['kbit_per_s']} kbit/s)"),
        ("x264", " ".join(f"{k}={v}" for k, v in summary["x264"].items())),
        ("skips", summary["skips"]), ("build time", f"{summary['build_seconds']} s"),
    ]
    width = max(len(k) for k, _ in rows)
    print("-" * 60, file=log)
    for k, v in rows:
        print(f"{k:<{width}}  {v}", file=log)
    for reason, count in summary["skip_reasons"].items():
        print(f"{'':<{width}}  {count:4d} × {reason}", file=log)
    print("-" * 60, file=log, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m training.dataset_builder",
                                description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", help="MANIFEST.tsv (paths relative to its folder)")
    src.add_argument("--folder", help="a plain folder of videos, searched recursively")
    p.add_argument("--split", default="train", choices=["train", "dev"])
    p.add_argument("--out", required=True, help="output folder (e.g. cache/train256)")
    p.add_argument("--size", type=int, default=256, help="crop side in pixels")
    p.add_argument("--also-size", type=int, default=None,
                   help="also write this size (e.g. 512) where the crop box has ≥ 0.9× its pixels")
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--crf", type=int, default=22, help="x264 CRF of the segment files")
    p.add_argument("--preset", default="slow", help="x264 preset")
    p.add_argument("--max-mb", type=float, default=35.0,
                   help="re-encode at a higher CRF until the set fits (0 = no limit)")
    p.add_argument("--min-seconds", type=float, default=1.0, help="drop shorter segments")
    p.add_argument("--min-inside", type=float, default=0.75,
                   help="skip crops with less of their area inside the frame (rest = edge smear)")
    p.add_argument("--detect-every", type=int, default=1,
                   help="run the face detector on every N-th frame, interpolate between")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--limit", type=int, default=None, help="only the first N (longest) clips")
    args = p.parse_args(argv)
    if args.folder:
        jobs = jobs_from_folder(args.folder, args.split)
    else:
        jobs = jobs_from_manifest(args.manifest, args.split)
    if not jobs:
        print(f"no clips for split {args.split!r}", file=sys.stderr)
        return 1
    cfg = BuildConfig(out=args.out, split=args.split, size=args.size, fps=args.fps, crf=args.crf,
                      preset=args.preset, max_mb=args.max_mb, also_size=args.also_size,
                      min_seconds=args.min_seconds, min_inside=args.min_inside,
                      detect_every=max(1, args.detect_every),
                      workers=max(1, args.workers), limit=args.limit)
    print(f"building {len(jobs)} {args.split} clip(s) into {args.out} "
          f"({cfg.workers} worker(s), crf {cfg.crf}, preset {cfg.preset})", flush=True)
    build_dataset(jobs, cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
