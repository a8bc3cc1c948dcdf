"""A plain seeded mutational fuzzer for the bitstream parsers, the motion decoder and the
full receiver (codec.api.Decoder with the tiny seeded model, rendering what it accepts).

    python -m benchmarks.fuzz_bitstream --inputs 100000 [--seed 0] [--no-decoder]

Each input is either random bytes or a valid seed (stream header with K reference slots,
frame packets of every format-4 form: compact and extended motion, keyframes and patches
naming slots, predicted keyframes; container file, motion payloads) after a few random mutations (bit flips, byte
overwrites with boundary values, truncation, insertion, deletion, duplication, splicing
two seeds); half the mutated headers get their CRC recomputed so the field checks
behind it are reached. It goes to the parser its seed belongs to, and now and then to a random
other one. Only CodecError subclasses may escape; a decoded motion must stay within the
quantizer's bounds. Anything else is a failure: the run prints it and exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import random
import sys
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from codec.bitstream import (
    AudioHeader,
    CompactMotionPacket,
    ContainerWriter,
    HeaderFlags,
    KeyframeCodec,
    KeyframePacket,
    MotionFramer,
    MotionPacket,
    PatchPacket,
    PredictedKeyframePacket,
    StreamHeader,
    parse_packet,
    read_container,
)
from codec.errors import CodecError
from codec.families.base import ModelFamily
from codec.keyframe import encode_keyframe
from codec.motion_coding import MotionDecoder, MotionEncoder, quant_table

EXPRESSION_VALUES = 16
QUALITY = 3
INTRA_PERIOD = 4
REFERENCE_SLOTS = 3
INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF)
MAX_FAILURES_SHOWN = 5


def build_seeds(expression_count: int = EXPRESSION_VALUES, quality: int = QUALITY) -> dict[str, list[bytes]]:
    """Valid inputs for each target: header, frame packets, a container, motion payloads."""
    from codec.families.landmark import pack_keyframe_info

    table = quant_table(quality, ModelFamily.LANDMARK)
    rng = np.random.default_rng(0)
    encoder = MotionEncoder(table, expression_count, INTRA_PERIOD)
    vector = np.zeros(6 + expression_count, np.float32)
    motion = []
    for seq in range(12):
        vector = vector + rng.normal(0, 0.01, vector.shape).astype(np.float32)
        vector[:3] = [10 * np.sin(seq / 5), 5 * np.cos(seq / 7), seq / 4]
        motion.append((seq, *encoder.encode_vector(vector, seq)))
    header = StreamHeader("fv2v-fuzz", bytes(range(8)), 256, 256, int(ModelFamily.LANDMARK),
                          expression_count, 1000, quality, INTRA_PERIOD, table, KeyframeCodec.WEBP,
                          HeaderFlags.UNTRAINED, reference_slots=REFERENCE_SLOTS)
    landmarks = np.stack([np.linspace(60, 200, 68), np.linspace(80, 220, 68)], axis=1)
    packets = [KeyframePacket(0, 0, KeyframeCodec.WEBP, b"RIFF\x08\0\0\0WEBPtiny",
                              pack_keyframe_info(landmarks)).pack(),
               KeyframePacket(0, 0, KeyframeCodec.WEBP, b"RIFF\x08\0\0\0WEBPtwo!",
                              pack_keyframe_info(landmarks), slot=2).pack()]
    framer = MotionFramer(header)
    framer.keyframe(2)
    # Compact packets, and extended ones: timestamps off the grid (frames 3-4), slots named (6, 9).
    packets += [framer.pack(seq + 1, 40 * (seq + 1) + (5 if seq in (3, 4) else 0), intra, payload,
                            {6: 0, 9: 2}.get(seq)) for seq, intra, payload in motion]
    packets += [MotionPacket(20, 800, False, motion[1][2], 1).pack()]  # names a slot never filled
    packets += [PredictedKeyframePacket(21, 840, 2, 0, 1, 22, b"chek", b"\0\0\0\x01\x41inter",
                                        pack_keyframe_info(landmarks),
                                        np.zeros(6 + expression_count, "<f2").tobytes(), slot=1).pack()]
    packets.insert(3, PatchPacket(2, 40, region=0, slot=1, x0=90, y0=150, codec_id=KeyframeCodec.WEBP,
                                  image_bytes=b"RIFF\x08\0\0\0WEBPtiny",
                                  info=np.zeros(6 + expression_count, "<f2").tobytes(), reference=2).pack())
    output = io.BytesIO()
    with ContainerWriter(output, header) as writer:
        writer.write_video_packet(packets[0])
        writer.write_audio_header(AudioHeader("opus", 48000, 1))
        for index, packet in enumerate(packets[1:6]):
            writer.write_video_packet(packet)
            writer.write_audio_packet(960 * index, bytes([0xF8, index]))
    return {
        "header": [header.pack(), dataclasses.replace(header, reference_slots=1).pack(),
                   dataclasses.replace(header, width=1280, height=720,
                                       flags=HeaderFlags.UNTRAINED | HeaderFlags.WHOLE_FRAME).pack()],
        "packet": packets,
        "container": [output.getvalue()],
        "motion": [payload for _, _, payload in motion],
    }


def mutate(data: bytes, rng: random.Random, all_seeds: Sequence[bytes]) -> bytes:
    """Apply 1–4 random mutations to ``data``."""
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        operation = rng.randrange(8)
        position = rng.randint(0, len(buffer))
        if operation == 0 and buffer:  # bit flip
            buffer[rng.randrange(len(buffer))] ^= 1 << rng.randrange(8)
        elif operation == 1 and buffer:  # boundary byte
            buffer[rng.randrange(len(buffer))] = rng.choice(INTERESTING_BYTES)
        elif operation == 2:  # truncate
            del buffer[position:]
        elif operation == 3:  # insert random bytes
            buffer[position:position] = rng.randbytes(rng.randint(1, 16))
        elif operation == 4:  # delete a range
            del buffer[position:position + rng.randint(1, 16)]
        elif operation == 5:  # duplicate a range
            buffer[position:position] = buffer[position:position + rng.randint(1, 32)]
        elif operation == 6:  # splice in part of another seed
            other = rng.choice(all_seeds)
            start = rng.randint(0, len(other))
            buffer[position:] = other[start:start + rng.randint(1, 64)]
        elif operation == 7 and buffer:  # random byte
            buffer[rng.randrange(len(buffer))] = rng.randrange(256)
    return bytes(buffer)


def fix_header_crc(data: bytes) -> bytes:
    """Recompute a (mutated) header's trailing CRC32 so the field checks behind it run."""
    if len(data) < 5:
        return data
    return data[:-4] + zlib.crc32(data[:-4]).to_bytes(4, "little")


