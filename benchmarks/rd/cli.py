"""The command line of ``python -m benchmarks.rd``: its flags, the checks that refuse a run
(exit status 2, one stderr line saying why), and a run from the clips to results.json, the
plots and summary.md."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .clips import Clip, folder_clips, manifest_clips, skip_summary
from .curves import analysis
from .markdown import markdown_summary
from .ours import ours_config, ours_sweep, shipped_keyframes
from .plots import plot_all
from .protocol import ALL_CODECS, FPS, METRICS, UNTRAINED_MARK
from .results import ResultStore, average_rows, run_meta
from .runner import Sweep, sweep_settings
from .scoring import add_common_face_akd, add_frame_stats, worst_frame_check


class Refused(Exception):
    """The run cannot start: the message goes to stderr and the exit status is 2."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The flags; ``folder_mode`` is set when --folder is given without --manifest."""
    repo = Path(__file__).resolve().parents[2]
    p = argparse.ArgumentParser(prog="python -m benchmarks.rd", description=_description())
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
    p.add_argument("--frame", action="store_true",
                   help="whole frames instead of face crops: each clip's frames scaled so the long "
                        "side is at most 1280 px, clips whose short side is under 480 px skipped "
                        "with the reason; every codec codes exactly those frames"),
    p.add_argument("--out", type=Path, default=Path("out/rd"))
    p.add_argument("--codecs", default=",".join(ALL_CODECS))
    p.add_argument("--model", default="landmark", help="model name (default: %(default)s)")
    p.add_argument("--untrained", action="store_true",
                   help="run our codec with seeded random weights (every output marked UNTRAINED)")
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--no-refiner", action="store_true",
                   help="landmark family: score the plain warp, without the learned refiner")
    p.add_argument("--no-patches", action="store_true",
                   help="our sender sends no reference patches of the mouth and eyes")
    p.add_argument("--damping", choices=("on", "off"), default="off",
                   help="our sender damps motion on frames its reference cannot show (codec.damping; "
                        "settings named -damp); off, as compress and a call ship it")
    p.add_argument("--keyframe-codec", choices=["webp", "av1", "jpeg"], default=None,
                   help="our keyframes' image codec (default: the shipped one, what compress and a "
                        "call send, codec.keyframe.DEFAULT_KEYFRAME_CODEC; others name their "
                        "settings -k<codec>)")
    p.add_argument("--keyframe-quality", type=int, default=None,
                   help="our keyframes' quality, 1-100 (default: the codec's, "
                        "codec.keyframe.DEFAULT_KEYFRAME_QUALITY; others name their settings -kq<Q>)")
    p.add_argument("--references", default=None, metavar="K[,K...]",
                   help="our reference slots: the receiver keeps K keyframes and the closed loop "
                        "warps each frame from the best held one; a comma list runs each "
                        "(settings named -r<K> for K > 1; default: what compress and a call use, "
                        "codec.api.DEFAULT_REFERENCES with the closed loop, else 1)")
    p.add_argument("--reference-policy", choices=["lru", "coverage"], default="lru",
                   help="which slot a new keyframe replaces when all K are full (-rcov for coverage)")
    p.add_argument("--predicted-refresh", choices=("on", "off"), default="on",
                   help="closed-loop refreshes coded also against the warp of the held reference "
                        "and sent that way when smaller (codec.predicted_keyframe; the default, as "
                        "compress sends); off: always whole keyframes (settings named -nopred)")
    p.add_argument("--predicted-crf", default=None, metavar="CRF[,CRF...]",
                   help="x264 CRF of predicted refreshes, 0-51; a comma list runs each (settings "
                        "named -crf<N> off the default, codec.predicted_keyframe.DEFAULT_CRF)")
    p.add_argument("--qualities", default="0,1,2,3,4,5")
    p.add_argument("--keyframe-refresh", default="0",
                   help="comma list of keyframe refresh periods in seconds (0 = one keyframe), "
                        "each run at every --qualities value; R@Q runs period R at quality Q "
                        "only; aG (or aG@Q) the sender's closed-loop refresh at gain G, aGtD with its "
                        "head-turn trigger at D degrees, Rf a period of R s that waits for a face "
                        "(codec.api.RefreshPolicy; e.g. 0,4@3,a0.05@3)")
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
    args.reference_counts = [None] if args.references is None else _int_list(
        p, "--references", args.references, 1, 16, "slot counts")
    args.predicted_crfs = [None] if args.predicted_crf is None else _int_list(
        p, "--predicted-crf", args.predicted_crf, 0, 51, "x264 CRFs")
    args.folder_mode = args.manifest is None and args.folder is not None
    if args.manifest is None and not args.folder_mode:
        args.manifest = default_manifest
    return args


