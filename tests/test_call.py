"""Calls over real WebRTC (aiortc, ICE/DTLS/SCTP/RTP on this machine) with the tiny seeded
UNTRAINED model: loopback in one process, loss and recovery, fallback switching, malformed
input, the control-channel format, and `facecodec call` against a real signaling server
(wait, refusals, exit codes, what it prints)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.call import Call, CallOptions
from app.loopback import run_loopback
from app.mode_choice import choose_mode
from codec.api import Encoder
from codec.bitstream import MotionPacket, MotionSequencer, StreamHeader, parse_packet
from codec.bitstream.control import (
    Bye,
    IntraRequest,
    Keyframe,
    KeyframeRequest,
    ModeRequest,
    ModeSwitch,
    Patch,
    StatsReport,
    StreamStart,
    pack_control,
    parse_control,
)
from codec.errors import BitstreamError, CodecError, MissingReferenceError
from codec.motion_coding import MotionDecoder
from rtc.motion_bundle import is_bundle, split_bundle
from sender.media_tracks import PcmAudioTrack
from sender.sources import default_audio, default_source
from signaling.messages import Capabilities

CALL_TIMEOUT_S = 90.0


# ------------------------------------------------------------------------------ control format


def test_control_messages_round_trip():
    for message in [StreamStart(b"hdr", 1.5, 25.0), Keyframe(b"\x01\x02"), Patch(b"\x04\x05"),
                    KeyframeRequest("gap"),
                    IntraRequest("lost"), ModeSwitch("h264", "face lost"), ModeRequest("neural", "why"),
                    StatsReport({"fps": 24.5, "loss": 0.1}), Bye("hang up")]:
        assert parse_control(pack_control(message)) == message


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x93\x01\x02\x03", "text",
                                  pack_control(Bye("x")).replace(b"bye", b"bzz"),
                                  pack_control(ModeSwitch("h264", "x")).replace(b"h264", b"h265")])
def test_malformed_control_messages_raise_typed_errors(data):
    with pytest.raises(BitstreamError):
        parse_control(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_control_parser_only_raises_codec_errors(data):
    try:
        parse_control(data)
    except CodecError:
        pass


def test_auto_mode_needs_same_weights_and_render_speed(tiny_model):
    same = Capabilities(has_weights=True, model=tiny_model.name,
                        weights_sha256_prefix=tiny_model.sha256_prefix.hex(), untrained=True,
                        render_fps=100.0, codecs=["neural", "h264"])
    assert choose_mode("auto", tiny_model, same, 25.0)[0] == "neural"
    slow = Capabilities(**{**same.to_dict(), "render_fps": 3.0})
    assert choose_mode("auto", tiny_model, slow, 25.0)[0] == "h264"
    other = Capabilities(**{**same.to_dict(), "weights_sha256_prefix": "00" * 8})
    assert choose_mode("auto", tiny_model, other, 25.0)[0] == "h264"
    assert choose_mode("auto", tiny_model, Capabilities(), 25.0)[0] == "h264"
    assert choose_mode("auto", None, same, 25.0)[0] == "h264"
    assert choose_mode("neural", tiny_model, None, 25.0)[0] == "neural"


# ------------------------------------------------------------------------------ loopback calls


async def loopback(sender_model, receiver_model, frames, *, seconds: float, options: CallOptions,
                   tap_motion=None, tap_frames=None, before_send=None, audio: bool = False):
    """Run a one-way call A -> B in this process; returns (A, B, what B showed).

    ``audio``: A also sends the default audio bed, so motion rides on the audio packets.

    ``tap_motion(data, forward)`` stands in for B's motion input; ``tap_frames(frame)`` sees
    every frame B decodes (a ``codec.api.DecodedFrame``) before B shows it."""
    shown: list[float] = []

    async def started(sending: Call, receiving: Call) -> None:
        if tap_motion is not None:  # wrap B's motion input
            original = receiving.receiver_session.on_motion
            receiving.receiver_session.on_motion = lambda data: tap_motion(data, original)
        if tap_frames is not None:  # wrap B's decoded-frame output (it runs on B's render thread)
            session = receiving.receiver_session
            emit = session._emit

            def observed(frame) -> None:
                tap_frames(frame)
                emit(frame)

            session._emit = observed
        if before_send is not None:
            asyncio.ensure_future(before_send(sending, receiving))

    async def settle(sending: Call, receiving: Call) -> None:
        await asyncio.sleep(0.5)  # let the last packets land and render

    track = PcmAudioTrack(default_audio(seconds + 5.0)) if audio else None
    sending, receiving = await run_loopback(
        sender_model, receiver_model, iter(frames), seconds=seconds, options=options, audio=track,
        show=lambda image, t: shown.append(t), started=started, finished=settle, timeout=CALL_TIMEOUT_S)
    return sending, receiving, shown


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    return list(default_source(num_frames=100, size=(256, 256)))


def test_loopback_neural_call_delivers_frames_within_budget(tiny_model, clip):
    seconds = 3.0
    sending, receiving, shown = asyncio.run(loopback(
        tiny_model, tiny_model, clip, seconds=seconds, options=CallOptions(mode="neural")))
    tx, rx = sending.sender_session.stats, receiving.receiver_session
    assert sending.sender_session.mode == "neural", sending.mode_reason
    assert tx.neural_frames >= 0.9 * seconds * 25
    assert rx.stats.rendered >= 0.8 * tx.neural_frames, rx.snapshot()
    assert len(shown) == rx.stats.rendered
    assert rx.stats.malformed == 0
    assert receiving.picture_stalls == []  # pictures kept coming: nothing to say
    # A cheap first keyframe, then, once this fast link is measured, one at full quality
    # (sender.link_adapt); nothing else.
    assert rx.stats.keyframes in (1, 2), rx.snapshot()
    if rx.stats.keyframes == 2:
        assert "the link carries" in rx.stats.last_keyframe_reason
    # The motion stream's budget: well under x264's floor (~10 kbit/s at 256 px).
    motion_kbps = 8 * tx.motion_bytes / seconds / 1000
    assert 0 < motion_kbps < 10.0
    assert rx.stats.latencies_ms and np.median(rx.stats.latencies_ms) < 2000


@pytest.mark.parametrize("carriage", ["data channel", "audio packets"])
def test_loopback_survives_motion_loss_and_does_not_drift(tiny_model, clip, carriage):
    """10 % random loss over the first 2.6 s plus a burst of 8: the call goes on, the receiver
    asks for intra packets and a keyframe, and every frame rendered after the last loss has
    exactly the lossless motion. The same with motion on the data channel (no audio) and on
    the audio packets' header extension."""
    rng = random.Random(7)
    received: list[bytes] = []
    dropped: list[int] = []
    rendered: list[tuple[int, np.ndarray]] = []  # (seq, decoded motion) of every frame B rendered

    # Numbers the motion packets as B's decoder would without losses (compact packets carry 6
    # sequence bits); the few reordered before the audio flows are passed on unnumbered.
    numbering = MotionSequencer(Encoder(tiny_model).stream_header())

    def tap(data: bytes, forward) -> None:
        # On the data channel motion goes three frames a message until a keyframe large enough
        # to measure the link has crossed (sender/link_adapt.py; the tiny model's never is):
        # a lost message loses all of them.
        packets = [numbering.resolve(parse_packet(p)) for p in (split_bundle(data) if is_bundle(data) else [data])]
        numbered = [p for p in packets if p is not None]
        if not numbered:
            forward(data)
            return
        received.extend(numbered)
        if any(p.seq < 65 and rng.random() < 0.10 or 30 <= p.seq < 38 for p in numbered):
            dropped.extend(p.seq for p in numbered)  # then 1 s clean to check drift
            return
        forward(data)

    sending, receiving, shown = asyncio.run(loopback(
        tiny_model, tiny_model, clip, seconds=3.8, options=CallOptions(mode="neural"), tap_motion=tap,
        tap_frames=lambda frame: rendered.append((frame.seq, frame.motion)), audio=carriage == "audio packets"))
    rx = receiving.receiver_session
    if carriage == "audio packets":  # (a few may take the data channel before the audio flows)
        assert sending.motion_carrier.stats.carried >= 0.8 * len(received), sending.motion_carrier.stats
        assert receiving.motion_reader.stats.carried == sending.motion_carrier.stats.carried
    else:
        assert sending.motion_carrier is None and receiving.motion_reader is None
    assert len(dropped) >= 10
    assert rx.stats.keyframe_requests >= 1  # after the burst
    assert rx.stats.intra_requests >= 1 and sending.sender_session.stats.intra_requests >= 1  # single losses
    assert sending.sender_session.stats.keyframes >= 2 and rx.stats.keyframes >= 2  # recovered by keyframe
    assert 0.05 < rx.stats.loss < 0.5
    # No drift: decode every packet losslessly and compare with what B rendered after a loss.
    header = StreamHeader.parse(sending.sender_session.encoder.header())
    lossless = MotionDecoder(header.quant_table, header.expression_count)
    truth = {}
    for packet in sorted(received, key=lambda p: p.seq):
        try:
            truth[packet.seq] = lossless.decode_vector(packet.intra, packet.seq, packet.payload)
        except MissingReferenceError:  # a predecessor went by unnumbered: until the next intra
            continue
    after = [(seq, v) for seq, v in rendered if seq > max(dropped)]
    assert after, "nothing rendered after the last loss"
    for seq, vector in after:
        np.testing.assert_allclose(vector, truth[seq], atol=1e-6)