class MotionTarget:
    """Feeds payloads to a MotionDecoder that holds a valid reference, and checks bounds."""

    def __init__(self, expression_count: int, quality: int, first_intra_payload: bytes) -> None:
        self.table = quant_table(quality, ModelFamily.LANDMARK)
        self.expression_count = expression_count
        self.first_intra_payload = first_intra_payload
        self.limit = self.table.bounds_vector(expression_count) + self.table.steps_vector(expression_count)
        self.rng = random.Random(1)
        self.decoder = MotionDecoder(self.table, expression_count)
        self.decoder.decode_vector(True, 0, first_intra_payload)

    def __call__(self, payload: bytes) -> None:
        if self.rng.random() < 0.05:  # sometimes start over from a fresh decoder
            self.decoder = MotionDecoder(self.table, self.expression_count)
            self.decoder.decode_vector(True, 0, self.first_intra_payload)
        last_seq = self.decoder.last_seq if self.decoder.last_seq is not None else 0
        seq = last_seq + 1 if self.rng.random() < 0.9 else self.rng.randrange(2**20)
        vector = self.decoder.decode_vector(self.rng.random() < 0.5, seq, payload)
        if not (np.all(np.isfinite(vector)) and np.all(np.abs(vector) <= self.limit)):
            raise AssertionError(f"decoded motion out of bounds: {vector}")


