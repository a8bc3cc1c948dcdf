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
import sys
from pathlib import Path

from codec.errors import CodecError

log = logging.getLogger("facecodec")


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    from codec.zoo import DEFAULT_MODEL, model_names

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


def _model(args: argparse.Namespace, name: str | None = None):
    from codec.zoo import DEFAULT_MODEL, resolve_model

    return resolve_model(args.model or name or DEFAULT_MODEL, untrained=args.untrained,
                         weights=args.weights, seed=args.seed, device=args.device,
                         refiner=not args.no_refiner)


def _progress(total: int | None, label: str):
    """A tqdm bar on a terminal (silent in pipes, files and CI); the API calls it per frame."""
    from codec.progress import ProgressBar

    return ProgressBar(total, label)


def cmd_compress(args: argparse.Namespace) -> int:
    from codec.api import compress

    model = _model(args)
    with _progress(args.max_frames, "compress") as bar:
        report = compress(args.input, args.output, model=model, quality=args.quality,
                          intra_period=args.intra_period, fps=args.fps, max_frames=args.max_frames,
                          keyframe_codec=args.keyframe_codec, keyframe_quality=args.keyframe_quality,
                          audio=not args.no_audio, progress=bar)
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
    with _progress(None, "decompress") as bar:
        report = decompress(args.input, args.output, model=model, untrained=args.untrained,
                            weights=args.weights, view=view, batch_size=args.batch_size,
                            device=args.device, progress=bar)
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
        "family": header.family,
        "expression_values": header.expression_count,
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
    with _progress(args.max_frames, "compress") as bar:
        report = compress(source, stream, model=model, quality=args.quality, fps=args.fps,
                          max_frames=args.max_frames, progress=bar)
    print(report.summary())
    decoded = out / "decoded.mp4"
    with _progress(report.frames, "decompress") as bar:
        dreport = decompress(stream, decoded, model=model, batch_size=args.batch_size, progress=bar)
    print(dreport.summary())
    # Side by side: the face crop the encoder saw | what the receiver rebuilt.
    from codec.facecrop import CropBox

    box = CropBox(*report.crop)
    size = model.image_size
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


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: a loopback WebRTC call in one process on the built-in default input."""
    from app.demo import run_demo

    model = _model(args)
    if model.untrained:
        print("*** UNTRAINED MODEL: the rebuilt video is not meaningful (format and transport demo) ***")
    report = run_demo(model, seconds=args.seconds, fps=args.fps, mode=args.mode, out=args.out,
                      quality=args.quality)
    print(f"mode {report['mode']} ({report['mode_reason']}); {report['frames_sent']} frames sent, "
          f"{report['frames_rendered']} rendered")
    print(f"data channel: {report['data_channel_payload_kbps']:.2f} kbit/s payload "
          f"(motion {report['motion_kbps']:.2f}), ~{report['data_channel_wire_kbps_estimate']:.1f} "
          f"kbit/s on the wire (+{report['data_channel_overhead_bytes_per_message']} B/message)")
    print(f"H.264 at the same rate: target {report['h264_target_kbps']:.2f}, "
          f"got {report['h264_kbps']:.2f} kbit/s")
    if report["latency_ms_median"] is not None:
        print(f"capture-to-render latency: median {report['latency_ms_median']:.0f} ms, "
              f"p95 {report['latency_ms_p95']:.0f} ms (every frame rendered, so a slow CPU queues); "
              f"sender encode {report['sender_encode_ms_per_frame']:.1f} ms/frame")
    print(f"wrote {args.out / 'side_by_side.mp4'} (input | ours | H.264), "
          f"{args.out / 'received.mp4'} and {args.out / 'report.json'}")
    return 0


# `facecodec call` exit codes, in its --help (CALL_EPILOG) and the README's Calls section.
EXIT_NO_CALL = 1  # a peer joined but no call connected, or the call failed
EXIT_NOBODY_JOINED = 3
EXIT_BAD_TOKEN = 4
EXIT_ROOM_FULL = 5
EXIT_SIGNALING = 6  # the signaling server is unreachable, full or failed
CALL_EPILOG = ("Exit codes: 0 the call ran; 1 a peer joined but no call connected, or the call "
               "failed; 2 usage error (no token, a bad argument or input); 3 no one joined the room "
               "within --wait; 4 the signaling server refused the token; 5 the room already holds "
               "two peers; 6 the signaling server is unreachable or full. "
               "FACECODEC_RTC_LOG=INFO (or DEBUG) also logs aiortc's and aioice's details.")


def _add_call_wait_args(parser: argparse.ArgumentParser) -> None:
    """`call`'s --wait and exit codes, kept beside cmd_call."""
    from app.call import WAIT_S

    parser.add_argument("--wait", type=float, default=WAIT_S,
                        help="give up when no one joins the room within this many seconds")
    parser.epilog = CALL_EPILOG