def test_face_loss_switches_to_h264_and_back_after_a_keyframe(tiny_model, clip, caplog):
    caplog.set_level(logging.INFO, logger="facecodec.call")
    blank = np.full_like(clip[0], 128)
    frames = clip[:25] + [blank] * 60 + clip[25:100]
    sending, receiving, shown = asyncio.run(loopback(
        tiny_model, tiny_model, frames, seconds=6.0,
        options=CallOptions(mode="neural", face_lost_frames=10)))
    tx, rx = sending.sender_session.stats, receiving.receiver_session
    assert tx.mode_switches >= 2, tx  # neural -> h264 -> neural
    assert tx.h264_frames > 20 and rx.stats.h264_frames > 5, (tx, rx.snapshot())
    assert sending.sender_session.mode == "neural"
    assert tx.keyframes >= 2 and rx.stats.keyframes >= 2
    # One line per switch on each side, on the logger `facecodec call` shows without -v.
    lines = [r.getMessage() for r in caplog.records if r.name == "facecodec.call"]
    assert sum(line.startswith("switching to h264: face lost") for line in lines) == 1, lines
    assert sum(line.startswith("switching to neural: face found again") for line in lines) == 1, lines
    assert sum(line.startswith("the peer switched to h264: face lost") for line in lines) == 1, lines


