"""Quantization, temporal prediction and entropy coding of per-frame head motion.

A frame's motion is the flat vector ``[yaw, pitch, roll, t0, t1, t2, e_0 … e_{N-1}]``
(length 6 + N; :mod:`codec.families.base`), in three parameter groups: angles
(degrees), translation and expression, whose units the model family defines. Each
group has its own uniform quantizer (:class:`GroupQuant`); each family has its own
quality ladder (:func:`quant_table`).

- **Intra** packets code the absolute indices with a zero-centred Laplace prior.
- **Inter** packets code the index difference from the previous frame's indices,
  i.e. exactly what the decoder holds (closed loop, so errors never accumulate).
  Residuals wrap modulo the alphabet size, so every residual the decoder can read
  yields an index in range, and both packet kinds share one bounded alphabet.

Entropy-model scales come from the :class:`QuantTable` alone (scale / step, in index
units), so encoder and decoder agree without any adaptive state.

This module is pure numpy + stdlib; the range coder loads constriction on first use.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, fields

import numpy as np

from codec.entropy.coder import DiscreteModel, decode_symbols, encode_symbols, laplace_model
from codec.errors import BitstreamError, MissingReferenceError
from codec.families.base import NUM_POSE_VALUES, ModelFamily, MotionLayout

# Index alphabets stay ≤ 2·MAX_INDEX + 1 symbols (bounds model-table size and cost).
MAX_INDEX = 8191
MAX_EXPRESSION_VALUES = 765  # 3 × 255 keypoints of the vid2vid family


def motion_vector_length(expression_count: int) -> int:
    """Length of the flat motion vector with ``expression_count`` expression values: 6 + N."""
    return NUM_POSE_VALUES + expression_count


def _float32(value: float) -> float:
    """The nearest float32, as a Python float (so the table survives a float32 round trip)."""
    return float(np.float32(value))


@dataclass(frozen=True)
class GroupQuant:
    """Uniform quantizer and entropy-model scales for one parameter group.

    step: quantization step (degrees for angles, volume units otherwise).
    bound: values are clamped to ±bound before quantization, so indices stay within
        ±round(bound/step).
    intra_scale: Laplace diversity of the absolute value (intra prior), same unit as step.
    inter_scale: Laplace diversity of the frame-to-frame change (residual), same unit.
    All four are stored as exact float32 values.
    """

    step: float
    bound: float
    intra_scale: float
    inter_scale: float

    def __post_init__(self) -> None:
        for field in fields(self):
            object.__setattr__(self, field.name, _float32(getattr(self, field.name)))
        values = (self.step, self.bound, self.intra_scale, self.inter_scale)
        if not all(math.isfinite(v) and v > 0 for v in values):
            raise ValueError(f"quantizer values must be finite and > 0, got {values}")
        if self.bound / self.step > MAX_INDEX:
            raise ValueError(f"bound/step = {self.bound / self.step:.0f} exceeds {MAX_INDEX}")

    @property
    def max_index(self) -> int:
        """N: indices lie in [-N, N]. N·step ≥ bound − step/2, so clamped error ≤ step/2."""
        return max(1, round(self.bound / self.step))

    def intra_model(self) -> DiscreteModel:
        return laplace_model(self.intra_scale / self.step, self.max_index)

    def inter_model(self) -> DiscreteModel:
        return laplace_model(self.inter_scale / self.step, self.max_index)


_TABLE_STRUCT = struct.Struct("<12f")


@dataclass(frozen=True)
class QuantTable:
    """Quantizers for the three parameter groups; serialised into the stream header."""

    angles: GroupQuant
    translation: GroupQuant
    expression: GroupQuant

    SERIALIZED_SIZE = _TABLE_STRUCT.size  # 48 bytes: 3 groups × (step, bound, intra, inter)

    def groups(self) -> tuple[GroupQuant, GroupQuant, GroupQuant]:
        return (self.angles, self.translation, self.expression)

    def to_bytes(self) -> bytes:
        """48 bytes: for angles, translation, expression: step, bound, intra, inter (float32 LE)."""
        return _TABLE_STRUCT.pack(*(getattr(group, field.name)
                                    for group in self.groups() for field in fields(group)))

    @classmethod
    def from_bytes(cls, data: bytes) -> QuantTable:
        """Inverse of :meth:`to_bytes`; BitstreamError on wrong size or invalid values."""
        if len(data) != _TABLE_STRUCT.size:
            raise BitstreamError(f"quant table needs {_TABLE_STRUCT.size} bytes, got {len(data)}")
        values = _TABLE_STRUCT.unpack(data)
        try:
            groups = [GroupQuant(*values[4 * i:4 * i + 4]) for i in range(3)]
        except ValueError as error:
            raise BitstreamError(f"invalid quant table: {error}") from error
        return cls(*groups)

    def steps_vector(self, expression_count: int) -> np.ndarray:
        """Per-parameter step, float32 of length 6 + N (handy for error checks)."""
        return self._per_parameter(expression_count, "step")

    def bounds_vector(self, expression_count: int) -> np.ndarray:
        """Per-parameter clamp bound, float32 of length 6 + N."""
        return self._per_parameter(expression_count, "bound")

    def _per_parameter(self, expression_count: int, name: str) -> np.ndarray:
        return np.concatenate([
            np.full(3, getattr(self.angles, name), np.float32),
            np.full(3, getattr(self.translation, name), np.float32),
            np.full(expression_count, getattr(self.expression, name), np.float32),
        ])


# Quality ladders, one per family (index 0 = fewest bits). Bounds never clip real motion
# and keep alphabets ≤ 2·MAX_INDEX + 1 symbols; scales are the Laplace priors (physical
# units, shared by all levels; the coder divides by the step).
#
# vid2vid: keypoints live in [-1, 1]^3; a point at radius ~0.5 moves ~0.0087 units per
# degree, so an angle step of s degrees matches a translation/expression step of ~0.01·s.
# At 256 px one volume unit is 128 px: step 0.02 ≈ 2.6 px (coarse), 0.001 ≈ 0.13 px.
# Intra priors ≈ typical magnitudes (15°, 0.1, 0.03); residual scales ≈ mean absolute
# change per frame at 25 fps of a talking head (0.5°, 0.003, 0.003).
_VID2VID_ANGLE_STEPS = (2.0, 1.0, 0.5, 0.25, 0.15, 0.1)
_VID2VID_TRANSLATION_STEPS = (0.02, 0.01, 0.005, 0.0025, 0.0015, 0.001)
_VID2VID_EXPRESSION_STEPS = (0.02, 0.01, 0.005, 0.0025, 0.0015, 0.001)
#
# landmark: a face ~120 px tall at 256 px spans ~0.9 normalised units, so 1° of yaw moves
# its edge ~1 px; t (normalised crop units, 1 = 128 px) and ln s steps of 0.004 are
# ~0.5 px; an expression coefficient of 0.05 moves the points ~0.25 px RMS. The default
# level keeps each value's rounding error under the landmarks' own jitter (~0.5–1 px).
# Scales from the train split's cached landmarks (every motion vector of 60 segments):
# mean absolute deviation (intra: angles 3–8°, t and ln s 0.05–0.06, coefficients
# 0.04–0.27) and mean absolute change per frame at 25 fps (inter: angles 0.4–1.1°,
# t and ln s 0.006–0.007, coefficients 0.015–0.07).
_LANDMARK_ANGLE_STEPS = (2.0, 1.4, 1.0, 0.7, 0.5, 0.35)
_LANDMARK_TRANSLATION_STEPS = (0.012, 0.008, 0.006, 0.004, 0.003, 0.002)
_LANDMARK_EXPRESSION_STEPS = (0.16, 0.11, 0.08, 0.055, 0.04, 0.028)
ANGLE_BOUND = 90.0
TRANSLATION_BOUND = 1.0
EXPRESSION_BOUND = 1.0
LANDMARK_TRANSLATION_BOUND = 3.0  # t within ±3 crop half-widths, ln s within ±3
LANDMARK_EXPRESSION_BOUND = 4.0
NUM_QUALITIES = len(_VID2VID_ANGLE_STEPS)
DEFAULT_QUALITY = 3
# With the sender's closed loop (codec.refresh) the stream is mostly keyframes, and the finest
# motion costs little beside them: on the rd protocol's dev clips (K = 4, gain 0.1) quality 5
# gave 8.57 kbit/s, LPIPS 0.1118, AKD 1.17 px against quality 3's 8.50, 0.1146, 1.26 (x264's
# AKD at the same LPIPS: 1.19-1.21), its finer motion also rebuilding frames the loop would
# otherwise refresh. With one keyframe, motion is most of what follows it, and quality 3 stays.
CLOSED_LOOP_QUALITY = 5


def default_quality(closed_loop: bool) -> int:
    """The motion quality a sender uses unless told: finer with the closed loop."""
    return CLOSED_LOOP_QUALITY if closed_loop else DEFAULT_QUALITY


def quant_table(quality: int, family: ModelFamily = ModelFamily.VID2VID) -> QuantTable:
    """The table for ``quality`` in 0 … NUM_QUALITIES−1 (0 = fewest bits, highest = finest)."""
    if not isinstance(quality, int) or not 0 <= quality < NUM_QUALITIES:
        raise ValueError(f"quality must be an int in [0, {NUM_QUALITIES - 1}], got {quality!r}")
    if family == ModelFamily.LANDMARK:
        return QuantTable(
            angles=GroupQuant(_LANDMARK_ANGLE_STEPS[quality], ANGLE_BOUND, 8.0, 0.8),
            translation=GroupQuant(_LANDMARK_TRANSLATION_STEPS[quality], LANDMARK_TRANSLATION_BOUND,
                                   0.5, 0.007),
            expression=GroupQuant(_LANDMARK_EXPRESSION_STEPS[quality], LANDMARK_EXPRESSION_BOUND,
                                  0.15, 0.03),
        )
    return QuantTable(
        angles=GroupQuant(_VID2VID_ANGLE_STEPS[quality], ANGLE_BOUND, 15.0, 0.5),
        translation=GroupQuant(_VID2VID_TRANSLATION_STEPS[quality], TRANSLATION_BOUND, 0.1, 0.003),
        expression=GroupQuant(_VID2VID_EXPRESSION_STEPS[quality], EXPRESSION_BOUND, 0.03, 0.003),
    )


def quant_table_for(layout: MotionLayout, quality: int) -> QuantTable:
    """The family's table for a motion layout."""
    return quant_table(quality, layout.family)