class DecoderTarget:
    """Feeds packets to the full receiver (the default landmark model) after a valid keyframe,
    so mutated motion and keyframe packets reach keyframe decoding, the keyframe's landmark
    info, the motion decoder and the warp. ``whole_frame`` (width, height): a whole-frame
    stream of that size instead of 256-px crops (its own mesh per keyframe, coarse maps)."""

    def __init__(self, whole_frame: tuple[int, int] | None = None) -> None:
        from codec.api import Decoder, Encoder
        from codec.facecrop import FaceCropper
        from codec.zoo import resolve_model
        from sender.sources import default_source

        self.model = resolve_model()
        frames = list(default_source(num_frames=10, size=whole_frame or (256, 256)))
        cropper = FaceCropper(out_size=self.model.image_size)
        box = cropper.fit(frames[:3])
        if whole_frame is not None:
            self.model = self.model.at_size(*whole_frame, whole_frame=True)
            box = None
        encoder = Encoder(self.model, intra_period=INTRA_PERIOD)
        # The Encoder's stream under a header of K = 3: its packets use slot 0; a second keyframe
        # fills slot 2 and extended motion packets name slot 2 and slot 1 (never filled).
        header = dataclasses.replace(StreamHeader.parse(encoder.header()), reference_slots=REFERENCE_SLOTS)
        self.header = header.pack()
        self.packets = []
        for i, frame in enumerate(frames):
            if i == 5:  # a refresh predicted from the reference the receiver holds
                encoder.request_keyframe("fuzz", refresh=True)
            self.packets += encoder.encode(frame if box is None else box.crop(frame, cropper.out_size), i / 25)
        keyframe = parse_packet(self.packets[0], header)
        last = len(frames)
        self.packets += [dataclasses.replace(keyframe, seq=last, slot=2).pack()]
        intra = next(p for p in map(lambda d: parse_packet(d, header), self.packets)
                     if isinstance(p, MotionPacket | CompactMotionPacket) and p.intra)
        self.packets += [MotionPacket(last, 40 * last, True, intra.payload, 2).pack(),
                         MotionPacket(last + 1, 40 * last + 40, True, intra.payload, 1).pack()]
        # The predicted refresh, again, from slot 2 (holds another frame) and slot 1 (empty).
        predicted = next(p for p in map(lambda d: parse_packet(d, header), self.packets)
                         if isinstance(p, PredictedKeyframePacket))
        self.packets += [dataclasses.replace(predicted, base=2, slot=2).pack(),
                         dataclasses.replace(predicted, base=1, slot=0).pack()]
        # A well-formed patch (the scripted portrait never opens its mouth): the patch path is
        # fuzzed too.
        width, height = self.model.frame_size
        source = self.model.prepare_source(np.full((height, width, 3), 128, np.uint8),
                                           self.model.default_keyframe_info())
        motion = self.model.neutral_motion(source)
        self.packets.insert(1, PatchPacket(1, 40, 0, 0, 100, 160, KeyframeCodec.WEBP,
                                           encode_keyframe(np.full((24, 48, 3), 90, np.uint8)),
                                           np.asarray(motion, "<f2").tobytes()).pack())
        self.make_decoder = lambda: Decoder.from_header(self.header, model=self.model)
        self.rng = random.Random(2)
        self.decoder = self.make_decoder()
        self.decoder.decode(self.packets[0])

    def __call__(self, data: bytes) -> None:
        if self.rng.random() < 0.05:
            self.decoder = self.make_decoder()
            self.decoder.decode(self.packets[0])
        frame = self.decoder.decode(data)
        if frame is not None:
            if frame.image.dtype != np.uint8 or not np.all(np.isfinite(frame.motion)):
                raise AssertionError("decoder produced a malformed frame")
            if not 0 <= frame.reference < REFERENCE_SLOTS:
                raise AssertionError(f"frame warped from slot {frame.reference}")


def run(num_inputs: int, seed: int, decoder: bool = True) -> tuple[Counter[str], list[str]]:
    """Fuzz ``num_inputs`` inputs; returns (outcome counts, failure descriptions)."""
    rng = random.Random(seed)
    seeds = build_seeds()
    packet_header = StreamHeader.parse(seeds["header"][0])  # K = REFERENCE_SLOTS
    targets: dict[str, Callable[[bytes], object]] = {
        "header": StreamHeader.parse,
        "packet": lambda data: parse_packet(data, packet_header),
        "container": read_container,
        "motion": MotionTarget(EXPRESSION_VALUES, QUALITY, seeds["motion"][0]),
    }
    if decoder:
        receiver = DecoderTarget()
        targets["decoder"] = receiver
        seeds["decoder"] = receiver.packets
        frame_receiver = DecoderTarget(whole_frame=(320, 240))
        targets["decoder_frame"] = frame_receiver
        seeds["decoder_frame"] = frame_receiver.packets
    all_seeds = [data for group in seeds.values() for data in group]
    names = list(targets)
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    for index in range(num_inputs):
        seed_kind = rng.choice(names)
        if rng.random() < 0.15:
            data = rng.randbytes(rng.randint(0, 256))
        else:
            data = mutate(rng.choice(seeds[seed_kind]), rng, all_seeds)
            if seed_kind == "header" and rng.random() < 0.5:
                data = fix_header_crc(data)
        target = seed_kind if rng.random() < 0.9 else rng.choice(names)
        try:
            targets[target](data)
            outcomes[f"{target}: accepted"] += 1
        except CodecError as error:
            outcomes[f"{target}: {type(error).__name__}"] += 1
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as error:  # noqa: BLE001 (a Rust panic is a BaseException)
            outcomes[f"{target}: FAILURE {type(error).__name__}"] += 1
            if len(failures) < MAX_FAILURES_SHOWN:
                failures.append(f"input {index} to {target}: {data.hex()}\n"
                                + "".join(traceback.format_exception(error)))
    return outcomes, failures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=100_000, help="number of inputs to try")
    parser.add_argument("--seed", type=int, default=0, help="random seed (runs are reproducible)")
    parser.add_argument("--no-decoder", action="store_true",
                        help="skip the full receiver target (parsers and motion decoder only)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    outcomes, failures = run(args.inputs, args.seed, decoder=not args.no_decoder)
    elapsed = time.perf_counter() - started

    for name, count in sorted(outcomes.items()):
        print(f"{count:8d}  {name}")
    failure_count = sum(count for name, count in outcomes.items() if "FAILURE" in name)
    print(f"inputs: {args.inputs}  seed: {args.seed}  wall: {elapsed:.1f} s  "
          f"({1e6 * elapsed / max(args.inputs, 1):.0f} µs/input)  failures: {failure_count}")
    for failure in failures:
        print(failure, file=sys.stderr)
    return 1 if failure_count else 0


if __name__ == "__main__":
    sys.exit(main())