def test_auto_mode_sends_h264_to_a_peer_without_the_model(tiny_model, clip):
    sending, receiving, shown = asyncio.run(loopback(
        tiny_model, None, clip, seconds=2.0, options=CallOptions(mode="auto")))
    assert sending.sender_session.mode == "h264"
    assert "no model" in sending.mode_reason
    assert receiving.receiver_session.stats.h264_frames > 20
    assert len(shown) == receiving.receiver_session.stats.h264_frames


def test_malformed_packets_are_counted_not_fatal(tiny_model, clip):
    async def inject(sending, receiving) -> None:
        while sending.motion is None or sending.motion.readyState != "open" or \
                receiving.receiver_session is None or receiving.receiver_session.decoder is None:
            await asyncio.sleep(0.02)
        for junk in (b"", b"\x00", b"\xff" * 40, b"\x02\x05\x05\x7f"):
            sending.motion.send(junk)
            sending.control.send(junk)
        sending.motion.send("text on a binary channel")

    sending, receiving, shown = asyncio.run(loopback(
        tiny_model, tiny_model, clip, seconds=2.0, options=CallOptions(mode="neural"),
        before_send=inject))
    rx = receiving.receiver_session
    assert rx.stats.malformed >= 4
    assert receiving.control_malformed >= 4
    assert rx.stats.rendered > 20  # and the call went on


# ------------------------------------------------------------------------------ rejoin, restart


