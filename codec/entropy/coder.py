"""Range coding of integer symbols with deterministic, integer frequency tables.

The entropy models are ours, not constriction's: each table is computed in exact
integer arithmetic from one scale and an alphabet half-width, so the encoder and the
decoder build bit-identical tables on any machine, any OS and any numpy build
(``np.exp`` and libm may differ in the last ulp between platforms; ``decimal`` is
correctly rounded everywhere and Python integers are exact). Constriction only does
the arithmetic coding: each table goes to a ``Categorical(perfect=False)`` model,
built once per table and cached.

Symbols are signed integers in ``[-half_width, half_width]``; the coder shifts them to
constriction's ``{0, …, 2·half_width}`` alphabet. Constriction writes uint32 words; we
serialise them big-endian (so the last bytes are the least significant ones of the
final word) and then drop trailing bytes for as long as the payload, padded back to
whole words plus one word with 0xFF bytes, still decodes to the same symbols (0xFF keeps
the truncated point inside the final interval, where zeros would fall below it). A
motion packet carries ~40 bits of information, and whole words would round that up to
64–96 bits; trimmed, it costs about a byte more than its information.

constriction is imported inside the functions that use it, so this module (and
everything that imports it) loads without constriction installed.
"""

from __future__ import annotations

import decimal
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from codec.errors import BitstreamError

ModelFamily = Literal["laplace", "gaussian"]

# Scales are in symbol (quantization-index) units. Constriction panics (an uncatchable
# Rust panic) on a non-positive std, and our tables degenerate for extreme values, so
# every scale is clamped into this range first; NaN becomes the minimum.
MIN_SCALE = 0.01
MAX_SCALE = 1.0e5
# Largest alphabet half-width: 65 537 symbols keeps every floored count a small
# fraction of TABLE_TOTAL and far below constriction's 24-bit precision.
MAX_HALF_WIDTH = 1 << 15
# Integer total of each frequency table before constriction renormalises it. Every
# symbol gets at least one count, so the tails cost at most (2N+1)/2^22 of the mass.
TABLE_TOTAL = 1 << 22

# Fixed-point precision of the table recurrences (weights are multiples of 2^-62).
_FRACTION_BITS = 62
_ONE = 1 << _FRACTION_BITS
_DECIMAL_CONTEXT = decimal.Context(prec=50)


@dataclass(frozen=True)
class DiscreteModel:
    """A symmetric, zero-centred distribution over the integers ``[-half_width, half_width]``.

    family: "laplace" (a Laplace density integrated over unit bins) or "gaussian"
        (a Gaussian density sampled at the integers).
    scale: Laplace diversity b or Gaussian σ, in symbol units; clamped on construction.
    half_width: N; the alphabet has 2N+1 symbols.
    """

    family: ModelFamily
    scale: float
    half_width: int

    def __post_init__(self) -> None:
        if self.family not in ("laplace", "gaussian"):
            raise ValueError(f"unknown model family {self.family!r}")
        if not isinstance(self.half_width, int) or not 0 <= self.half_width <= MAX_HALF_WIDTH:
            raise ValueError(f"half_width must be an int in [0, {MAX_HALF_WIDTH}], "
                             f"got {self.half_width!r}")
        object.__setattr__(self, "scale", clamp_scale(self.scale))

    @property
    def alphabet_size(self) -> int:
        return 2 * self.half_width + 1

    def frequencies(self) -> np.ndarray:
        """Integer counts, int64 of length 2N+1 (index i is symbol i − N), each ≥ 1."""
        return np.array(_frequency_table(self.family, self.scale, self.half_width), np.int64)

    def information_bits(self, symbols: np.ndarray) -> float:
        """Ideal code length of ``symbols`` under this table, in bits (for rate estimates)."""
        counts = self.frequencies()
        shifted = np.asarray(symbols, np.int64) + self.half_width
        return float(-np.log2(counts[shifted] / counts.sum()).sum())