class _MotionQuantizer:
    """Shared per-parameter quantization and model layout for encoder and decoder."""

    def __init__(self, table: QuantTable, expression_count: int) -> None:
        if (not isinstance(expression_count, int) or isinstance(expression_count, bool)
                or not 1 <= expression_count <= MAX_EXPRESSION_VALUES):
            raise ValueError(f"expression_count must be in [1, {MAX_EXPRESSION_VALUES}], "
                             f"got {expression_count!r}")
        self.table = table
        self.expression_count = expression_count
        self.vector_length = motion_vector_length(expression_count)
        self.steps = table.steps_vector(expression_count)
        self.bounds = table.bounds_vector(expression_count).astype(np.float64)
        counts = (3, 3, expression_count)
        self.max_indices = np.concatenate(
            [np.full(n, g.max_index, np.int64) for n, g in zip(counts, table.groups())])
        self.alphabet_sizes = 2 * self.max_indices + 1
        self.intra_models: list[DiscreteModel] = [
            g.intra_model() for n, g in zip(counts, table.groups()) for _ in range(n)]
        self.inter_models: list[DiscreteModel] = [
            g.inter_model() for n, g in zip(counts, table.groups()) for _ in range(n)]

    def quantize(self, vector: np.ndarray, fallback: np.ndarray) -> np.ndarray:
        """Clamp and round to int64 indices; NaN entries take ``fallback``'s index (hold)."""
        values = np.asarray(vector, np.float64).reshape(-1)
        if values.shape != (self.vector_length,):
            raise ValueError(f"motion vector has {values.size} values, "
                             f"expected {self.vector_length} (6 + {self.expression_count})")
        clamped = np.clip(values, -self.bounds, self.bounds)  # ±inf clamp to ±bound
        finite = np.isfinite(clamped)
        indices = np.rint(np.where(finite, clamped, 0.0) / self.steps).astype(np.int64)
        indices = np.clip(indices, -self.max_indices, self.max_indices)
        return np.where(finite, indices, fallback)

    def dequantize(self, indices: np.ndarray) -> np.ndarray:
        """Indices → float32 values (float32 product, identical on every machine)."""
        return indices.astype(np.float32) * self.steps

    def wrap(self, residual: np.ndarray) -> np.ndarray:
        """Map an index difference into [-N, N] modulo 2N+1 (both sides use this)."""
        return (residual + self.max_indices) % self.alphabet_sizes - self.max_indices