@pytest.mark.slow
def test_peer_leaves_and_rejoins_and_a_call_survives_a_signaling_restart(tiny_model):
    """A stays in the room; B1 calls for 2 s and hangs up; B2 joins and A calls again; the
    signaling server restarts (same port) during B2's call, which goes on over WebRTC."""
    from app.peer import run_peer
    from signaling.server import SignalingServer

    def source():
        return iter(default_source(num_frames=None, size=(256, 256)))

    async def scenario():
        server = SignalingServer("secret")
        await server.start()
        port = server.port
        common = dict(url=server.url, token="secret", room="rejoin", model=tiny_model, audio=None,
                      options=CallOptions(mode="neural"))
        a = asyncio.ensure_future(run_peer(frames=source(), duration=30.0, **common))
        await asyncio.sleep(1.0)
        b1 = await run_peer(frames=source(), duration=4.0, rejoin=False, **common)
        b2 = asyncio.ensure_future(run_peer(frames=source(), duration=7.0, rejoin=False, **common))
        await asyncio.sleep(5.0)  # B2's call is up: restart the server under it
        await server.stop()
        server = SignalingServer("secret", port=port)
        await server.start()
        b2 = await asyncio.wait_for(b2, 60.0)
        a.cancel()
        await server.stop()
        return b1, b2

    b1, b2 = asyncio.run(asyncio.wait_for(scenario(), 120.0))
    assert b1.calls == 1 and b2.calls == 1
    # B2 kept receiving A's motion to the end, across the server restart.
    assert b2.end_reasons == ["duration reached"], b2.end_reasons
    assert b1.receiver["rendered"] > 10 and b2.receiver["rendered"] > 25, (b1, b2)


def test_free_view_portrait_source_turns_the_head(tiny_model):
    from codec.zoo import resolve_model
    from sender.sources import FreeViewPortraitSource, ScriptedCameraSource, head_pose_path

    model = resolve_model("landmark")
    source = default_source(num_frames=6, fps=25.0, model=model)
    assert isinstance(source, FreeViewPortraitSource)
    frames = list(source)
    size = model.image_size
    assert len(frames) == 6 and frames[0].shape == (size, size, 3) and frames[0].dtype == np.uint8
    assert head_pose_path(0.0) == (0.0, 0.0, 0.0) and head_pose_path(1.0)[0] == pytest.approx(15.0)
    # The head turns, so the render changes with the pose, and the sender sees the turn.
    turned = source.frame_at(1.0)
    assert np.abs(frames[0].astype(int) - turned.astype(int)).mean() > 2.0
    tracker = model.motion_tracker()
    yaw_front, yaw_turned = tracker.motion(frames[0])[0], tracker.motion(turned)[0]
    assert yaw_turned - yaw_front == pytest.approx(15.0, abs=5.0)
    # An untrained model never drives the default: it would render noise.
    assert isinstance(default_source(num_frames=2, model=tiny_model), ScriptedCameraSource)


# ------------------------------------------------------------------------------ facecodec call

TOKEN = "call-test-token"


def source():
    return iter(default_source(num_frames=None, size=(256, 256)))


def test_a_late_peer_gets_the_whole_call_and_a_recording_without_black(tiny_model, tmp_path, caplog):
    """A waits alone; B joins 3 s later. The call still lasts its 2 s, counted from when it
    connects, and A's recording starts with its first picture, not when A started."""
    from app.peer import run_peer
    from receiver.sinks import Mp4Recorder
    from signaling.server import SignalingServer

    caplog.set_level(logging.INFO, logger="facecodec.call")
    size = tiny_model.image_size
    recorder = Mp4Recorder(tmp_path / "a.mp4", fps=25.0, size=(size, size))

    async def scenario():
        async with SignalingServer(TOKEN) as server:
            common = {"url": server.url, "token": TOKEN, "room": "late", "model": tiny_model, "audio": None,
                      "options": CallOptions(mode="neural"), "duration": 2.0}
            a = asyncio.ensure_future(run_peer(frames=source(), recorder=recorder, **common))
            await asyncio.sleep(3.0)
            b = await run_peer(frames=source(), rejoin=False, **common)
            return await asyncio.wait_for(a, 20.0), b

    try:
        a, b = asyncio.run(asyncio.wait_for(scenario(), 60.0))
    finally:
        recording = recorder.close()
    assert a.calls == b.calls == 1, (a, b)
    assert 2.0 <= a.seconds < 6.0 and 2.0 <= b.seconds < 6.0, (a.seconds, b.seconds)
    assert b.sender["neural_frames"] >= 0.6 * 2.0 * 25
    assert recording.frames_blank == 0 and recording.frames_written >= 1.2 * 25, recording
    lines = [r.getMessage() for r in caplog.records if r.name == "facecodec.call"]
    for expected in ("connected to the peer in", "sending neural: asked for neural", "the peer sends neural"):
        assert sum(line.startswith(expected) for line in lines) == 2, (expected, lines)  # A and B