def _int_list(parser: argparse.ArgumentParser, flag: str, text: str, low: int, high: int,
              what: str) -> list[int]:
    """A flag's comma list of integers in [low, high], or the parser's error (exit status 2)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or not all(low <= v <= high for v in values):
        parser.error(f"{flag} takes {what} {low}-{high}, not {text!r}")
    return values


def _description() -> str:
    """The first line of the package docstring (what --help says the benchmark is)."""
    return (sys.modules[__package__].__doc__ or "").split("\n")[0]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when it wrote results.json and summary.md, 2 when it refused."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    try:
        codecs = _check_flags(args)
        clips, source = _clips(args)
        qualities = [int(q) for q in args.qualities.split(",") if q.strip()]
        try:
            ours_points = ours_sweep(args.keyframe_refresh, qualities)
        except ValueError as exc:
            raise Refused(f"--keyframe-refresh: {exc}") from exc
        aligned = sorted({r for r, _ in ours_points if isinstance(r, float) and r > 0
                          and args.metric_every > 1 and round(r * FPS) % args.metric_every == 0})
        if aligned:
            # Every keyframe would land on a scored frame, which rebuilds to itself: such a
            # periodic refresh scores better than it looks (2 s at --metric-every 25: half
            # the scored frames are keyframes).
            logging.getLogger("benchmarks.rd").warning(
                "--metric-every %d scores the keyframes of refresh period(s) %s s themselves; "
                "pick a --metric-every that divides no period (e.g. 7)", args.metric_every,
                ", ".join(f"{r:g}" for r in aligned))
        model = _load_model(args) if "ours" in codecs else None
    except Refused as exc:
        print(exc, file=sys.stderr)
        return 2
    threads = args.threads if args.threads else torch.get_num_threads()
    torch.set_num_threads(max(1, min(threads, os.cpu_count() or 1)))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    untrained = bool(model is not None and model.untrained)
    command = "python -m benchmarks.rd " + " ".join(
        sys.argv[1:] if argv is None else list(argv))
    keyframes = shipped_keyframes(args.keyframe_codec, args.keyframe_quality, whole_frame=args.frame)
    size = "frame" if args.frame else args.size
    store = ResultStore(out / "results.json", run_meta(
        args.name or out.name, command, untrained, size, args.frames, args.metric_every, source,
        keyframes))
    store.data["codecs"] = codecs
    if "ours" in codecs:
        # Which sender settings "ours" ran with, each resolved, and whether they are what compress
        # and a call use (shipped_default; setting names say every departure).
        store.data["ours_config"] = [
            ours_config(refresh, args.keyframe_codec, args.keyframe_quality, k, args.predicted_refresh == "on", crf,
                        whole_frame=args.frame, damping=args.damping == "on", motion_quality=q)
            | {"refresh": refresh, "reference_policy": args.reference_policy}
            for refresh, q in ours_points
            for k in args.reference_counts for crf in args.predicted_crfs]
    store.data.setdefault("skipped", {})
    store.data.setdefault("metrics_unavailable", {})
    sweep = Sweep(store, sweep_settings(codecs, ours_points, quick=args.sweep == "quick",
                                        patches=not args.no_patches,
                                        keyframe_quality=args.keyframe_quality,
                                        keyframe_codec=args.keyframe_codec,
                                        references=args.reference_counts,
                                        reference_policy=args.reference_policy,
                                        predicted_refresh=args.predicted_refresh == "on",
                                        predicted_crfs=args.predicted_crfs,
                                        whole_frame=args.frame,
                                        damping=args.damping == "on"), model,
                  size, args.frames, args.metric_every,
                  [m.strip() for m in args.metrics.split(",") if m.strip()], out)
    started = time.perf_counter()
    used_clips = sweep.run(clips)
    if not used_clips:
        hint = ("" if args.folder_mode or args.folder is None else
                "; with --manifest, --folder only relocates the manifest's paths (give --folder "
                "alone to benchmark every video in it)")
        print(f"no clip scored: all {len(clips)} clips skipped "
              f"({skip_summary(store.data['skipped'], clips)}){hint}", file=sys.stderr)
        return 2
    _finish(store, out, sweep.rows(used_clips), used_clips, untrained, started)
    return 0


def _check_flags(args: argparse.Namespace) -> list[str]:
    """The codecs of --codecs, after checking the flags argparse cannot."""
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    unknown = sorted(set(codecs) - set(ALL_CODECS))
    if unknown:
        raise Refused(f"unknown codecs {unknown}; have {list(ALL_CODECS)}")
    if args.metric_every < 1:
        raise Refused("--metric-every must be >= 1")
    if args.clips is not None and args.clips < 1:
        raise Refused("--clips must be >= 1")
    return codecs


def _clips(args: argparse.Namespace) -> tuple[list[Clip], str]:
    """The clips to score (the first --clips of them) and where they came from, in words."""
    if args.folder_mode:
        if not args.folder.is_dir():
            raise Refused(f"no clip to score: folder not found: {args.folder}")
        clips = folder_clips(args.folder)
        source = "every video under --folder"
        if not clips:
            from training.dataset import VIDEO_SUFFIXES

            raise Refused(f"no clip to score: no video under {args.folder} (looked for "
                          f"{' '.join(VIDEO_SUFFIXES)}, recursively)")
    else:
        if not args.manifest.is_file():
            raise Refused(f"manifest not found: {args.manifest}")
        clips = manifest_clips(args.manifest, args.split, args.folder)
        source = f"split {args.split}"
        if not clips:
            raise Refused(f"no clip to score: no row of split {args.split!r} in {args.manifest}")
    if args.clips is not None:
        clips = clips[: args.clips]
    return clips, source


def _load_model(args: argparse.Namespace) -> Any:
    """Our codec's model; refused without registered weights unless --untrained / --weights."""
    from codec.errors import CodecError
    from codec.zoo import resolve_model

    try:
        model = resolve_model(args.model, untrained=args.untrained, weights=args.weights,
                               refiner=not args.no_refiner)
    except CodecError as exc:
        raise Refused(f"our codec cannot run: {exc}") from exc
    if model.untrained:
        print(f"*** {UNTRAINED_MARK} ***", file=sys.stderr)
    return model


def _finish(store: ResultStore, out: Path, rows: list[dict[str, Any]], used_clips: list[str],
            untrained: bool, started: float) -> None:
    """Averages, analysis and plots into results.json, then summary.md beside it."""
    add_common_face_akd(rows, out / "perframe")
    add_frame_stats(rows, out / "perframe")
    store.data["worst_frames"] = worst_frame_check(rows)
    store.note_resummarised()
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
