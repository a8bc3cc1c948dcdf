"""Quantization, temporal prediction and loss behaviour of the motion coder."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from codec.errors import BitstreamError, MissingReferenceError
from codec.motion_coding import (
    DEFAULT_QUALITY,
    NUM_QUALITIES,
    GroupQuant,
    MotionDecoder,
    MotionEncoder,
    QuantTable,
    motion_vector_length,
    quant_table,
)

NUM_KP = 20
EXPRESSION = 3 * NUM_KP  # a vid2vid layout: K×3 keypoint deltas


def smooth_motion(num_frames: int, num_kp: int = NUM_KP, seed: int = 0) -> np.ndarray:
    """num_frames × (6+3K) float32: slow sine angles of a few degrees, small sine t, and an
    AR(1) random walk for δ with stationary std 0.02 (ρ = 0.95)."""
    rng = np.random.default_rng(seed)
    seconds = np.arange(num_frames) / 25.0
    angles = np.stack([8 * np.sin(2 * np.pi * 0.2 * seconds),
                       4 * np.sin(2 * np.pi * 0.13 * seconds + 1),
                       3 * np.sin(2 * np.pi * 0.07 * seconds + 2)], axis=1)
    translation = np.stack([0.05 * np.sin(2 * np.pi * 0.1 * seconds),
                            0.03 * np.sin(2 * np.pi * 0.15 * seconds),
                            0.01 * np.sin(2 * np.pi * 0.05 * seconds)], axis=1)
    rho = 0.95
    expression = np.zeros((num_frames, 3 * num_kp))
    state = rng.normal(0, 0.02, 3 * num_kp)
    for frame in range(num_frames):
        state = rho * state + rng.normal(0, 0.02 * np.sqrt(1 - rho**2), 3 * num_kp)
        expression[frame] = state
    return np.concatenate([angles, translation, expression], axis=1).astype(np.float32)


def _assert_within_half_step(decoded: np.ndarray, original: np.ndarray,
                             table: QuantTable, expression_count: int) -> None:
    bounds = table.bounds_vector(expression_count)
    clamped = np.clip(original.astype(np.float64), -bounds, bounds)
    error = np.abs(decoded.astype(np.float64) - clamped)
    # float32 steps and products: allow a relative hair over step/2.
    assert np.all(error <= table.steps_vector(expression_count) * (0.5 + 1e-5))


def test_quality_ladder_is_monotonic() -> None:
    tables = [quant_table(q) for q in range(NUM_QUALITIES)]
    assert NUM_QUALITIES >= 5
    for coarse, fine in zip(tables, tables[1:]):
        for coarse_group, fine_group in zip(coarse.groups(), fine.groups()):
            assert fine_group.step < coarse_group.step
    assert tables[0].angles.step == pytest.approx(2.0)
    assert tables[-1].angles.step == pytest.approx(0.1)
    with pytest.raises(ValueError):
        quant_table(NUM_QUALITIES)
    with pytest.raises(ValueError):
        quant_table(-1)


@pytest.mark.parametrize("quality", range(NUM_QUALITIES))
def test_table_serialises_exactly(quality: int) -> None:
    table = quant_table(quality)
    data = table.to_bytes()
    assert len(data) == QuantTable.SERIALIZED_SIZE == 48
    assert QuantTable.from_bytes(data) == table
    assert QuantTable.from_bytes(data).to_bytes() == data


@pytest.mark.parametrize("bad_value", [0.0, -1.0, float("nan"), float("inf"), 1e-30])
def test_table_parse_rejects_bad_values(bad_value: float) -> None:
    values = list(struct.unpack("<12f", quant_table(0).to_bytes()))
    values[0] = bad_value  # angle step
    with pytest.raises(BitstreamError):
        QuantTable.from_bytes(struct.pack("<12f", *values))
    with pytest.raises(BitstreamError):
        QuantTable.from_bytes(quant_table(0).to_bytes()[:-1])


def test_group_quant_validation() -> None:
    with pytest.raises(ValueError):
        GroupQuant(0.0, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        GroupQuant(1e-5, 1.0, 1.0, 1.0)  # 100 000 indices: alphabet too big


@pytest.mark.parametrize("quality", range(NUM_QUALITIES))
def test_round_trip_error_within_half_step(quality: int) -> None:
    table = quant_table(quality)
    frames = smooth_motion(60)
    frames[10, 0] = 140.0  # beyond the angle bound: clamped to 90°
    frames[11, 8] = -3.0  # beyond the expression bound
    encoder = MotionEncoder(table, EXPRESSION, intra_period=25)
    decoder = MotionDecoder(table, EXPRESSION)
    for seq, vector in enumerate(frames):
        is_intra, payload = encoder.encode_vector(vector, seq)
        decoded = decoder.decode_vector(is_intra, seq, payload)
        assert decoded.dtype == np.float32 and decoded.shape == (motion_vector_length(EXPRESSION),)
        _assert_within_half_step(decoded, vector, table, EXPRESSION)
    assert decoder.last_seq == len(frames) - 1


def test_intra_every_period_and_on_request() -> None:
    encoder = MotionEncoder(quant_table(2), EXPRESSION, intra_period=5)
    frames = smooth_motion(23)
    kinds = [encoder.encode_vector(v, seq)[0] for seq, v in enumerate(frames[:12])]
    assert [seq for seq, intra in enumerate(kinds) if intra] == [0, 5, 10]
    encoder.force_intra()
    assert encoder.encode_vector(frames[12], 12)[0] is True
    # The period restarts at a forced intra.
    kinds = [encoder.encode_vector(frames[seq], seq)[0] for seq in range(13, 18)]
    assert kinds == [False, False, False, False, True]
    # A gap in sequence numbers cannot be predicted across: intra.
    assert encoder.encode_vector(frames[20], 20)[0] is True
    assert encoder.encode_vector(frames[21], 21)[0] is False


def test_intra_period_one_is_all_intra() -> None:
    encoder = MotionEncoder(quant_table(1), 6, intra_period=1)
    assert all(encoder.encode_vector(v, seq)[0]
               for seq, v in enumerate(smooth_motion(5, num_kp=2)))
    with pytest.raises(ValueError):
        MotionEncoder(quant_table(1), 2, intra_period=0)


def test_lost_packet_raises_then_intra_recovers_exactly() -> None:
    table = quant_table(3)
    frames = smooth_motion(30)
    encoder = MotionEncoder(table, EXPRESSION, intra_period=10)
    packets = [encoder.encode_vector(v, seq) for seq, v in enumerate(frames)]
    reference = MotionDecoder(table, EXPRESSION)
    expected = [reference.decode_vector(intra, seq, payload)
                for seq, (intra, payload) in enumerate(packets)]

    lossy = MotionDecoder(table, EXPRESSION)
    lost_seq = 4
    for seq, (intra, payload) in enumerate(packets):
        if seq == lost_seq:
            continue
        if lost_seq < seq < 10:
            assert not intra
            with pytest.raises(MissingReferenceError):
                lossy.decode_vector(intra, seq, payload)
            assert lossy.last_seq == lost_seq - 1  # state untouched
            continue
        assert np.array_equal(lossy.decode_vector(intra, seq, payload), expected[seq])


def test_inter_before_any_intra_raises() -> None:
    table = quant_table(0)
    encoder = MotionEncoder(table, EXPRESSION, 10)
    frames = smooth_motion(2)
    encoder.encode_vector(frames[0], 0)
    intra, payload = encoder.encode_vector(frames[1], 1)
    assert not intra
    with pytest.raises(MissingReferenceError):
        MotionDecoder(table, EXPRESSION).decode_vector(False, 1, payload)


def test_reordered_inter_raises() -> None:
    table = quant_table(0)
    encoder = MotionEncoder(table, EXPRESSION, 10)
    packets = [encoder.encode_vector(v, seq) for seq, v in enumerate(smooth_motion(4))]
    decoder = MotionDecoder(table, EXPRESSION)
    decoder.decode_vector(True, 0, packets[0][1])
    with pytest.raises(MissingReferenceError):
        decoder.decode_vector(False, 2, packets[2][1])
    decoder.decode_vector(False, 1, packets[1][1])
    decoder.decode_vector(False, 2, packets[2][1])
    decoder.reset()
    with pytest.raises(MissingReferenceError):
        decoder.decode_vector(False, 3, packets[3][1])


def test_nan_and_inf_inputs() -> None:
    table = quant_table(2)
    encoder = MotionEncoder(table, EXPRESSION, 10)
    decoder = MotionDecoder(table, EXPRESSION)
    frames = smooth_motion(2)
    intra, payload = encoder.encode_vector(frames[0], 0)
    decoded0 = decoder.decode_vector(intra, 0, payload)
    broken = frames[1].copy()
    broken[0] = np.nan  # held at the previous value
    broken[1] = np.inf  # clamped to the bound
    intra, payload = encoder.encode_vector(broken, 1)
    decoded1 = decoder.decode_vector(intra, 1, payload)
    assert decoded1[0] == decoded0[0]
    assert decoded1[1] == pytest.approx(table.angles.bound)
    with pytest.raises(ValueError):
        encoder.encode_vector(frames[0][:-1], 2)


def test_garbage_payloads_are_bounded_or_rejected() -> None:
    table = quant_table(5)
    bounds = table.bounds_vector(EXPRESSION) + table.steps_vector(EXPRESSION)
    rng = np.random.default_rng(4)
    encoder = MotionEncoder(table, EXPRESSION, 10)
    decoder = MotionDecoder(table, EXPRESSION)
    decoder.decode_vector(*_first_intra(encoder))
    accepted = 0
    for trial in range(300):
        payload = rng.integers(0, 256, int(rng.integers(0, 80)), dtype=np.uint8).tobytes()
        is_intra = bool(trial % 2)
        seq = decoder.last_seq + 1
        try:
            decoded = decoder.decode_vector(is_intra, seq, payload)
        except BitstreamError:
            continue
        accepted += 1
        assert np.all(np.abs(decoded) <= bounds)
    assert accepted < 300


def _first_intra(encoder: MotionEncoder) -> tuple[bool, int, bytes]:
    intra, payload = encoder.encode_vector(smooth_motion(1)[0], 0)
    return intra, 0, payload


def test_payloads_are_deterministic_and_smaller_for_inter() -> None:
    table = quant_table(DEFAULT_QUALITY)
    frames = smooth_motion(50)

    def run() -> list[tuple[bool, bytes]]:
        encoder = MotionEncoder(table, EXPRESSION, intra_period=25)
        return [encoder.encode_vector(v, seq) for seq, v in enumerate(frames)]

    first, second = run(), run()
    assert first == second
    intra_sizes = [len(p) for intra, p in first if intra]
    inter_sizes = [len(p) for intra, p in first if not intra]
    assert np.mean(inter_sizes) < np.mean(intra_sizes)


def test_decoder_state_unchanged_after_bad_payload() -> None:
    table = quant_table(1)
    encoder = MotionEncoder(table, EXPRESSION, 10)
    packets = [encoder.encode_vector(v, seq) for seq, v in enumerate(smooth_motion(3))]
    decoder = MotionDecoder(table, EXPRESSION)
    decoder.decode_vector(packets[0][0], 0, packets[0][1])
    with pytest.raises(BitstreamError):
        decoder.decode_vector(False, 1, packets[1][1] + b"\0")
    assert decoder.last_seq == 0
    decoder.decode_vector(False, 1, packets[1][1])