@pytest.fixture
def server_in_thread():
    """A signaling server on 127.0.0.1 in its own thread and event loop, as if in another
    process: the command under test runs its own asyncio.run. Yields (server, loop)."""
    from signaling.server import SignalingServer

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = SignalingServer(TOKEN)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10.0)
    try:
        yield server, loop
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10.0)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10.0)
        loop.close()


def call_command(server, *args: str) -> int:
    from app.__main__ import main

    return main(["call", "--signaling", server.url, *args])


def test_call_command_refusals_are_one_line_and_come_before_any_model_load(server_in_thread,
                                                                             monkeypatch, capsys):
    from app.call_command import EXIT_BAD_TOKEN, EXIT_ROOM_FULL
    from signaling import Capabilities, SignalingClient

    server, loop = server_in_thread

    def no_load(*args, **kwargs):
        raise AssertionError("a model loaded before the room was joined")

    monkeypatch.setattr("codec.zoo.resolve_model", no_load)
    monkeypatch.setattr("codec.facecrop.detect_landmarks", no_load)
    started = time.monotonic()
    assert call_command(server, "--room", "kitchen", "--token", "wrong") == EXIT_BAD_TOKEN

    async def fill(room: str) -> list:
        peers = [SignalingClient(server.url, TOKEN, room, Capabilities()) for _ in range(2)]
        for peer in peers:
            await peer.connect()
        return peers

    peers = asyncio.run_coroutine_threadsafe(fill("full"), loop).result(10.0)
    try:
        assert call_command(server, "--room", "full", "--token", TOKEN) == EXIT_ROOM_FULL
    finally:
        for peer in peers:
            asyncio.run_coroutine_threadsafe(peer.close(), loop).result(10.0)
    assert time.monotonic() - started < 10.0
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "facecodec call: error: the signaling server refused the token (--token or FACECODEC_SIGNALING_TOKEN)",
        "facecodec call: error: room 'full' already holds two peers; pick another --room"]


def test_call_command_alone_in_the_room_ends_with_one_message(server_in_thread, tmp_path, capsys):
    from app.call_command import EXIT_NOBODY_JOINED

    server, _ = server_in_thread
    record = tmp_path / "alone.mp4"
    assert call_command(server, "--room", "alone", "--token", TOKEN, "--wait", "1", "--model", "tiny",
                        "--untrained", "--source", "none", "--record", str(record)) == EXIT_NOBODY_JOINED
    out, err = capsys.readouterr()
    assert out == ""
    assert [line for line in err.splitlines() if "error" in line or "recorded" in line] == [
        "facecodec call: error: no one joined room 'alone' within 1 s (--wait)"]
    assert list(tmp_path.iterdir()) == []  # no recording, not even a partial one


