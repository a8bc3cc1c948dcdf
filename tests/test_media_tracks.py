"""The sender's media tracks: low-rate H.264 (encoder, decoder, aiortc track), PCM audio,
and the typed errors of a machine without microphone or camera."""

from __future__ import annotations

import asyncio
import threading
import time
from fractions import Fraction

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from codec.errors import CodecError, MediaError
from codec.media.h264 import H264Decoder, H264Encoder, split_annexb
from sender.media_tracks import (
    AUDIO_FRAME_SAMPLES,
    H264Track,
    PcmAudioTrack,
    follow_receiver_feedback,
)
from sender.microphone import microphone_track
from sender.sources import CameraSource, default_source

SIZE = (256, 256)
FPS = 25.0


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    """10 s of the moving default clip at 256×256, 25 fps."""
    return list(default_source(num_frames=250, fps=FPS, size=SIZE))


def nal_types(data: bytes) -> list[int]:
    return [unit[0] & 0x1F for unit in split_annexb(data)]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def run_async(coro, timeout: float):
    """Run a coroutine with an overall limit, so nothing can hang the suite."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


# ---------------------------------------------------------------------------- encoder


def test_split_annexb_handles_3_and_4_byte_start_codes():
    data = b"\x00\x00\x00\x01\x67AB" + b"\x00\x00\x01\x68C" + b"\x00\x00\x00\x01\x65DEF\x00"
    assert split_annexb(data) == [b"\x67AB", b"\x68C", b"\x65DEF\x00"]


@pytest.mark.parametrize("target_kbps", [10.0, 30.0, 60.0])
def test_encoder_hits_its_target_rate(clip, target_kbps):
    encoder = H264Encoder(SIZE, FPS, target_kbps)
    total = sum(len(data) for frame in clip for data in encoder.encode(frame))
    measured = total * 8 / (len(clip) / FPS) / 1000
    print(f"H.264 {SIZE[0]}×{SIZE[1]} {FPS:g} fps: target {target_kbps:g}, measured {measured:.2f} kbit/s")
    assert 0.6 * target_kbps <= measured <= 1.4 * target_kbps


def test_rate_follows_the_target(clip):
    rates = []
    for target in (20.0, 60.0):
        encoder = H264Encoder(SIZE, FPS, target)
        rates.append(sum(len(d) for f in clip[:100] for d in encoder.encode(f)))
    assert rates[1] > 1.8 * rates[0]


def test_decoder_decodes_every_packet_at_the_right_size(clip):
    encoder, decoder = H264Encoder(SIZE, FPS, 30.0), H264Decoder()
    qualities = []
    for frame in clip[:50]:
        packets = encoder.encode(frame)
        assert len(packets) == 1  # zerolatency: one frame in, one frame out
        images = decoder.decode(packets[0])
        assert len(images) == 1
        assert images[0].shape == (SIZE[1], SIZE[0], 3) and images[0].dtype == np.uint8
        qualities.append(psnr(images[0], frame))
    assert decoder.flush() == []
    assert decoder.frames_decoded == 50
    assert np.mean(qualities) > 18.0, qualities  # a picture of the clip, not noise


def test_keyframe_request_yields_an_idr_a_late_joiner_can_start_from(clip):
    encoder = H264Encoder(SIZE, FPS, 30.0)
    units = []
    for i, frame in enumerate(clip[:20]):
        if i == 12:
            encoder.request_keyframe()
        units += encoder.encode_units(frame)
    keyframes = [i for i, unit in enumerate(units) if unit.keyframe]
    assert keyframes == [0, 12]
    for i, unit in enumerate(units):
        types = nal_types(unit.data)
        if i in keyframes:
            assert types[:3] == [7, 8, 5]  # SPS, PPS repeated before every IDR
        else:
            assert 5 not in types and 7 not in types
        assert 6 not in types  # x264's version SEI is stripped
    late = H264Decoder()
    images = [image for unit in units[12:] for image in late.decode(unit.data)]
    assert len(images) == 8
    assert [u.pts for u in units] == [round(i * 90_000 / FPS) for i in range(20)]


def test_sei_kept_when_asked(clip):
    encoder = H264Encoder(SIZE, FPS, 30.0, strip_sei=False)
    first = encoder.encode(clip[0])[0]
    assert 6 in nal_types(first)


def test_encoder_rejects_bad_input(clip):
    encoder = H264Encoder(SIZE, FPS, 30.0)
    with pytest.raises(ValueError):
        encoder.encode(clip[0][:128])
    encoder.encode(clip[0], pts=1000)
    with pytest.raises(ValueError):
        encoder.encode(clip[1], pts=1000)
    with pytest.raises(ValueError):
        H264Encoder((255, 256))
    with pytest.raises(MediaError):
        H264Encoder(SIZE, preset="no-such-preset")


def test_decoder_raises_a_typed_error_on_garbage():
    decoder = H264Decoder()
    with pytest.raises(MediaError):
        for _ in range(3):
            decoder.decode(b"\x00\x00\x00\x01\x67" + bytes(range(256)) * 4)


# ---------------------------------------------------------------------------- the track


def test_track_returns_packets_with_90khz_pts(clip):
    async def scenario() -> list[av.Packet]:
        track = H264Track(SIZE, FPS, 30.0, queue_size=8)
        start = 100.0  # any clock: pts count from the first pushed frame
        for i in range(6):
            track.push(clip[i], start + i / FPS)
        packets = [await asyncio.wait_for(track.recv(), 5) for _ in range(6)]
        assert track.stats.frames_in == 6 and track.stats.frames_encoded == 6
        assert track.stats.frames_dropped == 0 and track.stats.keyframes == 1
        assert track.stats.bytes == sum(p.size for p in packets)
        return packets

    packets = run_async(scenario(), 20)
    assert all(isinstance(p, av.Packet) for p in packets)
    assert all(p.time_base == Fraction(1, 90_000) for p in packets)
    assert [p.pts for p in packets] == [i * 3600 for i in range(6)]
    assert [p.is_keyframe for p in packets] == [True] + [False] * 5


def test_track_queue_drops_the_oldest_when_full(clip):
    async def scenario() -> list[int]:
        track = H264Track(SIZE, FPS, 30.0, queue_size=2)
        for i in range(5):
            track.push(clip[i], i * 1.0)
        assert track.stats.frames_dropped == 3 and track.queued == 2
        return [(await asyncio.wait_for(track.recv(), 5)).pts for _ in range(2)]

    # frames at t = 3 s and 4 s survive (pts counts from the first pushed frame)
    assert run_async(scenario(), 20) == [3 * 90_000, 4 * 90_000]


def test_track_waits_for_a_frame_pushed_from_another_thread(clip):
    async def scenario() -> av.Packet:
        track = H264Track(SIZE, FPS, 30.0)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(track.recv(), 0.2)
        timer = threading.Timer(0.1, track.push, args=(clip[0], 0.0))
        timer.start()
        try:
            return await asyncio.wait_for(track.recv(), 5)
        finally:
            timer.cancel()

    assert run_async(scenario(), 20).is_keyframe


def test_track_keyframe_request_and_stop(clip):
    async def scenario() -> None:
        track = H264Track(SIZE, FPS, 30.0, queue_size=4)
        for i in range(3):
            track.push(clip[i], i / FPS)
        flags = [(await asyncio.wait_for(track.recv(), 5)).is_keyframe for _ in range(2)]
        track.request_keyframe()
        flags.append((await asyncio.wait_for(track.recv(), 5)).is_keyframe)
        assert flags == [True, False, True]
        assert track.stats.keyframes == 2
        waiting = asyncio.ensure_future(track.recv())
        await asyncio.sleep(0.05)
        track.stop()
        with pytest.raises(MediaStreamError):
            await asyncio.wait_for(waiting, 5)
        with pytest.raises(MediaStreamError):
            await asyncio.wait_for(track.recv(), 5)

    run_async(scenario(), 20)


def _loopback_host_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    # aioice skips 127.0.0.1 when it gathers host candidates; use it alone, so the test
    # neither depends on nor leaks onto the machine's other interfaces
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


def test_aiortc_loopback_delivers_h264_frames_and_pli(clip, monkeypatch):
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender

    _loopback_host_addresses(monkeypatch)

    async def scenario() -> None:
        sender_pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        receiver_pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        track = H264Track(SIZE, FPS, 30.0, queue_size=2)
        remote: asyncio.Future = asyncio.get_running_loop().create_future()
        receiver_pc.on("track", lambda t: remote.done() or remote.set_result(t))
        transceiver = sender_pc.addTransceiver(track, direction="sendonly")
        h264 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/H264"]
        transceiver.setCodecPreferences(h264)

        stop_pushing = asyncio.Event()

        async def push_frames() -> None:
            start = time.monotonic()
            i = 0
            while not stop_pushing.is_set():
                track.push(clip[i % len(clip)], time.monotonic() - start)
                i += 1
                await asyncio.sleep(1 / FPS)

        pusher = asyncio.ensure_future(push_frames())
        try:
            await sender_pc.setLocalDescription(await sender_pc.createOffer())
            await receiver_pc.setRemoteDescription(sender_pc.localDescription)
            await receiver_pc.setLocalDescription(await receiver_pc.createAnswer())
            await sender_pc.setRemoteDescription(receiver_pc.localDescription)
            assert "H264" in sender_pc.remoteDescription.sdp
            try:
                incoming = await asyncio.wait_for(remote, 10)
                frames = [await asyncio.wait_for(incoming.recv(), 10) for _ in range(10)]
            except TimeoutError:
                # ICE is pinned to 127.0.0.1: not connecting is a regression, not the environment
                pytest.fail(f"loopback call did not connect (ICE state {sender_pc.iceConnectionState}, "
                            f"connection {sender_pc.connectionState})")
            assert all((f.width, f.height) == SIZE for f in frames)
            times = [f.time for f in frames]
            assert times == sorted(times) and times[-1] > times[0]
            assert track.stats.keyframes == 1

            # a PLI from the receiver: aiortc 1.16 does not tell a packet track...
            sender = transceiver.sender
            rtp_receiver = receiver_pc.getReceivers()[0]
            await asyncio.wait_for(rtp_receiver._send_rtcp_pli(sender._ssrc), 5)
            await asyncio.sleep(0.5)
            assert track.stats.keyframes == 1, "aiortc now forwards PLI: follow_receiver_feedback is moot"
            # ...but follow_receiver_feedback does
            follow_receiver_feedback(sender, track)
            await asyncio.wait_for(rtp_receiver._send_rtcp_pli(sender._ssrc), 5)
            deadline = time.monotonic() + 5
            while track.stats.keyframes < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert track.stats.keyframes == 2
            frame = await asyncio.wait_for(incoming.recv(), 10)
            assert (frame.width, frame.height) == SIZE
        finally:
            stop_pushing.set()
            await asyncio.wait_for(pusher, 5)
            await asyncio.wait_for(sender_pc.close(), 10)
            await asyncio.wait_for(receiver_pc.close(), 10)

    run_async(scenario(), 60)


# ---------------------------------------------------------------------------- audio


def test_pcm_track_frames_pts_and_silence_after_the_end():
    pcm = np.linspace(-0.5, 0.5, 3 * AUDIO_FRAME_SAMPLES + 100, dtype=np.float32)

    async def scenario() -> list[av.AudioFrame]:
        track = PcmAudioTrack(pcm, paced=False)
        frames = [await asyncio.wait_for(track.recv(), 2) for _ in range(6)]
        assert track.finished
        return frames

    frames = run_async(scenario(), 10)
    assert all(f.samples == AUDIO_FRAME_SAMPLES for f in frames)
    assert all(f.format.name == "s16" and f.layout.name == "mono" and f.sample_rate == 48_000 for f in frames)
    assert [f.pts for f in frames] == [i * AUDIO_FRAME_SAMPLES for i in range(6)]
    assert all(f.time_base == Fraction(1, 48_000) for f in frames)
    played = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
    expected = np.round(pcm * 32767).astype(np.int16)
    np.testing.assert_array_equal(played[: len(pcm)], expected)
    assert not played[len(pcm) :].any()  # silence after the end


def test_pcm_track_loops():
    pcm = np.full(AUDIO_FRAME_SAMPLES + 10, 0.25, np.float32)
    pcm[0] = -0.25  # marks each pass's start

    async def scenario() -> np.ndarray:
        track = PcmAudioTrack(pcm, loop=True, paced=False)
        frames = [await asyncio.wait_for(track.recv(), 2) for _ in range(3)]
        assert not track.finished
        return np.concatenate([f.to_ndarray().reshape(-1) for f in frames])

    played = run_async(scenario(), 10)
    starts = np.flatnonzero(played < 0)
    assert list(starts) == [0, len(pcm), 2 * len(pcm)]
    assert (played != 0).all()


def test_pcm_track_is_paced_in_real_time():
    async def scenario() -> float:
        track = PcmAudioTrack(np.zeros(48_000, np.float32))
        begin = time.monotonic()
        for _ in range(11):
            await asyncio.wait_for(track.recv(), 2)
        return time.monotonic() - begin

    elapsed = run_async(scenario(), 10)
    assert 0.18 <= elapsed < 1.0  # 10 frames after the first, 20 ms each


def test_pcm_track_from_file(tmp_path):
    from codec.media import encode_pcm_opus, frames_to_video
    from sender.sources import default_audio

    frames = [np.full((64, 64, 3), 100, np.uint8)] * 25
    silent = tmp_path / "silent.mp4"
    frames_to_video(silent, frames, fps=25)
    with pytest.raises(MediaError, match="no audio"):
        PcmAudioTrack.from_file(silent)
    with pytest.raises(MediaError, match="no such file"):
        PcmAudioTrack.from_file(tmp_path / "missing.mp4")

    voiced = tmp_path / "voiced.mp4"
    frames_to_video(voiced, frames, fps=25, audio=encode_pcm_opus(default_audio(1.0)))
    track = PcmAudioTrack.from_file(voiced, loop=True)
    assert track.loop and abs(track.duration - 1.0) < 0.05

    async def first_frames() -> np.ndarray:
        frames = [await asyncio.wait_for(track.recv(), 2) for _ in range(10)]
        return np.concatenate([frame.to_ndarray() for frame in frames], axis=1)

    assert np.abs(run_async(first_frames(), 10)).max() > 1000  # the tone, not silence


# ---------------------------------------------------------------------------- devices


def test_microphone_track_raises_a_typed_error_without_a_microphone():
    try:
        track = microphone_track()
    except MediaError as exc:
        assert isinstance(exc, CodecError)
        assert "no microphone available" in str(exc)
    else:  # a machine with a microphone: it must give an audio track
        assert track.kind == "audio"
        track.stop()
    with pytest.raises(MediaError, match="no microphone"):
        microphone_track("alsa:no-such-device-here")


def test_camera_source_raises_a_typed_error(tmp_path):
    with pytest.raises(MediaError, match="no such camera device"):
        CameraSource(str(tmp_path / "video0"))
    not_a_camera = tmp_path / "video1"
    not_a_camera.write_bytes(b"\0" * 64)
    with pytest.raises(MediaError, match="cannot open"):
        CameraSource(str(not_a_camera))


# ---------------------------------------------------------------- following the link (H.264)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    import sender.media_tracks as media_tracks

    fake = FakeClock()
    monkeypatch.setattr(media_tracks, "time", fake)
    return fake


def _sending(track: H264Track, clock: FakeClock, kbps: float, seconds: float = 3.0) -> None:
    """As if ``track`` had handed aiortc ``kbps`` of payload for ``seconds`` (25 frames a second)."""
    clock.now += seconds
    frames = int(seconds * FPS)
    for k in range(frames):
        track._sent.append((clock.now - seconds + k / FPS, int(kbps * 1000 / 8 / FPS)))


def test_h264_plan_fits_the_link_with_its_packet_headers():
    from sender.media_tracks import MIN_FRAME_BYTES, h264_plan, header_kbps

    # 25 frames a second of headers alone are 12.4 kbit/s: a 20 kbit/s link gets every 2nd frame.
    kbps, every = h264_plan(20.0, 30.0, 25.0)
    assert every == 2 and kbps + header_kbps(12.5) <= 0.9 * 20.0 + 1e-9
    assert kbps * 1000 / 8 / 12.5 >= MIN_FRAME_BYTES
    assert h264_plan(100.0, 30.0, 25.0) == (30.0, 1)  # never above the call's rate
    assert h264_plan(10.0, 30.0, 25.0)[1] == 5
    assert h264_plan(0.0, 30.0, 25.0)[1] == 5  # nothing measured: the least it sends, still sending
    plans = [h264_plan(link, 30.0, 25.0) for link in np.linspace(0, 200, 81)]
    frames = [25.0 / every for _, every in plans]
    assert frames == sorted(frames)  # more link, never fewer frames


def test_h264_track_starts_with_as_few_frames_as_its_rate_gives_room(clip):
    assert H264Track(SIZE, FPS, 30.0)._every == 1
    track = H264Track(SIZE, FPS, 12.0)  # 60 bytes a frame at 25 fps: every 2nd frame
    assert track._every == 2 and track.encoder.fps == FPS / 2
    for i in range(6):
        track.push(clip[i], i / FPS)
    assert track.stats.frames_in == 3 and track.stats.frames_thinned == 3


def test_h264_track_follows_a_full_link_down_and_probes_back_up(clip, clock):
    track = H264Track(SIZE, FPS, 30.0)
    _sending(track, clock, 30.0)
    track.follow_link(29_000.0)  # what it sent: the receiver's estimate starts there
    assert track.bitrate_kbps == 30.0 and track._every == 1 and not track.stats.rate_changes
    track.follow_link(8_000.0)  # well under what it sent: the packets queue
    from sender.media_tracks import h264_plan, header_kbps

    # The link: the 8 kbit/s of payload that crossed, with the 25 frames' headers that came with it.
    assert (track.bitrate_kbps, track._every) == h264_plan(8.0 + header_kbps(FPS), 30.0, FPS)
    assert track.bitrate_kbps < 15.0 and track._every == 2
    assert len(track.stats.rate_changes) == 1
    low = track.bitrate_kbps
    clock.now += 0.5
    track.follow_loss(0.3)  # reports of the rate before the fall: ignored a while
    assert track.bitrate_kbps == low
    # No congestion for RAISE_INTERVAL_S: the rate climbs back, one step at a time.
    from sender.media_tracks import RAISE_INTERVAL_S

    for _ in range(12):
        clock.now += RAISE_INTERVAL_S + 0.1
        track._probe_up()
    assert track.bitrate_kbps == 30.0 and track._every == 1
    changes = [kbps for _, kbps, _ in track.stats.rate_changes]
    assert changes[-1] == 30.0 and len(changes) >= 3


def test_h264_track_lowers_on_heavy_loss_only(clock):
    track = H264Track(SIZE, FPS, 30.0)
    _sending(track, clock, 30.0)
    track.follow_loss(0.05)  # random loss on a fast link: no reason to send less
    assert track.bitrate_kbps == 30.0
    for bad in (float("nan"), float("inf"), -0.1, None, "x"):
        track.follow_loss(bad)  # type: ignore[arg-type]
        track.follow_link(bad)  # type: ignore[arg-type]
    track.follow_loss(1.5)  # not a share
    assert track.bitrate_kbps == 30.0 and not track.stats.rate_changes
    track.follow_loss(0.4)
    assert track.bitrate_kbps < 30.0


def test_h264_track_reopens_its_encoder_at_the_new_rate_with_an_idr(clip, clock):
    async def scenario() -> list[bool]:
        track = H264Track(SIZE, FPS, 30.0, queue_size=8)
        flags = []
        for i in range(3):
            track.push(clip[i], i / FPS)
            flags.append((await asyncio.wait_for(track.recv(), 5)).is_keyframe)
        _sending(track, clock, 30.0)
        track.follow_link(6_000.0)
        every = track._every
        for i in range(3, 3 + 2 * every):
            track.push(clip[i], i / FPS)
        flags.append((await asyncio.wait_for(track.recv(), 5)).is_keyframe)
        assert track.encoder.bitrate_kbps == track.bitrate_kbps < 30.0
        assert track.encoder.fps == FPS / every
        return flags

    assert run_async(scenario(), 20) == [True, False, False, True]


def test_rtcp_remb_and_receiver_reports_reach_the_track(clock):
    from aiortc.rtp import (
        RTCP_PSFB_APP,
        RTCP_PSFB_PLI,
        RtcpPsfbPacket,
        RtcpReceiverInfo,
        RtcpRrPacket,
        pack_remb_fci,
    )

    handled = []

    class FakeSender:
        _ssrc = 1234

        def _send_keyframe(self) -> None:
            handled.append("keyframe")

        async def _handle_rtcp_packet(self, packet) -> None:
            handled.append(type(packet).__name__)

        async def _retransmit(self, sequence_number: int) -> None:
            handled.append(sequence_number)

    track = H264Track(SIZE, FPS, 30.0)
    _sending(track, clock, 30.0)
    sender = FakeSender()
    follow_receiver_feedback(sender, track)

    def report(ssrc: int, lost: float) -> RtcpRrPacket:
        return RtcpRrPacket(ssrc=1, reports=[RtcpReceiverInfo(
            ssrc=ssrc, fraction_lost=int(lost * 256), packets_lost=0, highest_sequence=0,
            jitter=0, lsr=0, dlsr=0)])

    async def scenario() -> None:
        await sender._handle_rtcp_packet(report(999, 0.5))  # another stream's losses
        assert track.bitrate_kbps == 30.0
        await sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0,
                                                        fci=b"not a REMB at all"))
        await sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0,
                                                        fci=pack_remb_fci(50_000, [999])))
        assert track.bitrate_kbps == 30.0 and track.stats.estimates == []
        await sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0,
                                                        fci=pack_remb_fci(8_000, [1234])))
        assert track.stats.estimates and track.bitrate_kbps < 30.0
        clock.now += 10.0
        low = track.bitrate_kbps
        await sender._handle_rtcp_packet(report(1234, 0.5))
        await sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=1234))

        # NACKs: resent up to half the frames sent in the last second (25 here), no more.
        _sending(track, clock, 30.0, seconds=1.0)
        for seq in range(100):
            await sender._retransmit(seq)

    run_async(scenario(), 10)
    assert handled.count("RtcpPsfbPacket") == 4 and handled.count("RtcpRrPacket") == 2  # aiortc still sees all
    assert track._link_kbps is not None
    resent = [item for item in handled if isinstance(item, int)]
    assert resent == list(range(13))
    assert track.stats.retransmitted == len(resent) and track.stats.retransmits_refused == 100 - len(resent)


def test_video_receivers_give_up_on_a_lost_packet_after_a_second():
    from aiortc import RTCRtpReceiver
    from aiortc.rtp import RtpPacket

    from rtc.peer import MAX_HOLE_S, HoleBoundedJitterBuffer, resync_video_sooner

    class Transport:  # what RTCRtpReceiver needs of a DTLS transport to be made
        state = "new"

        def _register_rtp_receiver(self, *args) -> None:
            pass

    receiver = RTCRtpReceiver("video", Transport())
    buffer = resync_video_sooner(receiver)
    assert receiver._RTCRtpReceiver__jitter_buffer is buffer and isinstance(buffer, HoleBoundedJitterBuffer)
    with pytest.raises(ValueError):
        resync_video_sooner(RTCRtpReceiver("audio", Transport()))

    def run(lost: set[int], frames: int = 40, packets_per_frame: int = 2) -> tuple[list[int], list[float]]:
        """5 frames a second of ``packets_per_frame`` packets; ``lost`` sequence numbers never come."""
        now = [0.0]
        jitter = HoleBoundedJitterBuffer(clock=lambda: now[0])
        shown, plis = [], []
        for seq in range(frames * packets_per_frame):
            now[0] = seq // packets_per_frame * 0.2
            if seq in lost:
                continue
            packet = RtpPacket(sequence_number=seq, timestamp=seq // packets_per_frame * 18_000, payload=b"x")
            packet._data = b"x"  # the depacketized payload, which aiortc's receiver sets
            pli, frame = jitter.add(packet)
            if frame is not None:
                shown.append(frame.timestamp // 18_000)
            if pli:
                plis.append(now[0])
        return shown, plis

    shown, plis = run(set())
    assert shown == list(range(39)) and plis == []  # nothing lost: every frame, in order
    # The second packet of frame 3 is lost for good (at 0.6 s): frames wait behind it from 0.8 s;
    # MAX_HOLE_S later everything before the newest frame is dropped (those frames predict
    # from the lost picture) with one keyframe request, and frames flow again, one a frame.
    # aiortc's own buffer would wait 512 packets (over 50 s here).
    shown, plis = run({7})
    assert plis == [pytest.approx(0.8 + MAX_HOLE_S)]
    resumed = int(round((0.8 + MAX_HOLE_S) / 0.2))
    assert shown == [0, 1, 2] + list(range(resumed, 39))
    # The first packet of frame 5 lost: frame 4 waits too (a frame is handed on when the next
    # one's first packet follows it), and both go with the hole.
    shown, plis = run({10})
    assert plis == [pytest.approx(1.0 + MAX_HOLE_S)]
    assert shown == [0, 1, 2, 3] + list(range(int(round((1.0 + MAX_HOLE_S) / 0.2)), 39))


def test_h264_track_spaces_keyframes_answering_requests(clip, clock):
    async def scenario() -> list[bool]:
        track = H264Track(SIZE, FPS, 30.0, queue_size=8)
        flags = []

        async def frame(i: int) -> None:
            track.push(clip[i], i / FPS)
            flags.append((await asyncio.wait_for(track.recv(), 5)).is_keyframe)

        await frame(0)
        track.request_keyframe()  # the first request: at once
        await frame(1)
        track.request_keyframe()  # another right after: waits for KEYFRAME_SHARE of the rate
        await frame(2)
        await frame(3)
        at, nbytes = track._last_requested
        from sender.media_tracks import KEYFRAME_SHARE

        clock.now = at + 8.0 * nbytes / (KEYFRAME_SHARE * track.bitrate_kbps * 1000.0) + 0.01
        await frame(4)  # the deferred request goes now
        await frame(5)
        return flags

    assert run_async(scenario(), 20) == [True, True, False, False, True, False]


def test_in_h264_mode_the_audio_packets_follow_the_h264_link():
    """An H.264 call on a slow link: the track's rate control read the link (REMB, loss), and
    the audio goes in longer packets for it, logged; a fast link brings 20 ms back."""
    from rtc.opus_encoder import LinkOpusEncoder
    from sender.session import SenderSession

    track = H264Track((64, 64), fps=25.0, bitrate_kbps=100.0)
    session = SenderSession(iter([]), fps=25.0, encoder=None, cropper=None, h264_track=track, mode="h264")
    session.audio_encoder = LinkOpusEncoder(12)
    session._adapt()
    assert session.audio_encoder.packet_ms == 20  # nothing has limited the link
    track._link_kbps = 15.0  # as a REMB under what was sent sets it (follow_link)
    session._adapt()
    assert session.audio_encoder.packet_ms == 40  # a peer that does not read motion bundles
    session.peer_takes_bundles = True
    session._adapt()
    assert session.audio_encoder.packet_ms == 60
    track._link_kbps = 300.0
    session._adapt()
    assert session.audio_encoder.packet_ms == 20
    assert [what for _, what, _ in session.stats.adaptations] == [
        "audio in 40 ms packets", "audio in 60 ms packets", "audio in 20 ms packets"]
    track.stop()


def test_held_track_drops_what_comes_before_ready_and_passes_the_rest():
    """Audio waits for the call's data channels (app.call): the frames before are read and
    dropped, so a live source queues nothing that would play late."""
    import asyncio

    from aiortc import MediaStreamTrack

    from sender.media_tracks import HeldTrack

    class Numbers(MediaStreamTrack):
        kind = "audio"

        def __init__(self, ready: asyncio.Event) -> None:
            super().__init__()
            self.sent, self.ready = 0, ready

        async def recv(self):
            self.sent += 1
            if self.sent == 3:
                self.ready.set()  # the channels open while the third frame is read
            return self.sent

    async def main():
        ready = asyncio.Event()
        source = Numbers(ready)
        held = HeldTrack(source, ready)
        assert held.kind == "audio"
        frames = [await held.recv(), await held.recv()]
        held.stop()
        return frames, held.dropped, source.readyState

    frames, dropped, state = asyncio.run(main())
    assert frames == [3, 4] and dropped == 2 and state == "ended"
