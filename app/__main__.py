"""The ``facecodec`` command: compress / decompress / info / roundtrip / serve-signaling / call / demo.

The default model is the landmark family, which needs no training. The vid2vid family
(``--model vox256`` / ``tiny``) has no trained weights yet: those subcommands refuse to
run it unless ``--untrained`` is given, because an untrained generator's output is
noise, and then mark every frame as untrained.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from codec.errors import CodecError

if TYPE_CHECKING:
    from codec.families.base import TalkingHeadModel

log = logging.getLogger("facecodec")


def _model(args: argparse.Namespace) -> TalkingHeadModel:
    from app.model_args import model_from_args

    return model_from_args(args)


def _progress(total: int | None, label: str):
    """A tqdm bar on a terminal (silent in pipes, files and CI); the API calls it per frame."""
    from codec.progress import ProgressBar

    return ProgressBar(total, label)


def cmd_compress(args: argparse.Namespace) -> int:
    from app.wire_estimate import wire_estimate
    from codec.files import compress

    model = _model(args)
    with _progress(args.max_frames, "compress") as bar:
        report = compress(args.input, args.output, model=model, quality=args.quality,
                          intra_period=args.intra_period, fps=args.fps, max_frames=args.max_frames,
                          keyframe_codec=args.keyframe_codec, keyframe_quality=args.keyframe_quality,
                          audio=not args.no_audio, patches=not args.no_patches,
                          refresh=args.refresh, references=args.references, crop=args.crop,
                          max_size=args.resolution, progress=bar)
    estimate = wire_estimate(report)
    print(report.summary(wire=estimate.summary()))
    if args.json:
        args.json.write_text(json.dumps({**report.to_dict(), **estimate.to_dict()}, indent=2))
    return 0


def cmd_decompress(args: argparse.Namespace) -> int:
    from codec.api import ViewControl
    from codec.files import decompress

    view = ViewControl(yaw=args.yaw, pitch=args.pitch, roll=args.roll, frontalize=args.frontalize)
    # Without --model, the model is the one the stream's header names, built from the other
    # model flags (--weights, --untrained, --seed, --device, --no-refiner) all the same.
    model = _model(args) if args.model is not None else None
    with _progress(None, "decompress") as bar:
        report = decompress(args.input, args.output, model=model, untrained=args.untrained,
                            weights=args.weights, view=view, batch_size=args.batch_size,
                            device=args.device, seed=args.seed, refiner=not args.no_refiner,
                            progress=bar)
    print(report.summary())
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from codec.bitstream import (
        CompactMotionPacket,
        KeyframePacket,
        MotionPacket,
        PatchPacket,
        PredictedKeyframePacket,
        parse_packet,
        read_container,
    )

    with open(args.input, "rb") as f:
        container = read_container(f)
    header = container.header
    kinds = [type(parse_packet(data, header)) for data in container.video_packets]

    def of(*kind: type) -> list[bytes]:
        return [data for data, k in zip(container.video_packets, kinds) if k in kind]

    motion, patches = of(MotionPacket, CompactMotionPacket), of(PatchPacket)
    keyframes, predicted = of(KeyframePacket, PredictedKeyframePacket), of(PredictedKeyframePacket)
    info = {
        "model": header.model_name,
        "weights_sha256_prefix": header.weights_sha256_prefix.hex(),
        "untrained": header.untrained,
        "frame_rate": header.frame_rate,
        "size": [header.width, header.height],
        "family": header.family,
        "expression_values": header.expression_count,
        "quality": header.quality,
        "intra_period": header.intra_period,
        "video_packets": len(container.video_packets),
        "motion_packets": len(motion),
        "motion_bytes": sum(len(data) for data in motion),
        "keyframes": len(keyframes),
        "keyframe_bytes": sum(len(data) for data in keyframes),
        "predicted_keyframes": len(predicted),  # refreshes coded against the warp (in keyframes)
        "patches": len(patches),
        "patch_bytes": sum(len(data) for data in patches),
        "audio": container.audio_header is not None,
    }
    print(json.dumps(info, indent=2))
    return 0


def cmd_roundtrip(args: argparse.Namespace) -> int:
    """The main job on a built-in default: compress, decompress, and a side-by-side video."""
    from app.wire_estimate import wire_estimate
    from codec.files import compress, decompress
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
    with _progress(args.max_frames, "compress") as bar:
        report = compress(source, stream, model=model, quality=args.quality, fps=args.fps,
                          max_frames=args.max_frames, crop=args.crop, max_size=args.resolution,
                          progress=bar)
    print(report.summary(wire=wire_estimate(report).summary()))
    decoded = out / "decoded.mp4"
    with _progress(report.frames, "decompress") as bar:
        dreport = decompress(stream, decoded, model=model, batch_size=args.batch_size, progress=bar)
    print(dreport.summary())
    # Side by side: the picture the encoder saw (its whole frame or face crop) | what the
    # receiver rebuilt.
    from codec.facecrop import CropBox
    from codec.keyframe import fit_frame

    width, height = report.size
    box = None if report.crop is None else CropBox(*report.crop)
    originals = (fit_frame(f.image, report.size) if box is None else box.crop(f.image, width)
                 for f in read_frames(source, fps=args.fps, max_frames=report.frames))
    rebuilt = (f.image for f in read_frames(decoded, fps=None))
    side = out / "side_by_side.mp4"
    import numpy as np

    with VideoWriter(side, fps=args.fps, size=(2 * width, height)) as writer:
        for a, b in zip(originals, rebuilt):
            writer.write(np.concatenate([a, b], axis=1))
    print(f"wrote {stream}, {decoded} and {side} (input | rebuilt)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: a loopback WebRTC call in one process on the built-in default input."""
    from app.demo import run_demo

    model = _model(args)
    if model.untrained:
        print("*** UNTRAINED MODEL: the rebuilt video is not meaningful (format and transport demo) ***")
    report = run_demo(model, seconds=args.seconds, fps=args.fps, mode=args.mode, out=args.out,
                      quality=args.quality, size=args.resolution, crop=args.crop)
    print(f"mode {report['mode']} ({report['mode_reason']}); {report['frames_sent']} frames sent, "
          f"{report['frames_rendered']} rendered")
    carriage = "on the audio packets" if report["motion_on_audio_packets"] else "on the data channel"
    print(f"neural stream: {report['payload_kbps']:.2f} kbit/s payload (motion {report['motion_kbps']:.2f}, "
          f"{carriage}); on the wire {report['wire_kbps']:.1f} kbit/s (motion "
          f"{report['motion_wire_kbps']:.2f}; the audio {report['audio_wire_kbps']:.1f} besides)")
    print(f"H.264 at the same rate: target {report['h264_target_kbps']:.2f}, "
          f"got {report['h264_kbps']:.2f} kbit/s")
    if report["latency_ms_median"] is not None:
        print(f"capture-to-render latency: median {report['latency_ms_median']:.0f} ms, "
              f"p95 {report['latency_ms_p95']:.0f} ms (every frame rendered, so a slow CPU queues); "
              f"sender encode {report['sender_encode_ms_per_frame']:.1f} ms/frame")
    print(f"wrote {args.out / 'side_by_side.mp4'} (input | ours | H.264), "
          f"{args.out / 'received.mp4'} and {args.out / 'report.json'}")
    return 0


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default; options whose default is None or False say nothing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        default = action.default
        if default is None or default is False or default == argparse.SUPPRESS \
                or "%(default)" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    # Here, not at the top: `facecodec serve-signaling` starts without torch and aiortc.
    from app.call_command import add_call_args, cmd_call
    from app.demo import DEMO_SIZE
    from app.mode_choice import MODES
    from app.model_args import (
        add_keyframe_args,
        add_model_args,
        add_quality_arg,
        add_refresh_arg,
        add_size_args,
    )

    parser = argparse.ArgumentParser(
        prog="facecodec", formatter_class=_HelpFormatter,
        description="A low-bandwidth talking-head video codec: one keyframe, then head pose and "
                    "expression per frame. Default model: the landmark family (no training needed).",
        epilog="Each command has its own --help.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    # -v also after the subcommand (`facecodec call ... -v`); SUPPRESS keeps the top-level value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, parents=[common],
                              formatter_class=_HelpFormatter)

    p = add("compress", "video file -> .fvc stream file (whole frame or face crop, keyframe, motion, "
                        "Opus audio)")
    p.add_argument("input", type=Path, help="a video file with a face (any format PyAV reads)")
    p.add_argument("output", type=Path, help="the .fvc file to write")
    add_model_args(p)
    add_quality_arg(p)
    p.add_argument("--intra-period", type=int, default=25,
                   help="frames between absolute motion packets")
    p.add_argument("--fps", type=float, default=25.0, help="resample the input to this frame rate")
    p.add_argument("--max-frames", type=int, default=None,
                   help="stop after this many frames (default: the whole file)")
    add_keyframe_args(p)
    p.add_argument("--no-audio", action="store_true", help="drop the audio track")
    p.add_argument("--no-patches", action="store_true",
                   help="send no reference patches (real pixels of an open mouth or closed eyes "
                        "that the keyframe lacks)")
    add_refresh_arg(p)
    add_size_args(p)
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    p.set_defaults(func=cmd_compress)

    p = add("decompress", ".fvc stream file -> video file of the rebuilt picture, at the stream's size "
                          "(with audio)")
    p.epilog = ("Speed at 256 px on 2 shared CPU cores (AMD EPYC; benchmarks.decompress_speed): about "
                "44 frames/s with the refiner where the CPU has native bfloat16 (AVX512-BF16), about 32 "
                "in float32 elsewhere, about 140 with --no-refiner.")
    p.add_argument("input", type=Path, help="a .fvc file written by compress")
    p.add_argument("output", type=Path, help="the video file to write (e.g. .mp4)")
    add_model_args(p)
    p.add_argument("--batch-size", type=int, default=4, help="frames rendered per forward pass")
    p.add_argument("--frontalize", action="store_true", help="render the head facing the camera")
    p.add_argument("--yaw", type=float, default=0.0, help="free view: extra yaw in degrees")
    p.add_argument("--pitch", type=float, default=0.0, help="free view: extra pitch in degrees")
    p.add_argument("--roll", type=float, default=0.0, help="free view: extra roll in degrees")
    p.set_defaults(func=cmd_decompress)

    p = add("info", "print a .fvc file's header and packet counts (JSON)")
    p.add_argument("input", type=Path, help="a .fvc file")
    p.set_defaults(func=cmd_info)

    p = add("roundtrip", "compress + decompress a clip and write a side-by-side video")
    p.add_argument("input", type=Path, nargs="?", default=None,
                   help="a video file (default: the built-in portrait clip)")
    p.add_argument("--out", type=Path, default=Path("out/roundtrip"), help="output folder")
    add_model_args(p)
    add_quality_arg(p)
    p.add_argument("--fps", type=float, default=25.0, help="resample the input to this frame rate")
    p.add_argument("--max-frames", type=int, default=100, help="frames to code")
    p.add_argument("--batch-size", type=int, default=4, help="frames rendered per forward pass")
    add_size_args(p)
    p.set_defaults(func=cmd_roundtrip)

    # Listed for --help only: main() hands `serve-signaling ...` to `python -m signaling`.
    sub.add_parser("serve-signaling", help="run the signaling server (rooms of two, token); "
                                           "options: facecodec serve-signaling --help")

    p = add("call", "join a room on a signaling server and call the other peer")
    add_call_args(p)
    p.set_defaults(func=cmd_call)

    p = add("demo", "loopback call on the built-in default: side-by-side video "
                    "(input | ours | H.264 at the same rate), the recording and a report")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    p.add_argument("--seconds", type=float, default=4.0, help="length of the input clip")
    p.add_argument("--fps", type=float, default=25.0, help="frames per second")
    p.add_argument("--mode", choices=MODES, default="neural",
                   help="what the sender sends")
    add_quality_arg(p)
    add_model_args(p)
    add_size_args(p, resolution_default=DEMO_SIZE)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Before torch loads (OpenMP reads it then): idle OpenMP threads sleep at once instead of
    # spinning. On 2 cores shared with anything else (a call's own capture and coding, another
    # program) a spinning thread holds the core its partner needs: decompress took up to 160 ms
    # a frame instead of 45 (benchmarks.decompress_speed, variant "spin"), for ~5% on a calm
    # machine. Set OMP_WAIT_POLICY to override.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if argv[:1] == ["serve-signaling"]:  # its options belong to `python -m signaling`
        from signaling.__main__ import main as signaling_main

        return signaling_main(argv[1:])
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
