"""The options every model-running command shares (--model, --weights, --no-refiner, ...),
and the model they name."""

from __future__ import annotations

import argparse
from pathlib import Path

from codec.families.base import TalkingHeadModel
from codec.motion_coding import CLOSED_LOOP_QUALITY, DEFAULT_QUALITY, NUM_QUALITIES
from codec.zoo import DEFAULT_MODEL, model_names, resolve_model


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help=f"model name: {', '.join(model_names())} (default: {DEFAULT_MODEL})")
    parser.add_argument("--weights", type=Path, default=None,
                        help="a file to load instead of the registered one: a face model for the "
                             "landmark family, trainer-exported weights for vid2vid")
    parser.add_argument("--untrained", action="store_true",
                        help="vid2vid only: run the UNTRAINED architecture (seeded random weights). "
                             "For tests and format work: the output is not meaningful and is marked")
    parser.add_argument("--no-refiner", action="store_true",
                        help="landmark family: render the plain warp, without the learned refiner "
                             "(faster; the stream is the same)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the untrained model")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")


def model_from_args(args: argparse.Namespace, name: str | None = None) -> TalkingHeadModel:
    return resolve_model(args.model or name or DEFAULT_MODEL, untrained=args.untrained,
                         weights=args.weights, seed=args.seed, device=args.device,
                         refiner=not args.no_refiner)


def add_keyframe_args(parser: argparse.ArgumentParser) -> None:
    """--keyframe-codec / --keyframe-quality: the shipped defaults (codec.keyframe) unless given."""
    from codec.keyframe import (
        DEFAULT_KEYFRAME_CODEC,
        DEFAULT_KEYFRAME_QUALITY,
        KEYFRAME_CODEC_IDS,
        WHOLE_FRAME_KEYFRAME_QUALITY,
    )

    parser.add_argument("--keyframe-codec", choices=sorted(KEYFRAME_CODEC_IDS), default=DEFAULT_KEYFRAME_CODEC,
                        help="how keyframe images are coded (default: %(default)s): av1 takes ~35%% "
                             "fewer bytes than WebP for the same rebuilt frames, webp encodes ~15x "
                             "faster (a call codes keyframes off its frame loop either way)")
    qualities = ", ".join(f"{name} {q}" for name, q in DEFAULT_KEYFRAME_QUALITY.items())
    whole = ", ".join(f"{name} {q}" for name, q in WHOLE_FRAME_KEYFRAME_QUALITY.items())
    parser.add_argument("--keyframe-quality", type=int, default=None,
                        help=f"keyframe image quality, 1-100; none: the codec's ({qualities}; "
                             f"whole frames: {whole})")


def resolution(value: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` (e.g. 1280x720) -> (width, height)."""
    try:
        width, height = (int(part) for part in value.lower().replace("×", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT (e.g. 1280x720), not {value!r}") from None
    if not (16 <= width <= 4095 and 16 <= height <= 4095):
        raise argparse.ArgumentTypeError(f"each side must be 16 … 4095 pixels, got {value!r}")
    return width, height


def crop_size(value: str) -> int:
    """``--crop``'s side: 16 … 4095 pixels."""
    try:
        side = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--crop takes a side in pixels (e.g. 256), not {value!r}") from None
    if not 16 <= side <= 4095:
        raise argparse.ArgumentTypeError(f"--crop must be 16 … 4095 pixels, got {side}")
    return side


def add_size_args(parser: argparse.ArgumentParser, resolution_default: tuple[int, int] | None = None) -> None:
    """--resolution (the whole frame's cap) and --crop SIZE (a square face crop instead)."""
    from codec.keyframe import DEFAULT_MAX_FRAME

    parser.add_argument("--resolution", type=resolution, default=resolution_default or DEFAULT_MAX_FRAME,
                        metavar="WxH",
                        help="send the whole frame at its own size, scaled down to fit WxH "
                             "(default: %(default)s; the long side to the larger number)")
    parser.add_argument("--crop", type=crop_size, default=None, metavar="SIZE",
                        help="send a SIZE×SIZE face crop instead of the whole frame (e.g. 256)")


def add_quality_arg(parser: argparse.ArgumentParser) -> None:
    """--quality: the motion quantization level (codec.motion_coding)."""
    parser.add_argument("--quality", type=int, default=None, choices=range(NUM_QUALITIES),
                        metavar=f"0-{NUM_QUALITIES - 1}",
                        help=f"motion quantization level, 0 (coarsest) to {NUM_QUALITIES - 1} (finest) "
                             f"(default: {DEFAULT_QUALITY}; {CLOSED_LOOP_QUALITY} with --refresh)")


def add_refresh_arg(parser: argparse.ArgumentParser) -> None:
    """--refresh: the sender's closed-loop keyframe refresh (codec.api.RefreshPolicy)."""
    parser.add_argument("--refresh", default="off", type=refresh_policy, metavar="GAIN|off",
                        help="closed-loop keyframe refresh: the sender renders what the receiver "
                             "shows and sends the frame at hand as a new keyframe when it would "
                             "have rebuilt the last 2 s with a mean error lower by GAIN (e.g. "
                             "0.05; lower: more keyframes); in a call it also falls back to H.264 "
                             "while keyframes stop helping. Off by default (README)")
    parser.add_argument("--references", type=int, default=None, choices=range(1, 17), metavar="K",
                        help="with --refresh: the receiver keeps K keyframes and the sender warps "
                             "each frame from the one that rebuilds it best, sending a new one only "
                             "when none does (default: 4 with --refresh, else 1)")


def refresh_policy(value: str):
    """``--refresh``'s value -> a ``codec.api.RefreshPolicy``, or None for 'off'."""
    from codec.api import RefreshPolicy

    if value.strip().lower() in ("off", "none", "0"):
        return None
    try:
        gain = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--refresh takes a gain or 'off', not {value!r}") from None
    if not 0 < gain < 1e6:
        raise argparse.ArgumentTypeError(f"--refresh gain must be positive, got {value!r}")
    return RefreshPolicy(gain=gain)
