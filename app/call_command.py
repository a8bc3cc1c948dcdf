"""``facecodec call``: join a room on a signaling server and call whoever is there, with a
window, the web viewer, a recording and a stats file on request."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from app.call import WAIT_S, CallEnded, CallOptions, NobodyJoined
from app.call_stats import write_call_stats
from app.mode_choice import MODES
from app.model_args import (
    add_keyframe_args,
    add_model_args,
    add_quality_arg,
    add_refresh_arg,
    add_size_args,
    model_from_args,
)
from app.peer import join_room, run_peer
from codec.errors import CodecError
from codec.facecrop import detect_landmarks
from codec.families.base import TalkingHeadModel
from receiver.frames import LatestFrame
from receiver.sinks import Mp4Recorder
from receiver.viewer import ViewerServer
from receiver.window import WindowSink
from rtc.peer import quiet_closed_transport_errors
from sender.media_tracks import PcmAudioTrack
from sender.microphone import microphone_track
from sender.sources import CameraSource, VideoFileSource, default_audio, default_source
from signaling.errors import BadTokenError, RoomFullError, SignalingError

log = logging.getLogger("facecodec")


# `facecodec call` exit codes, in its --help (CALL_EPILOG) and docs/calls.md.
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


def add_call_args(parser: argparse.ArgumentParser) -> None:
    """`facecodec call`'s options, and its exit codes in the epilog."""
    parser.add_argument("--signaling", default="ws://127.0.0.1:8765/ws", help="the server's WebSocket URL")
    parser.add_argument("--room", required=True, help="room name; the two peers of a call use the same one")
    parser.add_argument("--token", default=None, help="shared secret (or FACECODEC_SIGNALING_TOKEN)")
    parser.add_argument("--source", default="default",
                   help="'default' (built-in), a video file, 'camera[:DEVICE]', or 'none' (receive only)")
    parser.add_argument("--loop", action="store_true", help="loop a video file source")
    parser.add_argument("--no-audio", action="store_true", help="send no audio")
    parser.add_argument("--mode", choices=MODES, default="auto",
                   help="auto: neural when the peer holds the same model and renders in real time")
    parser.add_argument("--h264-kbps", type=float, default=30.0, help="H.264 fallback bitrate")
    parser.add_argument("--audio-kbps", type=float, default=12.0,
                        help="Opus bitrate of the audio sent (aiortc's own is 96 kbit/s); 0 keeps aiortc's")
    add_quality_arg(parser)
    parser.add_argument("--no-patches", action="store_true",
                        help="send no reference patches of the mouth and eyes")
    add_refresh_arg(parser)
    add_keyframe_args(parser)
    add_size_args(parser)
    parser.add_argument("--fps", type=float, default=25.0, help="frames per second sent")
    parser.add_argument("--seconds", type=float, default=60.0,
                   help="length of the call, counted from when it connects (waiting is --wait)")
    parser.add_argument("--record", type=Path, default=None, help="record what this side receives (MP4)")
    parser.add_argument("--viewer", action="store_true", help="serve the web viewer on localhost")
    parser.add_argument("--viewer-port", type=int, default=8080, help="the web viewer's port")
    parser.add_argument("--window", action="store_true", help="show the video in a window")
    parser.add_argument("--no-rejoin", action="store_true", help="end when the peer leaves")
    parser.add_argument("--report", type=Path, default=None, help="write the call report as JSON")
    parser.add_argument("--meter-wire", action="store_true",
                        help="count what this side sends on the wire by kind, into the call report")
    parser.add_argument("--stats-file", type=Path, default=None,
                   help="append a JSON line of this process's memory, descriptors and the call's "
                        "render fps and latency every --stats-every seconds (long-call checks)")
    parser.add_argument("--stats-every", type=float, default=10.0, help="seconds between --stats-file lines")
    add_model_args(parser)
    parser.add_argument("--wait", type=float, default=WAIT_S,
                        help="give up when no one joins the room within this many seconds")
    parser.epilog = CALL_EPILOG


def _call_logging() -> None:
    """A call's milestones (connected, the mode and why, switches) show without -v; aiortc's
    and aioice's chatter (every ICE check) stays out even with -v unless FACECODEC_RTC_LOG
    names a level."""
    logging.getLogger("facecodec.call").setLevel(logging.INFO)
    logging.getLogger("facecodec.signaling").setLevel(logging.INFO)  # the client's reconnect retries
    name = os.environ.get("FACECODEC_RTC_LOG", "WARNING").upper()
    level = logging.getLevelNamesMapping().get(name, logging.WARNING)
    for library in ("aiortc", "aioice"):
        logging.getLogger(library).setLevel(level)