def clamp_scale(scale: float) -> float:
    """Clamp a scale into [MIN_SCALE, MAX_SCALE]; NaN maps to MIN_SCALE."""
    value = float(scale)
    if math.isnan(value):
        return MIN_SCALE
    return min(max(value, MIN_SCALE), MAX_SCALE)


def laplace_model(scale: float, half_width: int) -> DiscreteModel:
    """Quantized Laplace: P(k) ∝ ∫ over [k−½, k+½] of exp(−|x|/scale)."""
    return DiscreteModel("laplace", scale, half_width)


def gaussian_model(scale: float, half_width: int) -> DiscreteModel:
    """Discretised Gaussian: P(k) ∝ exp(−k² / 2σ²) with σ = scale."""
    return DiscreteModel("gaussian", scale, half_width)


def _fixed_exp(exponent: decimal.Decimal) -> int:
    """floor(exp(exponent) · 2^62) for exponent ≤ 0, computed with correctly rounded decimals."""
    value = _DECIMAL_CONTEXT.exp(exponent)
    return int(_DECIMAL_CONTEXT.multiply(value, decimal.Decimal(_ONE)))


def _one_sided_weights(family: str, scale: float, half_width: int) -> list[int]:
    """Fixed-point weights w_0 … w_N (w_0 = 2^62) of the non-negative half of the pmf."""
    scale_dec = decimal.Decimal(scale)  # exact conversion of the float
    weights = [_ONE]
    if half_width == 0:
        return weights
    if family == "laplace":
        # With s = exp(−1/2b): P(k)/P(0) = s(1+s)/2 · s^(2(k−1)) for k ≥ 1.
        half_decay = _fixed_exp(_DECIMAL_CONTEXT.divide(decimal.Decimal(-0.5), scale_dec))
        decay = (half_decay * half_decay) >> _FRACTION_BITS
        weight = (half_decay * (_ONE + half_decay)) >> (_FRACTION_BITS + 1)
        ratio = decay
        ratio_step = _ONE  # constant ratio
    else:
        # With q = exp(−1/2σ²): P(k)/P(k−1) = q^(2k−1), so the ratio itself shrinks by q².
        variance_term = _DECIMAL_CONTEXT.multiply(decimal.Decimal(2), scale_dec * scale_dec)
        q = _fixed_exp(_DECIMAL_CONTEXT.divide(decimal.Decimal(-1), variance_term))
        weight = q
        ratio = (q * q * q) >> (2 * _FRACTION_BITS)  # q^3 for the step 1 → 2
        ratio_step = (q * q) >> _FRACTION_BITS
    for _ in range(1, half_width + 1):
        weights.append(weight)
        if weight == 0:
            break  # all further weights underflow too; pad below
        weight = (weight * ratio) >> _FRACTION_BITS
        ratio = (ratio * ratio_step) >> _FRACTION_BITS
    weights.extend([0] * (half_width + 1 - len(weights)))
    return weights


