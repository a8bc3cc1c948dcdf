"""Entropy coding behind a small interface: integer symbols in, bytes out.

See :mod:`codec.entropy.coder` for the deterministic model tables and the payload format.
"""

from codec.entropy.coder import (
    MAX_HALF_WIDTH,
    MAX_SCALE,
    MIN_SCALE,
    TABLE_TOTAL,
    DiscreteModel,
    clamp_scale,
    decode_symbols,
    encode_symbols,
    estimate_bits,
    gaussian_model,
    laplace_model,
)

__all__ = [
    "MAX_HALF_WIDTH", "MAX_SCALE", "MIN_SCALE", "TABLE_TOTAL", "DiscreteModel", "clamp_scale",
    "decode_symbols", "encode_symbols", "estimate_bits", "gaussian_model", "laplace_model",
]
