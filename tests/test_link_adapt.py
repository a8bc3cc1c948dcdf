"""The sender's link adaptation (sender/link_adapt.py) and the motion bundles it sends on a
slow link without audio (rtc/motion_bundle.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codec.errors import BitstreamError
from rtc.motion_bundle import MAX_BUNDLE_PACKETS, pack_bundle, split_bundle
from sender.link_adapt import (
    BURST_BYTES,
    FIRST_KEYFRAME_BYTES,
    MOTION_PACKET_BYTES,
    PROBE_KEYFRAME_BYTES,
    UNMEASURED_BUNDLE,
    LinkAdapter,
    motion_kbps,
    quality_for_bytes,
    wire_bytes,
)


@settings(deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=MAX_BUNDLE_PACKETS))
def test_bundles_round_trip(packets):
    assert split_bundle(pack_bundle(packets)) == packets


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=64))
def test_malformed_bundles_raise_the_typed_error(data):
    try:
        packets = split_bundle(b"\x7e" + data)
    except BitstreamError:
        return
    assert 1 <= len(packets) <= MAX_BUNDLE_PACKETS and all(packets)


def test_a_bundle_is_never_a_frame_packet():
    from codec.bitstream import parse_packet

    with pytest.raises(BitstreamError):
        parse_packet(pack_bundle([b"\x80\x01", b"\x81\x01"]))


def test_keyframe_quality_follows_the_byte_budget():
    # AV1 q66 gave 4000 bytes: half the budget needs a lower quality, never above the default.
    lower = quality_for_bytes("av1", 66, 4000, 2000, 66)
    assert lower < 66
    assert quality_for_bytes("av1", 66, 4000, 1000, 66) < lower
    assert quality_for_bytes("av1", 40, 1000, 100_000, 66) == 66
    assert quality_for_bytes("webp", 90, 6000, 3000, 90) < 90


def _report(adapter: LinkAdapter, seq: int, nbytes: int, quality: int, transfer_s: float,
            ahead: int = 0) -> bool:
    adapter.keyframe_sent(seq, nbytes, quality, ahead_bytes=ahead)
    arrival = adapter._sent[seq][0] + transfer_s
    return adapter.on_peer_stats({"keyframe_seq": seq, "keyframe_arrival": arrival}, rtt_s=0.0)


def test_a_slow_link_gets_small_keyframes_no_patches_and_bundled_motion():
    adapter = LinkAdapter(codec="av1", default_quality=66)
    assert adapter.state.keyframe_budget == FIRST_KEYFRAME_BYTES  # nothing measured yet: cheap
    first = adapter.keyframe_quality()
    assert first < 66
    # 2500 bytes (2782 on the wire, the first 1200 of them on a shaper's burst) in 0.63 s: 20 kbit/s.
    assert not _report(adapter, 0, 2500, first, 8 * (wire_bytes(2500) - BURST_BYTES) / 20_000)
    assert 15 < adapter.state.kbps < 25
    assert adapter.state.keyframe_budget == pytest.approx(20_000 / 8 * 0.5, rel=0.05)
    # Requested keyframes take at most a quarter of the link: the next one is ~1250 bytes.
    assert adapter.keyframe_interval() == pytest.approx(8 * 1250 / (0.25 * 20_000), rel=0.05)
    assert not adapter.state.patches
    # Every frame still sent, three a message: ~8.5 kbit/s of motion at 25 fps, half the link
    # (the matrix's 20 kbit/s cell once fell to every third frame from an estimate of half the
    # link; at two a message, 58 % of it, one overflow kept the queue full).
    assert adapter.state.bundle == 3 and adapter.state.motion_every == 1
    assert motion_kbps(3, 1, 25, MOTION_PACKET_BYTES) <= 0.5 * adapter.state.kbps
    whats = [what for _, what, _ in adapter.adaptations]
    assert any("keyframes of at most" in w for w in whats) and "reference patches off" in whats
    # 12 kbit/s: still every frame, more of them a message.
    for seq in (50, 100, 150):
        _report(adapter, seq, 1250, adapter.keyframe_quality(), 0.95)
    assert adapter.state.motion_every == 1 and adapter.state.bundle >= 4
    # ~4 kbit/s for the last three keyframes: the "link too slow" state, logged.
    for seq in (200, 250, 300):
        _report(adapter, seq, 1250, adapter.keyframe_quality(), 3.0)
    assert adapter.state.motion_every == 3
    # Burst-sized keyframes that crossed at once cannot lift a measured slow link.
    for seq in (350, 400, 450):
        _report(adapter, seq, 600, adapter.keyframe_quality(), 0.02)
    assert adapter.state.motion_every == 3
    assert any("link too slow" in what for _, what, _ in adapter.adaptations)


def test_a_fast_link_asks_for_a_full_keyframe_once():
    adapter = LinkAdapter(codec="av1", default_quality=66)
    assert _report(adapter, 0, 1500, adapter.keyframe_quality(), 0.01)  # ~600 kbit/s: upgrade
    # Unmeasured (1500 bytes ride a shaper's burst): the next keyframe is only large enough to
    # measure the link, not the 3000 bytes doubling would allow.
    assert adapter.state.keyframe_budget == PROBE_KEYFRAME_BYTES
    # A keyframe within one shaper burst proves nothing of the rate: motion stays bundled.
    assert adapter.state.bundle == UNMEASURED_BUNDLE
    assert _report(adapter, 10, 3000, adapter.keyframe_quality(), 0.02)
    assert adapter.keyframe_quality() == 66
    assert adapter.state.patches and adapter.state.bundle == 1
    assert not _report(adapter, 30, 4000, 66, 0.02)  # already at the default: nothing to gain


def test_one_keyframe_held_up_by_an_outage_does_not_sink_the_estimate():
    adapter = LinkAdapter(codec="av1", default_quality=66)
    _report(adapter, 0, 4000, 66, 0.3176)  # 4376 wire bytes, 1200 of them a burst: 80 kbit/s
    _report(adapter, 50, 4000, 66, 0.3176)
    _report(adapter, 100, 4000, 66, 5.5)  # crossed after a 5 s outage: ~4 kbit/s
    assert adapter.state.kbps == pytest.approx(80, rel=0.05)
    assert adapter.state.motion_every == 1 and adapter.state.patches


def test_a_lossy_link_gets_intra_packets_more_often():
    adapter = LinkAdapter(codec="av1", default_quality=66)
    adapter.on_peer_stats({"loss": 0.0}, rtt_s=None)
    assert adapter.state.intra_period == 25
    adapter.on_peer_stats({"loss": 0.10}, rtt_s=None)
    assert adapter.state.intra_period == 5
    adapter.on_peer_stats({"loss": 0.30}, rtt_s=None)
    assert adapter.state.intra_period == 4
    assert any("intra motion packet every" in what for _, what, _ in adapter.adaptations)


def test_bytes_queued_ahead_of_a_keyframe_count_into_the_rate():
    # The matrix's 20 kbit/s cell without audio: a 3193-byte keyframe sent behind a full queue
    # of motion "took 2.78 s: about 10 kbit/s"; with the ~3.5 KB it queued behind, ~17 (the
    # first 1200 bytes left out: they may have ridden the shaper's burst).
    alone, behind = LinkAdapter(codec="av1", default_quality=66), LinkAdapter(codec="av1", default_quality=66)
    _report(alone, 0, 3193, 40, 2.78)
    _report(behind, 0, 3193, 40, 2.78, ahead=3_500)
    assert behind.state.kbps == pytest.approx(8 * (wire_bytes(3193) + 3_500 - BURST_BYTES) / 2.78 / 1000, rel=1e-6)
    assert 15 < behind.state.kbps < 20
    # Every frame, four a message; alone, it read the link too slow for every frame.
    assert (behind.state.motion_every, behind.state.bundle) == (1, 4)
    assert alone.state.motion_every > 1
    assert any("behind 3500 bytes" in why for _, _, why in behind.adaptations)


def test_an_unmeasured_link_gets_one_probe_keyframe_then_keyframes_sized_to_it():
    adapter = LinkAdapter(codec="av1", default_quality=66)
    # The first keyframe rode the shaper's burst ("96 kbit/s"): a probe, no larger than needed.
    assert _report(adapter, 0, 1545, adapter.keyframe_quality(), 0.14)
    assert adapter.state.keyframe_budget == PROBE_KEYFRAME_BYTES
    assert wire_bytes(PROBE_KEYFRAME_BYTES) > 2 * BURST_BYTES  # large enough to measure
    assert adapter.state.bundle == UNMEASURED_BUNDLE  # still unmeasured: motion stays bundled
    # The probe measured 20 kbit/s: keyframes of half a second of it, no further probe.
    assert not _report(adapter, 25, 2600, adapter.keyframe_quality(), 8 * (wire_bytes(2600) - BURST_BYTES) / 20_000)
    assert 15 < adapter.state.kbps < 25
    assert adapter.state.keyframe_budget == pytest.approx(20_000 / 8 * 0.5, rel=0.1)
    assert (adapter.state.motion_every, adapter.state.bundle) == (1, 3)
    # Requested keyframes are spaced by the next one's size (the budget), not the probe's.
    assert adapter.keyframe_interval() == pytest.approx(
        8 * adapter.state.keyframe_budget / (0.25 * adapter.state.kbps * 1000), rel=1e-6)


def test_the_bytes_ahead_of_a_keyframe_are_read_from_sctp_queues():
    from types import SimpleNamespace

    from sender.session import SenderSession

    def chunk(n: int, acked: bool = False, abandoned: bool = False) -> SimpleNamespace:
        return SimpleNamespace(user_data=b"x" * n, _acked=acked, _abandoned=abandoned)

    sctp = SimpleNamespace(_sent_queue=[chunk(1200, acked=True), chunk(1200), chunk(60), chunk(70, abandoned=True)],
                           _outbound_queue=[chunk(300)], _data_channel_queue=[(None, 51, b"y" * 2000)])
    session = object.__new__(SenderSession)  # only the control channel matters here
    session._control = SimpleNamespace(transport=sctp)
    # The acknowledged chunk crossed already, the abandoned one never goes; the rest is ahead.
    assert session._bytes_ahead() == wire_bytes(1200) + wire_bytes(60) + wire_bytes(300) + wire_bytes(2000)
    session._control = None
    assert session._bytes_ahead() == 0


def test_the_queue_a_keyframe_waited_in_is_part_of_its_transfer():
    # SCTP's smoothed round trip grew with the queue (0.05 s -> 1.0 s): only the least one seen
    # is the path's own delay; subtracting half the grown one read a 20 kbit/s link as ~30.
    adapter = LinkAdapter(codec="av1", default_quality=66)
    adapter.on_peer_stats({}, rtt_s=0.05)
    transfer = 8 * (wire_bytes(2600) - BURST_BYTES) / 20_000
    adapter.keyframe_sent(0, 2600, 40)
    adapter.on_peer_stats({"keyframe_seq": 0, "keyframe_arrival": adapter._sent[0][0] + transfer + 0.025},
                          rtt_s=1.0)
    assert adapter.state.kbps == pytest.approx(20, rel=0.02)


def test_a_small_first_keyframe_on_a_slow_link_buys_no_larger_one():
    # The 20 kbit/s cell: an 844-byte first keyframe behind 469 bytes of stream start took
    # 0.43 s. Alone it reads ~17 kbit/s (those bytes rode the same burst): keyframes stay near
    # its size, no probe (a 1586-byte one froze the picture for a second there).
    adapter = LinkAdapter(codec="av1", default_quality=66)
    assert not _report(adapter, 0, 844, adapter.keyframe_quality(), 0.43, ahead=469)
    assert adapter.state.kbps == pytest.approx(8 * wire_bytes(844) / 0.43 / 1000, rel=1e-6)
    assert adapter.state.keyframe_budget < 1.5 * 844
    assert adapter.state.bundle == UNMEASURED_BUNDLE and not adapter.state.patches


def test_audio_goes_in_longer_packets_on_a_slow_link_and_back_on_a_fast_one():
    adapter = LinkAdapter(codec="av1", default_quality=66, motion_on_channel=False)
    adapter.audio = True
    assert adapter.state.audio_packet_ms == 20  # unmeasured: as WebRTC sends it
    # ~40 kbit/s left beside the audio: 40 ms packets, logged.
    _report(adapter, 0, 2872, 40, 8 * (wire_bytes(2872) - BURST_BYTES) / 40_000)
    assert adapter.state.audio_packet_ms == 40
    assert [why for _, what, why in adapter.adaptations if what == "audio in 40 ms packets"]
    # ~10 kbit/s (the CI cell's 50 kbit/s link with 20 ms audio): 60 ms packets.
    for seq in (10, 20):
        _report(adapter, seq, 2872, 40, 8 * (wire_bytes(2872) - BURST_BYTES) / 10_000)
    assert adapter.state.audio_packet_ms == 60
    # Between the thresholds nothing flips back and forth.
    for seq in (30, 40, 50):
        _report(adapter, seq, 6000, 40, 8 * (wire_bytes(6000) - BURST_BYTES) / 40_000)
    assert adapter.state.audio_packet_ms == 60
    for seq in (60, 70, 80):
        _report(adapter, seq, 6000, 40, 8 * (wire_bytes(6000) - BURST_BYTES) / 100_000)
    assert adapter.state.audio_packet_ms == 60
    for seq in (90, 100, 110):
        _report(adapter, seq, 6000, 40, 8 * (wire_bytes(6000) - BURST_BYTES) / 400_000)
    assert adapter.state.audio_packet_ms == 20
    assert [what for _, what, _ in adapter.adaptations if what.startswith("audio in")] == [
        "audio in 40 ms packets", "audio in 60 ms packets", "audio in 20 ms packets"]


def test_without_audio_the_packet_length_is_never_touched():
    adapter = LinkAdapter(codec="av1", default_quality=66)
    _report(adapter, 0, 2872, 40, 8 * (wire_bytes(2872) - BURST_BYTES) / 10_000)
    assert adapter.state.audio_packet_ms == 20
    assert not any(what.startswith("audio in") for _, what, _ in adapter.adaptations)


def test_audio_that_overfills_the_link_goes_in_120_ms_packets_random_loss_does_not():
    """Congestion (motion lost and the receiver's latency grown by a shaper's queue, two
    reports running) takes 60 ms audio packets to 120; the same loss at a 60 ms latency does not;
    a keyframe measuring 24 kbit/s or more beside the audio brings 60 ms back."""
    adapter = LinkAdapter(codec="av1", default_quality=66, motion_on_channel=False)
    adapter.audio = True
    _report(adapter, 0, 2872, 40, 8 * (wire_bytes(2872) - BURST_BYTES) / 10_000)
    assert adapter.state.audio_packet_ms == 60
    adapter.on_peer_stats({"loss": 0.4, "latency_ms": 50.0}, 0.05)  # the least latency
    for _ in range(3):  # the 20 % random-loss cell: no queue
        adapter.on_peer_stats({"loss": 0.2, "latency_ms": 60.0}, 0.06)
    assert adapter.state.audio_packet_ms == 60
    adapter.on_peer_stats({"loss": 0.4, "latency_ms": 1600.0}, 0.8)
    assert adapter.state.audio_packet_ms == 60  # one report is not enough
    adapter.on_peer_stats({"loss": 0.4, "latency_ms": 1650.0}, 0.9)
    assert adapter.state.audio_packet_ms == 120
    why = [why for _, what, why in adapter.adaptations if what == "audio in 120 ms packets"]
    assert why and "overfills" in why[0]
    # A low measurement keeps 120; one at 24 kbit/s or more beside the audio returns to 60.
    _report(adapter, 10, 2872, 40, 8 * (wire_bytes(2872) - BURST_BYTES) / 10_000)
    assert adapter.state.audio_packet_ms == 120
    for seq in (20, 30, 40):
        _report(adapter, seq, 6000, 40, 8 * (wire_bytes(6000) - BURST_BYTES) / 40_000)
    assert adapter.state.audio_packet_ms == 60


def test_a_queue_of_a_second_alone_lengthens_the_audio_one_step_at_a_time():
    """The 20 kbit/s cell once measured its first keyframe on the shaper's burst (40 ms audio)
    and then lost no motion: it waited behind a stuck keyframe, while the latency grew. Two
    seconds of latency alone count."""
    adapter = LinkAdapter(codec="av1", default_quality=66, motion_on_channel=False)
    adapter.audio = True
    adapter.on_peer_stats({"loss": 0.0, "latency_ms": 50.0}, 0.05)
    for latency in (1200, 1300):  # a second of queue without loss: not enough
        adapter.on_peer_stats({"loss": 0.0, "latency_ms": latency}, 0.05)
    assert adapter.state.audio_packet_ms == 20
    steps = []
    for latency in (2100, 2200, 2300, 2400, 2500, 2600, 2700, 2800):
        adapter.on_peer_stats({"loss": 0.0, "latency_ms": latency}, 0.05)
        steps.append(adapter.state.audio_packet_ms)
    assert steps == [20, 40, 40, 60, 60, 120, 120, 120]


def test_before_any_picture_most_motion_lost_lengthens_the_audio():
    """The 10 kbit/s cell with audio: no picture (so no latency reported) and 70 % of the
    motion lost; 20 % lost (the random-loss cell) is not enough."""
    adapter = LinkAdapter(codec="av1", default_quality=66, motion_on_channel=False)
    adapter.audio = True
    for _ in range(3):
        adapter.on_peer_stats({"loss": 0.2}, 0.05)
    assert adapter.state.audio_packet_ms == 20
    for _ in range(2):
        adapter.on_peer_stats({"loss": 0.7}, 0.05)
    assert adapter.state.audio_packet_ms == 40
    assert adapter.adaptations[-1][2] == "70 % of motion lost: the audio overfills the link"