@functools.lru_cache(maxsize=256)
def _frequency_table(family: str, scale: float, half_width: int) -> tuple[int, ...]:
    """Integer counts for symbols −N … N: scaled weights floored, plus one (sum ≤ TABLE_TOTAL)."""
    one_sided = _one_sided_weights(family, scale, half_width)
    symmetric = one_sided[:0:-1] + one_sided  # w_N … w_1, w_0, w_1 … w_N
    weight_sum = sum(symmetric)
    spare = TABLE_TOTAL - len(symmetric)  # counts left after the floor of one per symbol
    return tuple(1 + (w * spare) // weight_sum for w in symmetric)


@functools.lru_cache(maxsize=256)
def _constriction_model(model: DiscreteModel) -> Any:
    """The constriction Categorical for ``model``; built once per table (costly for big N)."""
    import constriction  # submodules are attributes of the extension, not importable paths

    # Integer counts are exact in float64, so constriction sees identical input everywhere.
    probabilities = np.array(_frequency_table(model.family, model.scale, model.half_width),
                             np.float64)
    return constriction.stream.model.Categorical(probabilities, perfect=False)


def _runs(models: Sequence[DiscreteModel]) -> list[tuple[int, int, DiscreteModel]]:
    """Split positions into maximal runs (start, stop, model) sharing one model.

    Each run is coded with one vectorised constriction call instead of one per symbol.
    """
    runs: list[tuple[int, int, DiscreteModel]] = []
    start = 0
    for position in range(1, len(models) + 1):
        if position == len(models) or models[position] != models[start]:
            runs.append((start, position, models[start]))
            start = position
    return runs


def encode_symbols(symbols: np.ndarray, models: Sequence[DiscreteModel]) -> bytes:
    """Range-code ``symbols`` (1-D ints, one model per position) into trimmed big-endian words.

    Raises ValueError if a symbol lies outside its model's alphabet or the lengths differ
    (both are caller bugs, not bad input). Zero symbols give an empty payload.
    """
    values = np.asarray(symbols)
    if values.ndim != 1 or len(values) != len(models):
        raise ValueError(f"need a 1-D symbol array with one model per position, got shape "
                         f"{values.shape} and {len(models)} models")
    if len(values) == 0:
        return b""
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"symbols must be integers, got dtype {values.dtype}")
    import constriction

    encoder = constriction.stream.queue.RangeEncoder()
    for start, stop, model in _runs(models):
        run = values[start:stop].astype(np.int64)
        if np.any(np.abs(run) > model.half_width):
            raise ValueError(f"symbol outside [-{model.half_width}, {model.half_width}] "
                             f"at positions {start}..{stop - 1}")
        # Constriction wants 1-D int32 in {0, …, 2N}.
        encoder.encode((run + model.half_width).astype(np.int32), _constriction_model(model))
    data = encoder.get_compressed().astype(">u4").tobytes()
    expected = values.astype(np.int64)
    # Shortest prefix that still decodes exactly (the decoder pads with 0xFF).
    while data:
        shorter = data[:-1]
        try:
            if not np.array_equal(_decode_words(shorter, models), expected):
                break
        except Exception:  # noqa: BLE001 — a prefix constriction rejects is simply too short
            break
        data = shorter
    return data


def _decode_words(data: bytes, models: Sequence[DiscreteModel]) -> np.ndarray:
    """Decode ``len(models)`` symbols from ``data`` padded with 0xFF to whole words + one word."""
    import constriction

    padded = data + b"\xff" * (-len(data) % 4 + 4)
    words = np.frombuffer(padded, ">u4").astype(np.uint32)  # native order for constriction
    decoder = constriction.stream.queue.RangeDecoder(words)
    decoded = np.empty(len(models), np.int64)
    for start, stop, model in _runs(models):
        shifted = decoder.decode(_constriction_model(model), stop - start)
        decoded[start:stop] = np.asarray(shifted, np.int64) - model.half_width
    return decoded


def decode_symbols(payload: bytes, models: Sequence[DiscreteModel]) -> np.ndarray:
    """Decode exactly ``len(models)`` symbols from ``payload``; returns int32 symbols.

    Constriction returns garbage, not an error, when asked for more symbols than were
    coded, so the count is always the caller's. The payload must also be the canonical
    encoding of what it decodes to (it is re-encoded and compared), so corruption that
    happens to decode is still rejected. Any malformed payload raises BitstreamError.
    """
    data = bytes(payload)
    if len(models) == 0:
        if data:
            raise BitstreamError("entropy payload has data but no symbols to decode")
        return np.zeros(0, np.int32)
    try:
        decoded = _decode_words(data, models).astype(np.int32)
    except Exception as error:  # constriction signals invalid data with AssertionError
        raise BitstreamError(f"entropy payload is not valid for its models: {error}") from error
    if encode_symbols(decoded, models) != data:
        raise BitstreamError("entropy payload is not the canonical encoding of its symbols")
    return decoded


def estimate_bits(symbols: np.ndarray, models: Sequence[DiscreteModel]) -> float:
    """Ideal (information-content) size of ``symbols`` in bits, before 32-bit word rounding."""
    values = np.asarray(symbols)
    return sum(model.information_bits(values[start:stop])
               for start, stop, model in _runs(models))
