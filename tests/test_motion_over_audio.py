"""Motion on the audio RTP packets (rtc.motion_over_audio): the header extension bytes, its
SDP negotiation with a peer that knows it and one that does not, the carrier's hand-back to
the data channel, and the wire meter's labels."""

from __future__ import annotations

import asyncio
import struct
from types import SimpleNamespace

import pytest
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from aiortc.sdp import SessionDescription

from rtc.motion_over_audio import (
    AUDIO_GAP_S,
    MAX_WAIT_S,
    MOTION_EXTENSION_ID,
    MOTION_EXTENSION_URI,
    AudioExtension,
    AudioMotionCarrier,
    add_extension_element,
    negotiated_extension,
    read_extension_element,
)
from rtc.peer import new_peer_connection
from rtc.wire_meter import _sctp_label

AUDIO_SSRC = 0x1234ABCD


def _extension_map() -> HeaderExtensionsMap:
    parameters = RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
        RTCRtpHeaderExtensionParameters(id=2, uri="urn:ietf:params:rtp-hdrext:ssrc-audio-level")])
    extensions = HeaderExtensionsMap()
    extensions.configure(parameters)
    return extensions


def _audio_packet(*, with_extensions: bool = True, ssrc: int = AUDIO_SSRC) -> bytes:
    """An RTP packet as aiortc's audio sender builds it (mid and audio level extensions)."""
    packet = RtpPacket(payload_type=111, sequence_number=4242, timestamp=960_000, ssrc=ssrc)
    packet.payload = bytes(range(60))
    if with_extensions:
        packet.extensions.mid = "0"
        packet.extensions.audio_level = (False, 30)
    return packet.serialize(_extension_map())


@pytest.mark.parametrize("size", [1, 9, 16, 17, 40, 255])
def test_an_element_rides_along_and_aiortc_still_reads_the_packet(size):
    motion = bytes((7 * i + 3) % 256 for i in range(size))
    original = _audio_packet()
    carried = add_extension_element(original, MOTION_EXTENSION_ID, motion)
    assert read_extension_element(carried, MOTION_EXTENSION_ID) == motion
    # aiortc's own parser (the receiving RTCRtpReceiver) sees the same audio packet.
    before, after = RtpPacket.parse(original, _extension_map()), RtpPacket.parse(carried, _extension_map())
    assert after.payload == before.payload and after.sequence_number == before.sequence_number
    assert after.extensions.mid == "0" and after.extensions.audio_level == (False, 30)
    profile = struct.unpack_from("!H", carried, 12)[0]
    assert profile == (0xBEDE if size <= 16 else 0x1000)  # one-byte form while every element fits
    # What it costs: the element, its header byte(s), and the padding to 4 bytes; nothing else.
    assert len(carried) - len(original) <= size + (1 if size <= 16 else 2 + 2) + 3


def test_a_packet_without_extensions_gets_one():
    original = _audio_packet(with_extensions=False)
    assert not original[0] & 0x10
    carried = add_extension_element(original, MOTION_EXTENSION_ID, b"\x05motion")
    assert carried[0] & 0x10 and read_extension_element(carried, MOTION_EXTENSION_ID) == b"\x05motion"
    assert RtpPacket.parse(carried).payload == RtpPacket.parse(original).payload
    assert read_extension_element(original, MOTION_EXTENSION_ID) is None


@pytest.mark.parametrize("bad", [b"", b"\x80\x6f", bytes(12), _audio_packet()[:15], _audio_packet()[:18]])
def test_malformed_rtp_is_a_value_error(bad):
    with pytest.raises(ValueError):
        read_extension_element(bad, MOTION_EXTENSION_ID)
    with pytest.raises(ValueError):
        add_extension_element(bad, MOTION_EXTENSION_ID, b"x")


def test_an_element_must_fit():
    for value in (b"", bytes(256)):
        with pytest.raises(ValueError):
            add_extension_element(_audio_packet(), MOTION_EXTENSION_ID, value)


# ------------------------------------------------------------------------------ negotiation


def _audio_offer_lines(sdp: str) -> list[str]:
    return [line for line in sdp.splitlines() if MOTION_EXTENSION_URI in line]


async def _negotiate(strip_from_offer: bool):
    from aiortc import RTCSessionDescription
    from aiortc.mediastreams import AudioStreamTrack

    caller, callee = new_peer_connection(), new_peer_connection()
    caller.addTrack(AudioStreamTrack())
    caller.createDataChannel("control")
    await caller.setLocalDescription(await caller.createOffer())
    offer = caller.localDescription.sdp
    if strip_from_offer:  # a peer that does not know the extension (a browser) never offers it
        offer = "\r\n".join(line for line in offer.splitlines() if MOTION_EXTENSION_URI not in line) + "\r\n"
    await callee.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
    callee.addTrack(AudioStreamTrack())
    await callee.setLocalDescription(await callee.createAnswer())
    answer = callee.localDescription.sdp
    if not strip_from_offer:
        await caller.setRemoteDescription(callee.localDescription)
    result = (negotiated_extension(caller) if not strip_from_offer else None, negotiated_extension(callee),
              offer, answer)
    await caller.close()
    await callee.close()
    return result