def _call_logging() -> None:
    """A call's milestones (connected, the mode and why, switches) show without -v; aiortc's
    and aioice's chatter (every ICE check) stays out even with -v unless FACECODEC_RTC_LOG
    names a level."""
    import os

    logging.getLogger("facecodec.call").setLevel(logging.INFO)
    logging.getLogger("facecodec.signaling").setLevel(logging.INFO)  # the client's reconnect retries
    name = os.environ.get("FACECODEC_RTC_LOG", "WARNING").upper()
    level = logging.getLevelNamesMapping().get(name, logging.WARNING)
    for library in ("aiortc", "aioice"):
        logging.getLogger(library).setLevel(level)


def _call_model(args: argparse.Namespace):
    """The model, or None where it cannot load: H.264 is the fallback, not a crash."""
    if args.source != "none":
        import numpy as np

        from codec.facecrop import detect_landmarks

        # Loads dlib's face models (~2 s) now, not after the call connects.
        detect_landmarks(np.zeros((64, 64, 3), np.uint8))
    try:
        loaded = _model(args)
    except CodecError as exc:  # e.g. no weights
        log.warning("no usable model (%s): this peer sends and receives H.264 only", exc)
        return None
    if loaded.untrained:
        print("*** UNTRAINED MODEL: neural video is not meaningful ***", file=sys.stderr)
    return loaded


def _call_failure(exc: Exception, room: str) -> tuple[int, str]:
    """(exit code, one line for stderr) for a call that could not happen."""
    from app.call import NobodyJoined
    from signaling.errors import BadTokenError, RoomFullError, SignalingError

    if isinstance(exc, NobodyJoined):
        return EXIT_NOBODY_JOINED, f"{exc} (--wait)"
    if isinstance(exc, BadTokenError):
        return EXIT_BAD_TOKEN, "the signaling server refused the token (--token or FACECODEC_SIGNALING_TOKEN)"
    if isinstance(exc, RoomFullError):
        return EXIT_ROOM_FULL, f"room {room!r} already holds two peers; pick another --room"
    if isinstance(exc, SignalingError):
        return EXIT_SIGNALING, f"signaling: {exc}"
    return EXIT_NO_CALL, str(exc)


def _close_recording(recorder):
    """Finish the recording; an empty one (no call, nothing received) is dropped, not an error."""
    if recorder is None:
        return None
    if recorder.stats.frames_written == 0:
        try:
            recorder.close()  # raises for an empty file, after removing its temporary files
        except CodecError:
            pass
        return None
    return recorder.close()