def test_call_command_logging_shows_milestones_and_keeps_ice_chatter_out(monkeypatch):
    from app.call_command import _call_logging

    names = ("facecodec.call", "facecodec.signaling", "aiortc", "aioice")
    saved = {name: logging.getLogger(name).level for name in names} | {"": logging.getLogger().level}
    try:
        logging.getLogger().setLevel(logging.WARNING)  # no -v
        _call_logging()
        assert logging.getLogger("facecodec.call").isEnabledFor(logging.INFO)
        logging.getLogger().setLevel(logging.INFO)  # -v: every ICE check would be an INFO line
        assert not logging.getLogger("aioice.ice").isEnabledFor(logging.INFO)
        assert not logging.getLogger("aiortc.rtcpeerconnection").isEnabledFor(logging.INFO)
        monkeypatch.setenv("FACECODEC_RTC_LOG", "debug")
        _call_logging()
        assert logging.getLogger("aioice.ice").isEnabledFor(logging.DEBUG)
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def test_patches_travel_on_the_reliable_channel_and_reach_the_decoder(tiny_model):
    """The sender puts patch packets on the control channel (reliable, like keyframes) and
    motion on the lossy one; the receiver hands a Patch message to its decoder."""
    from types import SimpleNamespace

    from codec.bitstream import PatchPacket
    from receiver.session import ReceiverSession
    from sender.session import SenderSession

    sent: dict[str, list[bytes]] = {"control": [], "motion": []}

    def channel(name: str) -> SimpleNamespace:
        return SimpleNamespace(readyState="open", bufferedAmount=0, send=sent[name].append)

    session = SenderSession(iter([]), fps=25.0, encoder=None, cropper=None, h264_track=None, mode="h264")
    session._control, session._motion = channel("control"), channel("motion")
    patch = PatchPacket(3, 120, 0, 1, 90, 150, 1, b"RIFF\x08\0\0\0WEBPtiny", b"").pack()
    motion = MotionPacket(3, 120, True, b"\x01\x02").pack()
    session._send_packets([patch, motion])
    assert [parse_control(m) for m in sent["control"]] == [Patch(patch)]
    assert sent["motion"] == [motion] and session.stats.patches == 1
    receiver = ReceiverSession(tiny_model, show=lambda image, t: None, send_control=lambda m: None)
    try:
        queued = []
        receiver._enqueue = queued.append
        receiver.on_control(Patch(patch))
        assert queued == [patch]
    finally:
        receiver.close()


def test_a_call_sends_refreshes_predicted_from_the_held_reference(tiny_model, clip):
    """Refreshes in a call go out as predicted keyframes (0x05) on the reliable channel, coded
    off the frame loop, from the reference the receiver reported holding; the receiver builds
    each (its sha256 check: the sender's reference bytes) and reports it. A refresh whose check
    fails empties its slot, the receiver asks for a keyframe and a whole one answers."""
    from codec.bitstream import PacketType, PredictedKeyframePacket

    spoiled: list[int] = []

    async def refreshes(sending: Call, receiving: Call) -> None:
        while sending.sender_session is None or receiving.receiver_session is None:
            await asyncio.sleep(0.02)
        encoder = sending.sender_session.encoder
        encoder.always_predict = True  # the tiny untrained model: predicted whatever it costs
        on_control = receiving.receiver_session.on_control

        def spoil_one(message) -> None:  # the second predicted refresh builds another reference
            if isinstance(message, Keyframe) and message.packet[0] == PacketType.PREDICTED_KEYFRAME:
                spoiled.append(message.packet[0])
                if len(spoiled) == 2:
                    packet = parse_packet(message.packet)
                    assert isinstance(packet, PredictedKeyframePacket)
                    message = Keyframe(packet=dataclasses.replace(
                        packet, check=bytes(b ^ 0xFF for b in packet.check)).pack(), reason=message.reason)
            on_control(message)

        receiving.receiver_session.on_control = spoil_one
        for _ in range(8):
            await asyncio.sleep(0.4)
            encoder.request_keyframe("test refresh", refresh=True)

    sending, receiving, shown = asyncio.run(loopback(
        tiny_model, tiny_model, clip, seconds=4.0, options=CallOptions(mode="neural", references=3),
        before_send=refreshes))
    tx, rx = sending.sender_session, receiving.receiver_session
    decoder = rx.decoder
    assert tx.stats.predicted_keyframes >= 3, tx.stats
    assert rx.stats.predicted_keyframes == tx.stats.predicted_keyframes == len(spoiled)
    # Every predicted refresh but the spoiled one built the sender's reference bytes.
    assert decoder.stats.predicted_keyframes == tx.stats.predicted_keyframes - 1
    assert rx.stats.keyframe_requests >= 1 and decoder.stats.unheld_reference >= 1
    assert tx.stats.keyframes > tx.stats.predicted_keyframes + 1  # the first, and the answer
    # The slots the sender warps from are the receiver's, frame for frame.
    held = decoder.held_references()
    for ref in tx.encoder.held_references:
        assert held.get(ref.slot) == ref.seq, (held, tx.encoder.held_references)
    assert rx.stats.rendered >= 50 and rx.stats.malformed == 1