def test_both_sides_negotiate_the_extension_on_audio():
    caller_side, callee_side, offer, answer = asyncio.run(_negotiate(strip_from_offer=False))
    assert _audio_offer_lines(offer) == [f"a=extmap:{MOTION_EXTENSION_ID} {MOTION_EXTENSION_URI}"]
    assert _audio_offer_lines(answer) == [f"a=extmap:{MOTION_EXTENSION_ID} {MOTION_EXTENSION_URI}"]
    assert caller_side is not None and callee_side is not None
    assert caller_side.extension_id == callee_side.extension_id == MOTION_EXTENSION_ID
    # each side's own audio SSRC is the other's remote one
    assert caller_side.local_ssrc == callee_side.remote_ssrc and caller_side.remote_ssrc == callee_side.local_ssrc
    media = next(m for m in SessionDescription.parse(offer).media if m.kind == "audio")
    assert caller_side.local_ssrc == media.ssrc[0].ssrc


def test_a_peer_that_does_not_know_it_gets_none_and_motion_stays_on_the_data_channel():
    _, callee_side, _, answer = asyncio.run(_negotiate(strip_from_offer=True))
    assert _audio_offer_lines(answer) == []  # the answer never adds what the offer lacked
    assert callee_side is None


# ------------------------------------------------------------------------------ the carrier


class _FakeDtls:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def _send_rtp(self, data: bytes) -> None:
        self.sent.append(data)


def _carrier():
    dtls = _FakeDtls()
    pc = SimpleNamespace(sctp=SimpleNamespace(transport=dtls))
    fell_back: list[bytes] = []
    carrier = AudioMotionCarrier(pc, AudioExtension(MOTION_EXTENSION_ID, AUDIO_SSRC, None), fell_back.append)
    return carrier, dtls, fell_back


def test_the_carrier_rides_only_while_audio_flows_and_hands_back_what_waits_too_long():
    async def scenario():
        carrier, dtls, fell_back = _carrier()
        assert not carrier.send(b"\x01early")  # no audio yet: the caller uses the data channel
        await dtls._send_rtp(_audio_packet())  # audio starts
        assert carrier.send(b"\x01one") and carrier.send(b"\x01two")
        await dtls._send_rtp(_audio_packet(ssrc=999))  # another stream (video) carries nothing
        await dtls._send_rtp(_audio_packet())
        assert read_extension_element(dtls.sent[-1], MOTION_EXTENSION_ID) == b"\x01one"
        await asyncio.sleep(MAX_WAIT_S + 0.05)  # no audio packet in time: "two" takes the data channel
        assert fell_back == [b"\x01two"]
        assert not carrier.send(bytes(300))  # too long for an element
        assert read_extension_element(dtls.sent[1], MOTION_EXTENSION_ID) is None
        assert carrier.stats.carried == 1 and carrier.stats.to_data_channel == 1
        assert carrier.stats.bytes_added == len(dtls.sent[-1]) - len(_audio_packet())
        await asyncio.sleep(AUDIO_GAP_S)
        assert not carrier.audio_flowing  # no audio for over AUDIO_GAP_S: muted or stalled
        assert not carrier.send(b"\x01muted")
        await dtls._send_rtp(_audio_packet())
        assert carrier.send(b"\x01three")
        carrier.detach()  # queued motion is never lost
        assert fell_back[-1] == b"\x01three" and "_send_rtp" not in dtls.__dict__

    asyncio.run(scenario())


def test_the_meter_labels_sctp_chunks_by_channel():
    common = bytes(12)
    data_chunk = bytes([0, 3]) + struct.pack("!H", 20) + struct.pack("!IHHI", 1, 3, 0, 53) + b"mo"
    assert _sctp_label(common + data_chunk, {1: "control", 3: "motion"}) == "motion"
    assert _sctp_label(common + bytes([3, 0, 0, 16]) + bytes(12), {3: "motion"}) == "sctp"  # a SACK
    assert _sctp_label(common + data_chunk, {}) == "stream 3"


