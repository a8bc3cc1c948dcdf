"""Reference memory (issue 26): the sender's record of the K keyframes the receiver holds,
its choice among them, and, in a call, only keyframes the receiver reported are named."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codec.api import Decoder, Encoder, RefreshPolicy
from codec.bitstream import KeyframePacket, PacketType, parse_packet
from codec.bitstream.control import HeldReferences, pack_control, parse_control
from codec.errors import BitstreamError, CodecError
from codec.reference_memory import ReferenceMemory, pose_distance
from codec.zoo import resolve_model


@pytest.fixture(scope="module")
def model():
    return resolve_model("landmark", refiner=False)


def _pose(yaw: float, pitch: float = 0.0) -> np.ndarray:
    return np.array([yaw, pitch, 0.0, 0.0, 0.0, 0.0], np.float32)


# ----------------------------------------------------------------------------- the record


def test_memory_fills_empty_slots_then_replaces_by_policy_never_the_current_one():
    lru = ReferenceMemory(3, "lru")
    for slot, (seq, yaw) in enumerate([(0, 0.0), (50, 30.0), (100, 2.0)]):
        assert lru.slot_for_new(current=slot - 1 if slot else None, pose=None) == slot
        ref = lru.sent(slot, seq, source=object())
        ref.pose, ref.last_used = _pose(yaw), seq + 10
    lru.slots[0].last_used = 200  # slot 0 reused lately: slot 1 is the least recently used
    assert lru.slot_for_new(current=2, pose=_pose(1.0)) == 1
    assert lru.slot_for_new(current=1, pose=_pose(1.0)) == 2  # never the current one
    coverage = ReferenceMemory(3, "coverage")
    for slot, ref in enumerate(lru.slots):
        coverage.slots[slot] = ref
    # Slots 0 and 2 are 2° apart (redundant), slot 1 covers the turned head: a new frontal
    # keyframe replaces one of the redundant pair, the one not warped from now.
    assert coverage.slot_for_new(current=0, pose=_pose(1.0)) == 2
    assert coverage.slot_for_new(current=2, pose=_pose(1.0)) == 0
    assert ReferenceMemory(1).slot_for_new(current=0, pose=None) == 0


def test_reports_make_only_the_very_keyframe_sent_held():
    memory = ReferenceMemory(4, acknowledged=True)
    memory.sent(0, 0, source="a")
    assert memory.held() == []  # a call: not held until the receiver says so
    assert memory.report({0: 0}) == [0] and [r.slot for r in memory.held()] == [0]
    memory.sent(1, 40, source="b")
    # A report older than the keyframe of slot 1 (it names the slot's previous keyframe, or
    # none) leaves it unheld.
    assert memory.report({0: 0, 1: 7}) == [] and [r.slot for r in memory.held()] == [0]
    assert memory.report({0: 0, 1: 40}) == [1]
    # A receiver that restarted holds nothing: the sender forgets what it reported before.
    memory.report({})
    assert memory.held() == [] and memory.slots == [None] * 4
    files = ReferenceMemory(2)
    files.sent(1, 3, source="c")
    assert [r.slot for r in files.held()] == [1]  # a file: every keyframe sent is held


def test_pose_distance_is_the_larger_of_yaw_and_pitch():
    assert pose_distance(_pose(10.0, -3.0), _pose(-5.0, 1.0)) == 15.0
    assert pose_distance(None, _pose(0.0)) == float("inf")


def test_held_references_message_round_trips_and_rejects_garbage():
    message = HeldReferences({0: 12, 3: 4000})
    assert parse_control(pack_control(message)) == message
    good = pack_control(HeldReferences({1: 5}))
    for bad in (good.replace(b"\xa11", b"\xa1x"), good.replace(b"\x05", b"\xff"),
                good.replace(b"\xa11", b"\xa2" + b"99")):
        with pytest.raises(BitstreamError):
            parse_control(bad)


# ----------------------------------------------------------------------------- a call


def _frames(portrait, count: int) -> list[np.ndarray]:
    crop, _ = portrait
    return [np.ascontiguousarray(crop) for _ in range(count)]


def test_a_lost_reference_is_never_named_and_the_call_recovers(model, portrait):
    """K = 3 with the receiver's reports (a call): the keyframe of frame 5 is lost on the way.
    No motion packet ever names its slot, the receiver never lacks a reference it is asked
    to warp from, and the next keyframe, once reported, is used."""
    encoder = Encoder(model, references=3, acknowledged_references=True, patches=False,
                      keyframe_codec="webp")
    decoder = Decoder.from_header(encoder.header(), model=model)
    lost_slot = None
    used: list[tuple[int, int]] = []  # (frame, the slot the receiver warped from)
    for seq, frame in enumerate(_frames(portrait, 30)):
        if seq in (5, 15):
            encoder.request_keyframe("scripted")
        for packet in encoder.encode(frame):
            parsed = parse_packet(packet, decoder.header)
            if isinstance(parsed, KeyframePacket) and seq == 5:
                lost_slot = parsed.slot  # dropped: the receiver never gets it
                continue
            for out in decoder.decode_stream([packet]):
                used.append((out.seq, out.reference))
        # The receiver reports what it holds after every frame (a call: on each keyframe).
        encoder.references_held(decoder.held_references())
    assert lost_slot == 1
    assert len(used) == 30 and all(slot != lost_slot for _, slot in used)
    assert decoder.needs_reference is None and decoder.stats.unheld_reference == 0
    assert [slot for seq, slot in used if seq < 15] == [0] * 15
    # The keyframe of frame 15 filled slot 2; the receiver reported it after that frame, and
    # every frame from the next one on warps from it.
    assert encoder.stats.keyframe_slots == [0, 1, 2]
    assert [slot for seq, slot in used if seq >= 16] == [2] * 14
    assert encoder.current_reference == 2


def test_motion_packets_stay_compact_while_the_slot_does_not_change(model, portrait):
    encoder = Encoder(model, references=4, patches=False, keyframe_codec="webp")
    kinds = []
    for seq, frame in enumerate(_frames(portrait, 60)):
        if seq == 30:
            encoder.request_keyframe("scripted")  # slot 1 (a file: held at once)
        kinds += [packet[0] >= 0x80 for packet in encoder.encode(frame)
                  if packet[0] not in (PacketType.KEYFRAME, PacketType.PATCH)]
    assert encoder.stats.keyframe_slots == [0, 1]
    assert len(kinds) == 60 and all(kinds)  # every motion packet compact: 8 bits of framing


def test_sessions_carry_the_receivers_report_to_the_encoder(model, portrait):
    """The ReceiverSession reports its decoder's slots once a keyframe arrived; the
    SenderSession hands a report to its Encoder."""
    from receiver.session import ReceiverSession
    from sender.session import SenderSession

    encoder = Encoder(model, references=2, acknowledged_references=True, patches=False,
                      keyframe_codec="webp")
    packets = encoder.encode(_frames(portrait, 1)[0])
    decoder = Decoder.from_header(encoder.header(), model=model)
    replies = []
    receiver = ReceiverSession(model, show=lambda image, t: None, send_control=replies.append)
    try:
        receiver.decoder = decoder
        receiver._decode_batch(decoder, [(packet, None) for packet in packets])
        receiver._decode_batch(decoder, [])  # nothing new: no second report
    finally:
        receiver.close()
    assert replies == [HeldReferences({0: 0})]
    sender = SenderSession(iter([]), fps=25.0, encoder=encoder, cropper=None, h264_track=None)
    assert encoder.held_references == []
    sender.on_control(parse_control(pack_control(replies[0])))
    encoder.encode(_frames(portrait, 1)[0])  # reports are applied on the encode thread
    assert [ref.slot for ref in encoder.held_references] == [0]


def test_rd_settings_name_the_reference_slots():
    from benchmarks.rd.ours import ours_settings

    assert [s.name for s in ours_settings([("a0.1", 3)], references=4)] == ["q3-ad0.1-r4"]
    assert [s.name for s in ours_settings([("a0.1", 3)], references=4,
                                          reference_policy="coverage")] == ["q3-ad0.1-r4-rcov"]
    assert [s.name for s in ours_settings([("a0.1", 3)], references=1)] == ["q3-ad0.1"]


def test_rd_ours_runs_what_compress_and_a_call_use_unless_told():
    """rd's "ours" defaults to the shipped sender: K = DEFAULT_REFERENCES with the closed loop
    (1 for a period), predicted refreshes at the default CRF; the JSON says which it ran."""
    from benchmarks.rd.cli import parse_args
    from benchmarks.rd.ours import ours_config, ours_settings
    from benchmarks.rd.runner import sweep_settings
    from codec.api import DEFAULT_REFERENCES
    from codec.predicted_keyframe import DEFAULT_CRF

    [loop, period] = ours_settings([("a0.1", 3), (4.0, 3)])
    assert loop.name == f"q3-ad0.1-r{DEFAULT_REFERENCES}" and loop.params["references"] == DEFAULT_REFERENCES
    assert period.name == "q3-kf4" and period.params["references"] == 1
    assert loop.params["predicted_refresh"] and loop.params["predicted_crf"] == DEFAULT_CRF
    assert ours_config("a0.1")["shipped_default"] and not ours_config("a0.1", references=1)["shipped_default"]
    # The motion quality: finer with the closed loop (codec.motion_coding.default_quality).
    assert ours_config("a0.1", motion_quality=5)["shipped_default"]
    assert not ours_config("a0.1", motion_quality=3)["shipped_default"]
    assert ours_config(0.0, motion_quality=3)["shipped_default"] and not ours_config(0.0, motion_quality=5)["shipped_default"]
    args = parse_args(["--predicted-crf", "18,22", "--references", "1,4"])
    names = [s.name for s in sweep_settings(["ours"], [("a0.1", 3)], quick=False, references=args.reference_counts,
                                            predicted_crfs=args.predicted_crfs)]
    assert names == ["q3-ad0.1", "q3-ad0.1-crf22", "q3-ad0.1-r4", "q3-ad0.1-r4-crf22"]
    args = parse_args(["--predicted-refresh", "off"])
    assert [s.name for s in sweep_settings(["ours"], [("a0.1", 3)], quick=False, references=args.reference_counts,
                                           predicted_refresh=False)] == ["q3-ad0.1-r4-nopred"]
    for bad in (["--predicted-crf", "99"], ["--references", "0"], ["--predicted-crf", "x"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_default_slots_are_four_with_the_closed_loop_and_one_without(model, portrait):
    """Without the closed loop nothing chooses among references: K = 1 writes the header and
    packets it always did (slot 0); with it the default is K = 4 (measured on dev)."""
    encoder = Encoder(model, patches=False, keyframe_codec="webp")
    assert encoder.stream_header().reference_slots == 1
    packets = encoder.encode(_frames(portrait, 1)[0])
    assert parse_packet(packets[0], encoder.stream_header()).slot == 0
    assert Encoder(model, refresh=RefreshPolicy()).stream_header().reference_slots == 4
    assert Encoder(model, refresh=RefreshPolicy(), references=2).stream_header().reference_slots == 2


_KEYS = st.one_of(st.text(max_size=4), st.integers(-3, 40).map(str), st.integers(-3, 40), st.binary(max_size=3))
_VALUES = st.one_of(st.integers(-(2 ** 63), 2 ** 64 - 1), st.floats(allow_nan=True), st.booleans(), st.text(max_size=3),
                    st.none(), st.binary(max_size=3))


@settings(max_examples=300, deadline=None)
@given(held=st.dictionaries(_KEYS, _VALUES, max_size=20), cut=st.integers(0, 200))
def test_fuzz_held_references_parse_only_to_valid_slots_or_a_typed_error(held, cut):
    """Any 'refs' body, whole or truncated: a HeldReferences of slots 0-15 and frame numbers
    >= 0, or a CodecError (never another exception)."""
    data = msgpack.packb({"v": 1, "t": "refs", "held": held}, use_bin_type=True)
    for candidate in (data, data[:cut]):
        try:
            message = parse_control(candidate)
        except CodecError:
            continue
        assert isinstance(message, HeldReferences)
        assert all(0 <= k < 16 and isinstance(v, int) and v >= 0 for k, v in message.held.items())


def test_a_view_that_comes_back_reuses_its_reference_for_free(model, portrait):
    """The portrait, then a darker view of it for 2 s (a light switched off: the held
    keyframe rebuilds it badly), then the portrait again. K = 1 pays a third keyframe for
    the return; K = 2 switches back to the first keyframe it still holds, and the receiver
    warps from the very slot the sender chose, frame by frame."""
    crop, _ = portrait
    away = (crop * 0.55).astype(np.uint8)
    frames = [crop] * 30 + [away] * 50 + [crop] * 50
    runs = {}
    for k in (1, 2):
        encoder = Encoder(model, references=k, refresh=RefreshPolicy(), patches=False, keyframe_codec="webp")
        decoder = Decoder.from_header(encoder.header(), model=model)
        sender_slots, receiver_slots = [], []
        for frame in frames:
            packets = encoder.encode(np.ascontiguousarray(frame))
            sender_slots.append(encoder.last_reference)  # the slot this frame's motion named
            receiver_slots += [out.reference for out in decoder.decode_stream(packets)]
        runs[k] = encoder.stats, sender_slots, receiver_slots
    stats, _, _ = runs[1]
    assert stats.keyframes == 3 and not stats.switches
    stats, sent, received = runs[2]
    assert stats.keyframes == 2 and stats.keyframe_slots == [0, 1]
    assert len(stats.switches) == 1 and stats.switches[0][1] == 0 and 80 < stats.switches[0][0] < 110
    assert len(received) == len(frames) and received == sent and received[-1] == 0
    assert sent[stats.switches[0][0]] == 1 and sent[stats.switches[0][0] + 1] == 0  # from the next frame