def cmd_call(args: argparse.Namespace) -> int:
    """Join a room on a signaling server and call whoever is there."""
    import asyncio
    import os
    import time

    from app.call import CallEnded, CallOptions, join_room, run_peer, write_call_stats
    from signaling.errors import SignalingError

    token = args.token or os.environ.get("FACECODEC_SIGNALING_TOKEN")
    if not token:
        print("facecodec call: error: no token (--token or FACECODEC_SIGNALING_TOKEN)", file=sys.stderr)
        return 2
    _call_logging()
    show = None
    sinks = []
    if args.window:
        from receiver.sinks import WindowSink

        window = WindowSink("facecodec")
        sinks.append(lambda image, t: window.show(image))
    viewer_frames = None
    if args.viewer:
        from receiver.frames import LatestFrame

        viewer_frames = LatestFrame()
        sinks.append(viewer_frames.put)
    if sinks:
        def show(image, t):
            for sink in sinks:
                sink(image, t)

    options = CallOptions(fps=args.fps, mode=args.mode, h264_kbps=args.h264_kbps, quality=args.quality)

    current: dict = {}
    made: dict = {}  # the recorder, made once the model is loaded; closed below whatever happens

    async def run():
        started = time.monotonic()
        # The room before the model: a wrong token or a full room fails now, not after the load.
        client = await join_room(args.signaling, token, args.room)
        viewer = stats_task = None
        try:
            if args.stats_file is not None:
                stats_task = asyncio.ensure_future(
                    write_call_stats(args.stats_file, args.stats_every, current, started))
            # In a thread, so the event loop keeps the signaling connection answering pings.
            loaded = await asyncio.to_thread(_call_model, args)
            frames = audio = None
            if args.source != "none":
                frames, audio = _call_source(args, loaded)
            if args.record is not None:
                from receiver.sinks import Mp4Recorder

                size = loaded.image_size if loaded is not None else 256
                made["recorder"] = Mp4Recorder(args.record, fps=args.fps, size=(size, size))
            if viewer_frames is not None:
                from receiver.viewer import ViewerServer

                def stats() -> dict:
                    call = current.get("call")
                    return call.receiver.snapshot() if call is not None and call.receiver else {}

                def on_view(view) -> None:
                    call = current.get("call")
                    if call is not None and call.receiver is not None:
                        call.receiver.view = view

                viewer = ViewerServer(viewer_frames, stats=stats, on_view=on_view, port=args.viewer_port)
                await viewer.start()
                print(f"viewer: {viewer.url}", file=sys.stderr)
            return await run_peer(client=client, loaded=loaded, frames=frames, audio=audio,
                                  options=options, duration=args.seconds, wait=args.wait,
                                  recorder=made.get("recorder"), show=show, rejoin=not args.no_rejoin,
                                  on_call=lambda call: current.update(call=call))
        finally:
            await client.close()
            if viewer is not None:
                await viewer.stop()
            if stats_task is not None:
                stats_task.cancel()

    try:
        report = asyncio.run(run())
    except (SignalingError, CallEnded) as exc:  # one line and an exit code, not a traceback
        code, message = _call_failure(exc, args.room)
        print(f"facecodec call: error: {message}", file=sys.stderr)
        return code
    finally:
        recording = _close_recording(made.get("recorder"))
    from dataclasses import asdict

    if args.record is not None and recording is None:
        log.warning("nothing was received: no recording written")
    report.recording = asdict(recording) if recording is not None else None
    text = json.dumps(asdict(report), indent=2, default=str)
    print(text)
    if args.report is not None:
        args.report.write_text(text)
    return 0 if report.calls else EXIT_NO_CALL