@pytest.mark.parametrize("size", [1, 3, 4, 8, 9, 12, 16, 17, 20, 64, 255])
def test_the_codecs_wire_estimate_is_what_the_carrier_adds(size):
    """rtc.wire_cost's estimate (used by the rd benchmark) against the real element in an aiortc
    audio packet; the benchmark may run without aiortc, so the arithmetic lives there on its own."""
    from rtc.wire_cost import motion_on_audio_wire_bytes

    original = _audio_packet()
    carried = add_extension_element(original, MOTION_EXTENSION_ID, bytes(range(size)))
    assert motion_on_audio_wire_bytes(size) == len(carried) - len(original)


def test_with_as_many_audio_as_motion_packets_a_backlog_leaves_as_one_bundle():
    """40 ms audio packets (a slow link) and 25 fps motion: two waiting packets ride the next
    audio packet together where the peer reads bundles, so none waits behind every later one."""
    from rtc.motion_bundle import split_bundle

    async def scenario():
        carrier, dtls, fell_back = _carrier()
        await dtls._send_rtp(_audio_packet())
        assert carrier.send(b"\x01one") and carrier.send(b"\x01two")
        await dtls._send_rtp(_audio_packet())  # a peer without bundles: one a packet
        assert read_extension_element(dtls.sent[-1], MOTION_EXTENSION_ID) == b"\x01one"
        carrier.bundles = True
        assert carrier.send(b"\x01three")
        await dtls._send_rtp(_audio_packet())
        value = read_extension_element(dtls.sent[-1], MOTION_EXTENSION_ID)
        assert split_bundle(value) == [b"\x01two", b"\x01three"]
        assert carrier.send(b"\x01four")
        await dtls._send_rtp(_audio_packet())  # alone: no bundle
        assert read_extension_element(dtls.sent[-1], MOTION_EXTENSION_ID) == b"\x01four"
        # A bundle never outgrows an element: what does not fit waits for the next packet.
        for i in range(3):
            assert carrier.send(bytes([1]) + bytes(120))
        await dtls._send_rtp(_audio_packet())
        assert len(split_bundle(read_extension_element(dtls.sent[-1], MOTION_EXTENSION_ID))) == 2
        await dtls._send_rtp(_audio_packet())
        assert read_extension_element(dtls.sent[-1], MOTION_EXTENSION_ID) == bytes([1]) + bytes(120)
        assert carrier.stats.carried == 7 and carrier.stats.bundles == 2 and not fell_back
        carrier.detach()

    asyncio.run(scenario())


def test_longer_audio_packets_let_motion_wait_longer_for_one():
    async def scenario():
        carrier, dtls, fell_back = _carrier()
        await dtls._send_rtp(_audio_packet())
        await asyncio.sleep(0.06)  # 60 ms audio packets (a slow link)
        await dtls._send_rtp(_audio_packet())
        assert carrier.max_wait_s >= 1.5 * 0.06 - 0.005
        assert carrier.send(b"\x01one")
        await asyncio.sleep(0.065)  # past MAX_WAIT_S, within one and a half audio intervals
        assert not fell_back
        await dtls._send_rtp(_audio_packet())
        assert read_extension_element(dtls.sent[-1], MOTION_EXTENSION_ID) == b"\x01one"
        carrier.detach()

    asyncio.run(scenario())


def test_a_packet_right_behind_an_audio_bundle_does_not_overtake_its_frames(tiny_model) -> None:
    """A bundle on the audio packets is late frames catching up, and the next audio packet
    follows 20-60 ms later: the receiver spreads the bundle's frames 1/fps apart, and the next
    packet must queue behind them, or its compact form (numbered as predecessor + 1) is
    dropped unnumbered and the picture freezes until an intra packet."""
    from codec.api import Encoder
    from codec.bitstream.control import StreamStart
    from receiver.session import ReceiverSession
    from rtc.motion_bundle import pack_bundle
    from sender.sources import default_source

    encoder = Encoder(tiny_model)
    packets = []
    for frame in default_source(num_frames=5, size=(tiny_model.image_size,) * 2):
        packets.extend(encoder.encode(frame))
    keyframe, motion = packets[0], packets[1:]
    assert len(motion) == 5
    receiver = ReceiverSession(tiny_model, show=lambda image, t: None, send_control=lambda m: None,
                               live=False)
    try:
        receiver.on_control(StreamStart(header=encoder.header(), clock=0.0, fps=25.0))
        receiver._enqueue(keyframe)
        receiver.on_motion(motion[0])
        receiver.on_motion(pack_bundle(motion[1:4]))  # frames 1-3: 2 and 3 wait 40 and 80 ms
        receiver.on_motion(motion[4])  # the next audio packet, at once
        assert receiver.wait_idle(10.0)
        assert receiver.decoder.stats.missing_reference == 0
        assert receiver.stats.rendered == 5
    finally:
        receiver.close()
