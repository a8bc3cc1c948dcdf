"""The motion stream the stages code and decode: a synthetic talking-head trajectory, packed
as the sender packs it and parsed back as the receiver does (host code: numpy and
constriction, imported lazily)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .stages import INTRA_PERIOD, MOTION_QUALITY


def synthetic_motion(frames: int, num_kp: int, seed: int) -> np.ndarray:
    """frames×(6+3K) plausible talking-head motion: smooth ±15° head turns, small drift,
    expression random walk (the untrained H/Δ barely moves, so it would code unrealistically
    cheaply)."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames, dtype=np.float64)[:, None] / 25.0
    angles = 15.0 * np.sin(2 * np.pi * t * np.array([0.3, 0.2, 0.1]) + rng.uniform(0, 6, 3))
    translation = 0.05 * np.sin(2 * np.pi * t * np.array([0.15, 0.1, 0.05]))
    expression = np.cumsum(rng.normal(0.0, 0.003, (frames, 3 * num_kp)), axis=0)
    expression = np.clip(expression, -0.1, 0.1)
    return np.concatenate([angles, translation, expression], axis=1).astype(np.float32)


def motion_packer(num_kp: int) -> Callable[[np.ndarray, int], bytes]:
    """(vector, seq) -> the packed motion packet of frame ``seq``: quantize + range code + pack,
    with one encoder state across calls (quality MOTION_QUALITY, intra every INTRA_PERIOD)."""
    from codec.bitstream import MotionPacket
    from codec.motion_coding import MotionEncoder, quant_table

    encoder = MotionEncoder(quant_table(MOTION_QUALITY), 3 * num_kp, INTRA_PERIOD)

    def pack(vector: np.ndarray, seq: int) -> bytes:
        intra, payload = encoder.encode_vector(vector, seq)
        return MotionPacket(seq=seq, timestamp=seq * 40, intra=intra, payload=payload).pack()
    return pack


def encode_packets(vectors: np.ndarray, num_kp: int) -> list[bytes]:
    """The whole motion stream of ``vectors``, one packet a frame."""
    pack = motion_packer(num_kp)
    return [pack(vector, seq) for seq, vector in enumerate(vectors)]


def packet_decoder(packets: list[bytes], num_kp: int) -> Callable[[], np.ndarray]:
    """Next packet -> parse -> range decode -> dequantized vector, cycling the stream."""
    from codec.bitstream import parse_packet
    from codec.motion_coding import MotionDecoder, quant_table

    decoder = MotionDecoder(quant_table(MOTION_QUALITY), 3 * num_kp)
    # cycle only over whole intra periods, so every wrap starts on an intra packet
    usable = len(packets) - len(packets) % INTRA_PERIOD or len(packets)
    counter = iter(range(1 << 62))

    def decode() -> np.ndarray:
        index = next(counter) % usable
        if index == 0:
            decoder.reset()
        packet = parse_packet(packets[index])
        return decoder.decode_vector(packet.intra, packet.seq, packet.payload)
    return decode