def _call_source(args: argparse.Namespace, loaded):
    from sender.media_tracks import PcmAudioTrack
    from sender.sources import CameraSource, VideoFileSource, default_audio, default_source

    if args.source == "default":
        frames = iter(default_source(num_frames=None, fps=args.fps, size=(512, 512), model=loaded))
        audio = None if args.no_audio else PcmAudioTrack(default_audio(20.0), loop=True)
    elif args.source.startswith("camera"):
        device = args.source.partition(":")[2] or "/dev/video0"
        frames = iter(CameraSource(device, fps=args.fps))
        audio = None
        if not args.no_audio:
            from sender.media_tracks import microphone_track

            try:
                audio = microphone_track()
            except CodecError as exc:
                log.warning("no microphone (%s): sending no audio", exc)
    else:
        frames = iter(VideoFileSource(args.source, fps=args.fps, loop=args.loop))
        audio = None
        if not args.no_audio:
            try:
                audio = PcmAudioTrack.from_file(args.source, loop=args.loop)
            except CodecError as exc:  # a silent clip is still a call
                log.warning("no audio from %s (%s): sending video only", args.source, exc)
    return frames, audio


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default; options whose default is None or False say nothing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        default = action.default
        if default is None or default is False or default == argparse.SUPPRESS or "%(default)" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
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

    p = add("compress", "video file -> .fvc stream file (face crop, keyframe, motion, Opus audio)")
    p.add_argument("input", type=Path, help="a video file with a face (any format PyAV reads)")
    p.add_argument("output", type=Path, help="the .fvc file to write")
    _add_model_args(p)
    p.add_argument("--quality", type=int, default=3,
                   help="motion quantization level, 0 (coarsest) to 5 (finest)")
    p.add_argument("--intra-period", type=int, default=25,
                   help="frames between absolute motion packets")
    p.add_argument("--fps", type=float, default=25.0, help="resample the input to this frame rate")
    p.add_argument("--max-frames", type=int, default=None,
                   help="stop after this many frames (default: the whole file)")
    p.add_argument("--keyframe-codec", choices=["webp", "jpeg"], default="webp",
                   help="how the keyframe image is coded")
    p.add_argument("--keyframe-quality", type=int, default=90, help="keyframe image quality, 1-100")
    p.add_argument("--no-audio", action="store_true", help="drop the audio track")
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    p.set_defaults(func=cmd_compress)

    p = add("decompress", ".fvc stream file -> video file of the rebuilt face crop (with audio)")
    p.add_argument("input", type=Path, help="a .fvc file written by compress")
    p.add_argument("output", type=Path, help="the video file to write (e.g. .mp4)")
    _add_model_args(p)
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
    _add_model_args(p)
    p.add_argument("--quality", type=int, default=3,
                   help="motion quantization level, 0 (coarsest) to 5 (finest)")
    p.add_argument("--fps", type=float, default=25.0, help="resample the input to this frame rate")
    p.add_argument("--max-frames", type=int, default=100, help="frames to code")
    p.add_argument("--batch-size", type=int, default=4, help="frames rendered per forward pass")
    p.set_defaults(func=cmd_roundtrip)

    # Listed for --help only: main() hands `serve-signaling ...` to `python -m signaling`.
    sub.add_parser("serve-signaling", help="run the signaling server (rooms of two, token); "
                                           "options: facecodec serve-signaling --help")

    p = add("call", "join a room on a signaling server and call the other peer")
    p.add_argument("--signaling", default="ws://127.0.0.1:8765/ws", help="the server's WebSocket URL")
    p.add_argument("--room", required=True, help="room name; the two peers of a call use the same one")
    p.add_argument("--token", default=None, help="shared secret (or FACECODEC_SIGNALING_TOKEN)")
    p.add_argument("--source", default="default",
                   help="'default' (built-in), a video file, 'camera[:DEVICE]', or 'none' (receive only)")
    p.add_argument("--loop", action="store_true", help="loop a video file source")
    p.add_argument("--no-audio", action="store_true", help="send no audio")
    p.add_argument("--mode", choices=["neural", "h264", "auto"], default="auto",
                   help="auto: neural when the peer holds the same model and renders in real time")
    p.add_argument("--h264-kbps", type=float, default=30.0, help="H.264 fallback bitrate")
    p.add_argument("--quality", type=int, default=None, help="motion quality 0-5")
    p.add_argument("--fps", type=float, default=25.0, help="frames per second sent")
    p.add_argument("--seconds", type=float, default=60.0,
                   help="length of the call, counted from when it connects (waiting is --wait)")
    _add_call_wait_args(p)  # --wait and the exit codes, kept beside cmd_call
    p.add_argument("--record", type=Path, default=None, help="record what this side receives (MP4)")
    p.add_argument("--viewer", action="store_true", help="serve the web viewer on localhost")
    p.add_argument("--viewer-port", type=int, default=8080, help="the web viewer's port")
    p.add_argument("--window", action="store_true", help="show the video in a window")
    p.add_argument("--no-rejoin", action="store_true", help="end when the peer leaves")
    p.add_argument("--report", type=Path, default=None, help="write the call report as JSON")
    p.add_argument("--stats-file", type=Path, default=None,
                   help="append a JSON line of this process's memory, descriptors and the call's "
                        "render fps and latency every --stats-every seconds (long-call checks)")
    p.add_argument("--stats-every", type=float, default=10.0, help="seconds between --stats-file lines")
    _add_model_args(p)
    p.set_defaults(func=cmd_call)

    p = add("demo", "loopback call on the built-in default: side-by-side video "
                    "(input | ours | H.264 at the same rate), the recording and a report")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    p.add_argument("--seconds", type=float, default=4.0, help="length of the input clip")
    p.add_argument("--fps", type=float, default=25.0, help="frames per second")
    p.add_argument("--mode", choices=["neural", "h264", "auto"], default="neural",
                   help="what the sender sends")
    p.add_argument("--quality", type=int, default=None,
                   help="motion quantization level 0-5 (default: the codec's, 3)")
    _add_model_args(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
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
