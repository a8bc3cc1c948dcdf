"""The ``facecodec`` command: compress / decompress / info / roundtrip.

Every subcommand that runs the model refuses to start without trained weights unless
``--untrained`` is given, because an untrained generator's output is noise.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from codec.errors import CodecError

log = logging.getLogger("facecodec")


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="registered model name (default: vox256)")
    parser.add_argument("--weights", type=Path, default=None,
                        help="a weights file exported by the trainer, instead of the registered one")
    parser.add_argument("--untrained", action="store_true",
                        help="run the UNTRAINED architecture (seeded random weights). For tests and "
                             "format work only: the output is not meaningful and is marked as such")
    parser.add_argument("--seed", type=int, default=0, help="seed of the untrained model")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")


def _model(args: argparse.Namespace, name: str | None = None):
    from codec.zoo import DEFAULT_MODEL, resolve_model

    return resolve_model(args.model or name or DEFAULT_MODEL, untrained=args.untrained,
                         weights=args.weights, seed=args.seed, device=args.device)


def _progress(total: int | None, label: str):
    def report(count: int) -> None:
        if sys.stderr.isatty() and (count % 10 == 0 or count == total):
            end = f"/{total}" if total else ""
            print(f"\r{label}: {count}{end} frames", end="", file=sys.stderr, flush=True)
    return report


def cmd_compress(args: argparse.Namespace) -> int:
    from codec.api import compress

    report = compress(args.input, args.output, model=_model(args), quality=args.quality,
                      intra_period=args.intra_period, fps=args.fps, max_frames=args.max_frames,
                      keyframe_codec=args.keyframe_codec, keyframe_quality=args.keyframe_quality,
                      audio=not args.no_audio, progress=_progress(args.max_frames, "compress"))
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(report.summary())
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=2))
    return 0


def cmd_decompress(args: argparse.Namespace) -> int:
    from codec.api import ViewControl, decompress

    view = ViewControl(yaw=args.yaw, pitch=args.pitch, roll=args.roll, frontalize=args.frontalize)
    model = None
    if args.weights is not None or args.model is not None:
        model = _model(args)
    report = decompress(args.input, args.output, model=model, untrained=args.untrained,
                        weights=args.weights, view=view, batch_size=args.batch_size,
                        device=args.device, progress=_progress(None, "decompress"))
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(report.summary())
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from codec.bitstream import MotionPacket, parse_packet, read_container

    with open(args.input, "rb") as f:
        container = read_container(f)
    header = container.header
    motion = [data for data in container.video_packets
              if isinstance(parse_packet(data), MotionPacket)]
    info = {
        "model": header.model_name,
        "weights_sha256_prefix": header.weights_sha256_prefix.hex(),
        "untrained": header.untrained,
        "frame_rate": header.frame_rate,
        "size": [header.width, header.height],
        "num_kp": header.num_kp,
        "quality": header.quality,
        "intra_period": header.intra_period,
        "video_packets": len(container.video_packets),
        "motion_packets": len(motion),
        "motion_bytes": sum(len(data) for data in motion),
        "audio": container.audio_header is not None,
    }
    print(json.dumps(info, indent=2))
    return 0


def cmd_roundtrip(args: argparse.Namespace) -> int:
    """The main job on a built-in default: compress, decompress, and a side-by-side video."""
    from codec.api import compress, decompress
    from codec.media import VideoWriter, read_frames
    from sender.sources import write_default_clip

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    source = args.input
    if source is None:
        source = out / "input.mp4"
        write_default_clip(source, num_frames=args.max_frames or 100, fps=args.fps)
        print(f"built-in default input (scripted camera motion over a public-domain portrait): {source}")
    model = _model(args)
    stream = out / "stream.fvc"
    report = compress(source, stream, model=model, quality=args.quality, fps=args.fps,
                      max_frames=args.max_frames, progress=_progress(args.max_frames, "compress"))
    print(report.summary())
    decoded = out / "decoded.mp4"
    dreport = decompress(stream, decoded, model=model, batch_size=args.batch_size,
                         progress=_progress(report.frames, "decompress"))
    print(dreport.summary())
    # Side by side: the face crop the encoder saw | what the receiver rebuilt.
    from codec.facecrop import CropBox

    box = CropBox(*report.crop)
    size = model.model.config.image_size
    originals = (box.crop(f.image, size) for f in read_frames(source, fps=args.fps,
                                                                max_frames=report.frames))
    rebuilt = (f.image for f in read_frames(decoded, fps=None))
    side = out / "side_by_side.mp4"
    import numpy as np

    with VideoWriter(side, fps=args.fps, size=(2 * size, size)) as writer:
        for a, b in zip(originals, rebuilt):
            writer.write(np.concatenate([a, b], axis=1))
    print(f"wrote {stream}, {decoded} and {side} (input crop | rebuilt)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facecodec", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compress", help="video file -> .fvc stream file")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    _add_model_args(p)
    p.add_argument("--quality", type=int, default=3,
                   help="motion quantization level, 0 (coarsest) to 5 (finest)")
    p.add_argument("--intra-period", type=int, default=25,
                   help="frames between absolute motion packets")
    p.add_argument("--fps", type=float, default=25.0, help="resample the input to this frame rate")
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--keyframe-codec", choices=["webp", "jpeg"], default="webp")
    p.add_argument("--keyframe-quality", type=int, default=90)
    p.add_argument("--no-audio", action="store_true", help="drop the audio track")
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("decompress", help=".fvc stream file -> video file (with audio)")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    _add_model_args(p)
    p.add_argument("--batch-size", type=int, default=4, help="frames rendered per forward pass")
    p.add_argument("--frontalize", action="store_true", help="render the head facing the camera")
    p.add_argument("--yaw", type=float, default=0.0, help="free view: extra yaw in degrees")
    p.add_argument("--pitch", type=float, default=0.0, help="free view: extra pitch in degrees")
    p.add_argument("--roll", type=float, default=0.0, help="free view: extra roll in degrees")
    p.set_defaults(func=cmd_decompress)

    p = sub.add_parser("info", help="print a .fvc file's header and packet counts")
    p.add_argument("input", type=Path)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("roundtrip", help="compress + decompress a clip (default: built-in) "
                                         "and write a side-by-side video")
    p.add_argument("input", type=Path, nargs="?", default=None)
    p.add_argument("--out", type=Path, default=Path("out/roundtrip"))
    _add_model_args(p)
    p.add_argument("--quality", type=int, default=3)
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--max-frames", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=4)
    p.set_defaults(func=cmd_roundtrip)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except CodecError as exc:
        print(f"facecodec {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"facecodec {args.command}: error: {exc}", file=sys.stderr)
        return 2


def console() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console()
