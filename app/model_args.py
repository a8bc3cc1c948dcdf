"""The options every model-running command shares (--model, --weights, --no-refiner, ...),
and the model they name."""

from __future__ import annotations

import argparse
from pathlib import Path

from codec.families.base import TalkingHeadModel
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