def _call_model(args: argparse.Namespace) -> TalkingHeadModel | None:
    """The model, or None where it cannot load: H.264 is the fallback, not a crash."""
    if args.source != "none":
        # Loads dlib's face models (~2 s) now, not after the call connects.
        detect_landmarks(np.zeros((64, 64, 3), np.uint8))
    try:
        model = model_from_args(args)
    except CodecError as exc:  # e.g. no weights
        log.warning("no usable model (%s): this peer sends and receives H.264 only", exc)
        return None
    if model.untrained:
        print("*** UNTRAINED MODEL: neural video is not meaningful ***", file=sys.stderr)
    return model


def _call_failure(exc: Exception, room: str) -> tuple[int, str]:
    """(exit code, one line for stderr) for a call that could not happen."""
    if isinstance(exc, NobodyJoined):
        return EXIT_NOBODY_JOINED, f"{exc} (--wait)"
    if isinstance(exc, BadTokenError):
        return EXIT_BAD_TOKEN, "the signaling server refused the token (--token or FACECODEC_SIGNALING_TOKEN)"
    if isinstance(exc, RoomFullError):
        return EXIT_ROOM_FULL, f"room {room!r} already holds two peers; pick another --room"
    if isinstance(exc, SignalingError):
        return EXIT_SIGNALING, f"signaling: {exc}"
    return EXIT_NO_CALL, str(exc)


def _close_recording(recorder: Mp4Recorder | None):
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
    token = args.token or os.environ.get("FACECODEC_SIGNALING_TOKEN")
    if not token:
        print("facecodec call: error: no token (--token or FACECODEC_SIGNALING_TOKEN)", file=sys.stderr)
        return 2
    _call_logging()
    show = None
    sinks = []
    if args.window:
        window = WindowSink("facecodec")
        sinks.append(lambda image, t: window.show(image))
    viewer_frames = None
    if args.viewer:
        viewer_frames = LatestFrame()
        sinks.append(viewer_frames.put)
    if sinks:
        def show(image, t):
            for sink in sinks:
                sink(image, t)

    options = CallOptions(fps=args.fps, mode=args.mode, h264_kbps=args.h264_kbps, quality=args.quality,
                          patches=not args.no_patches, refresh=args.refresh, references=args.references,
                          keyframe_codec=args.keyframe_codec, keyframe_quality=args.keyframe_quality,
                          audio_kbps=args.audio_kbps or None, meter_wire=args.meter_wire,
                          resolution=args.resolution, crop=args.crop)

    current: dict = {}
    made: dict = {}  # the recorder, made once the model is loaded; closed below whatever happens

    async def run():
        started = time.monotonic()
        quiet_closed_transport_errors(asyncio.get_running_loop())
        # The room before the model: a wrong token or a full room fails now, not after the load.
        client = await join_room(args.signaling, token, args.room)
        viewer = stats_task = None
        try:
            if args.stats_file is not None:
                stats_task = asyncio.ensure_future(
                    write_call_stats(args.stats_file, args.stats_every, current, started))
            # In a thread, so the event loop keeps the signaling connection answering pings.
            model = await asyncio.to_thread(_call_model, args)
            frames = audio = None
            if args.source != "none":
                frames, audio = _call_source(args, model)
            if args.record is not None:
                made["recorder"] = Mp4Recorder(args.record, fps=args.fps)  # at the stream's size
            if viewer_frames is not None:
                def stats() -> dict:
                    call = current.get("call")
                    receiving = call.receiver_session if call is not None else None
                    return receiving.snapshot() if receiving is not None else {}

                def on_view(view) -> None:
                    call = current.get("call")
                    if call is not None and call.receiver_session is not None:
                        call.receiver_session.view = view

                viewer = ViewerServer(viewer_frames, stats=stats, on_view=on_view, port=args.viewer_port)
                await viewer.start()
                print(f"viewer: {viewer.url}", file=sys.stderr)
            return await run_peer(client=client, model=model, frames=frames, audio=audio,
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
    if args.record is not None and recording is None:
        log.warning("nothing was received: no recording written")
    report.recording = asdict(recording) if recording is not None else None
    text = json.dumps(asdict(report), indent=2, default=str)
    print(text)
    if args.report is not None:
        args.report.write_text(text)
    return 0 if report.calls else EXIT_NO_CALL


def _call_source(args: argparse.Namespace, model: TalkingHeadModel | None):
    if args.source == "default":
        frames = iter(default_source(num_frames=None, fps=args.fps, size=(640, 480), model=model,
                                     whole_frame=args.crop is None))
        audio = None if args.no_audio else PcmAudioTrack(default_audio(20.0), loop=True)
    elif args.source.startswith("camera"):
        device = args.source.partition(":")[2] or "/dev/video0"
        frames = iter(CameraSource(device, fps=args.fps))
        audio = None
        if not args.no_audio:
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