def test_longer_audio_packets_mid_call_still_carry_every_frames_motion(tiny_model, clip, monkeypatch):
    """What the link adapter does on a slow link (sender/link_adapt.py: audio in 60 ms packets),
    forced here on loopback after 0.8 s: a third of the audio packets, the motion of 1.5 frames
    riding each as a bundle, every frame still rendered, and the peer still decodes the audio."""
    from sender import link_adapt

    monkeypatch.setattr(link_adapt, "SHORT_AUDIO_ABOVE_KBPS", float("inf"))  # loopback measures fast
    switched: dict[str, float] = {}

    async def longer_packets(sending: Call, receiving: Call) -> None:
        await asyncio.sleep(0.8)
        session = sending.sender_session
        while session.link is None:  # made once the stream starts
            await asyncio.sleep(0.01)
        session.link.state.audio_packet_ms = 60  # what a measured ~20 kbit/s link gives
        session.audio_encoder.set_packet_ms(60)
        await asyncio.sleep(0.1)  # the packet waiting at the switch leaves
        before = sending.motion_carrier.stats.audio_packets
        await asyncio.sleep(1.0)
        switched["audio_packets_in_1s"] = sending.motion_carrier.stats.audio_packets - before

    sending, receiving, shown = asyncio.run(loopback(
        tiny_model, tiny_model, clip, seconds=3.0, options=CallOptions(mode="neural"), audio=True,
        before_send=longer_packets))
    carrier, session = sending.motion_carrier, sending.sender_session
    assert sending.audio_encoder is session.audio_encoder and sending.audio_encoder.reopened == 1
    assert sending.audio_encoder.packet_ms == 60
    assert 11 <= switched["audio_packets_in_1s"] <= 22, switched  # 1000/60 ≈ 17 (50 at 20 ms)
    assert carrier.stats.bundles >= 5 and carrier.stats.carried >= 0.8 * session.stats.neural_frames, carrier.stats
    assert receiving.motion_reader.stats.carried == carrier.stats.carried
    rx = receiving.receiver_session
    assert rx.stats.rendered >= 0.8 * session.stats.neural_frames, rx.snapshot()
    assert receiving.motion_reader.stats.audio_packets >= 0.9 * carrier.stats.audio_packets


def test_a_transport_task_failing_after_hang_up_logs_no_traceback(caplog) -> None:
    """aiortc's SCTP flush can raise "not connected" once the peer's transport closed (seen at
    hang-up on a 300 ms link): the call command logs it at debug level; other errors still
    reach asyncio's default handler."""
    import asyncio
    import logging

    from rtc.peer import quiet_closed_transport_errors

    async def fail(exc: Exception) -> None:
        raise exc

    async def main() -> None:
        quiet_closed_transport_errors(asyncio.get_running_loop())
        for exc in (ConnectionError("Cannot send encrypted data, not connected"), ValueError("other")):
            task = asyncio.ensure_future(fail(exc))
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            del task  # never retrieved: the loop reports it when the task is collected
            import gc
            gc.collect()

    with caplog.at_level(logging.DEBUG):
        asyncio.run(main())
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "other" in str(errors[0].exc_info[1])
    assert any("after the connection closed" in r.getMessage() for r in caplog.records)


def test_a_call_whose_pictures_stop_says_so_and_goes_on(tiny_model, clip, monkeypatch, caplog):
    """The peer sends video but no picture comes (here every motion packet is lost, as when a
    link is too slow for video beside the audio): the call logs it once, records the stall in
    its report, and goes on; it never freezes silently."""
    import logging

    import app.call

    monkeypatch.setattr(app.call, "NO_PICTURE_S", 0.8)
    monkeypatch.setattr(app.call, "STATS_INTERVAL_S", 0.2)
    with caplog.at_level(logging.INFO, logger="facecodec.call"):
        sending, receiving, shown = asyncio.run(loopback(
            tiny_model, tiny_model, clip, seconds=2.5, options=CallOptions(mode="neural"),
            tap_motion=lambda data, original: None))
    assert shown == []
    assert len(receiving.picture_stalls) == 1 and receiving.picture_stalls[0][1] is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and r.name == "facecodec.call"]
    assert len(warnings) == 1 and warnings[0].startswith("no picture yet for 1 s"), warnings
    assert sending.picture_stalls == []  # A receives no video from B: nothing expected