class _MotionCoder:
    """What the encoder and the decoder share: one quantizer for one table and layout."""

    def __init__(self, table: QuantTable, expression_count: int) -> None:
        self._quantizer = _MotionQuantizer(table, expression_count)

    @property
    def table(self) -> QuantTable:
        return self._quantizer.table

    @property
    def expression_count(self) -> int:
        return self._quantizer.expression_count


class MotionEncoder(_MotionCoder):
    """Quantizes and codes one motion vector per frame into intra or inter payloads.

    Intra when: no previous frame, ``force_intra()`` was called, the sequence number
    is not exactly the previous one + 1, or ``intra_period`` frames have passed since
    the last intra (intra_period = 1 makes every packet intra).
    """

    def __init__(self, table: QuantTable, expression_count: int, intra_period: int) -> None:
        if not isinstance(intra_period, int) or intra_period < 1:
            raise ValueError(f"intra_period must be an int ≥ 1, got {intra_period!r}")
        super().__init__(table, expression_count)
        self.intra_period = intra_period
        self._previous_indices: np.ndarray | None = None
        self._previous_seq: int | None = None
        self._last_intra_seq: int | None = None
        self._intra_forced = False

    def force_intra(self) -> None:
        """Make the next packet intra (after a keyframe or a loss report)."""
        self._intra_forced = True

    @property
    def last_decoded(self) -> np.ndarray | None:
        """The vector the decoder holds after the last packet (float32), or None before any:
        what the receiver renders, so the sender can render it too."""
        if self._previous_indices is None:
            return None
        return self._quantizer.dequantize(self._previous_indices)

    def preview(self, vector: np.ndarray) -> np.ndarray:
        """The vector the decoder would hold if ``vector`` were coded next (intra or inter
        alike), without coding it: the sender renders candidates before choosing one."""
        quantizer = self._quantizer
        previous = self._previous_indices
        fallback = np.zeros(quantizer.vector_length, np.int64) if previous is None else previous
        return quantizer.dequantize(quantizer.quantize(vector, fallback))

    def encode_vector(self, vector: np.ndarray, seq: int) -> tuple[bool, bytes]:
        """Code one frame's flat 6 + N vector; returns (is_intra, payload)."""
        if not isinstance(seq, int) or seq < 0:
            raise ValueError(f"seq must be a non-negative int, got {seq!r}")
        quantizer = self._quantizer
        previous = self._previous_indices
        is_intra = (
            previous is None
            or self._intra_forced
            or seq != self._previous_seq + 1
            or seq - self._last_intra_seq >= self.intra_period
        )
        # NaN holds the previous value (residual 0), or 0 in an intra frame.
        fallback = np.zeros(quantizer.vector_length, np.int64) if previous is None else previous
        indices = quantizer.quantize(vector, fallback)
        if is_intra:
            payload = encode_symbols(indices, quantizer.intra_models)
            self._last_intra_seq = seq
            self._intra_forced = False
        else:
            payload = encode_symbols(quantizer.wrap(indices - previous), quantizer.inter_models)
        self._previous_indices = indices
        self._previous_seq = seq
        return is_intra, payload


class MotionDecoder(_MotionCoder):
    """Inverse of :class:`MotionEncoder`: payloads back to dequantized motion.

    An inter packet needs the frame just before it: a seq other than last decoded + 1
    raises MissingReferenceError and leaves the state untouched, so a lost packet costs
    frames only until the next intra and never causes drift. The decoder does not order
    packets: drop stale ones (seq ≤ ``last_seq``) before calling it.
    """

    def __init__(self, table: QuantTable, expression_count: int) -> None:
        super().__init__(table, expression_count)
        self._previous_indices: np.ndarray | None = None
        self._previous_seq: int | None = None

    @property
    def last_seq(self) -> int | None:
        """Sequence number of the last successfully decoded packet (None before any)."""
        return self._previous_seq

    def reset(self) -> None:
        """Forget the reference; the next packet must be intra."""
        self._previous_indices = None
        self._previous_seq = None

    def decode_vector(self, is_intra: bool, seq: int, payload: bytes) -> np.ndarray:
        """Decode one payload into the flat float32 6 + N vector.

        Raises MissingReferenceError for an inter packet without its reference and
        BitstreamError for a malformed payload; on either, the state is unchanged.
        """
        if not isinstance(seq, int) or seq < 0:
            raise ValueError(f"seq must be a non-negative int, got {seq!r}")
        quantizer = self._quantizer
        if is_intra:
            indices = decode_symbols(payload, quantizer.intra_models).astype(np.int64)
        else:
            previous = self._previous_indices
            if previous is None or seq != self._previous_seq + 1:
                raise MissingReferenceError(
                    f"inter motion packet {seq} needs packet {seq - 1}, "
                    f"last decoded is {self._previous_seq}")
            residual = decode_symbols(payload, quantizer.inter_models).astype(np.int64)
            indices = quantizer.wrap(previous + residual)
        self._previous_indices = indices
        self._previous_seq = seq
        return quantizer.dequantize(indices)
