"""Unit tests of the range coder and its deterministic frequency tables."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys

import numpy as np
import pytest

from codec.entropy import (
    MAX_SCALE,
    MIN_SCALE,
    TABLE_TOTAL,
    DiscreteModel,
    decode_symbols,
    encode_symbols,
    estimate_bits,
    gaussian_model,
    laplace_model,
)
from codec.errors import BitstreamError
from codec.motion_coding import NUM_QUALITIES, quant_table


def _analytic_laplace_pmf(scale: float, half_width: int) -> np.ndarray:
    """Float reference: Laplace mass of each unit bin, renormalised over the alphabet."""
    edges = np.arange(-half_width, half_width + 2) - 0.5
    cdf = np.where(edges < 0, 0.5 * np.exp(edges / scale), 1 - 0.5 * np.exp(-edges / scale))
    pmf = np.diff(cdf)
    return pmf / pmf.sum()


@pytest.mark.parametrize("family", ["laplace", "gaussian"])
@pytest.mark.parametrize("scale", [1e-9, 0.01, 0.3, 1.0, 7.5, 300.0, 1e9])
@pytest.mark.parametrize("half_width", [0, 1, 5, 1000])
def test_tables_are_valid(family: str, scale: float, half_width: int) -> None:
    counts = DiscreteModel(family, scale, half_width).frequencies()
    assert counts.shape == (2 * half_width + 1,)
    assert counts.min() >= 1  # every symbol stays codable
    assert counts.sum() <= TABLE_TOTAL
    assert np.array_equal(counts, counts[::-1])  # symmetric
    centre = half_width
    assert np.all(np.diff(counts[centre:]) <= 0)  # non-increasing away from zero


def test_laplace_table_matches_analytic_pmf() -> None:
    scale, half_width = 2.5, 60
    counts = laplace_model(scale, half_width).frequencies()
    reference = _analytic_laplace_pmf(scale, half_width)
    # The floor of one count per symbol moves at most (2N+1)/TABLE_TOTAL of the mass.
    np.testing.assert_allclose(counts / counts.sum(), reference,
                               atol=(2 * half_width + 1) / TABLE_TOTAL)


def test_gaussian_table_matches_sampled_density() -> None:
    sigma, half_width = 3.0, 40
    counts = gaussian_model(sigma, half_width).frequencies()
    k = np.arange(-half_width, half_width + 1)
    reference = np.exp(-k**2 / (2 * sigma**2))
    np.testing.assert_allclose(counts / counts.sum(), reference / reference.sum(),
                               atol=(2 * half_width + 1) / TABLE_TOTAL)


def test_tables_are_bit_exact() -> None:
    """Pinned integer tables: any platform or refactor change would break old streams."""
    assert laplace_model(1.0, 4).frequencies().tolist() == [
        40481, 110039, 299116, 813080, 1668866, 813080, 299116, 110039, 40481]
    assert gaussian_model(1.5, 4).frequencies().tolist() == [
        31938, 151310, 459637, 895250, 1118032, 895250, 459637, 151310, 31938]
    digest = hashlib.sha256()
    for quality in range(NUM_QUALITIES):
        for group in quant_table(quality).groups():
            for model in (group.intra_model(), group.inter_model()):
                digest.update(model.frequencies().astype("<i8").tobytes())
    assert digest.hexdigest() == (
        "650724c0a9a70ebe1c4a888454a83a1817f15d77f91c97e2c309c1f9bb14750b")


@pytest.mark.parametrize("bad_scale", [0.0, -1.0, float("nan"), float("-inf")])
def test_bad_scales_are_clamped(bad_scale: float) -> None:
    assert laplace_model(bad_scale, 3).scale == MIN_SCALE
    assert gaussian_model(float("inf"), 3).scale == MAX_SCALE
    symbols = np.array([0, 3, -3], np.int32)
    model = laplace_model(bad_scale, 3)
    assert np.array_equal(decode_symbols(encode_symbols(symbols, [model] * 3), [model] * 3),
                          symbols)


def test_model_validation() -> None:
    with pytest.raises(ValueError):
        DiscreteModel("cauchy", 1.0, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        laplace_model(1.0, -1)
    with pytest.raises(ValueError):
        laplace_model(1.0, 1 << 20)


@pytest.mark.parametrize("family", ["laplace", "gaussian"])
@pytest.mark.parametrize("scale", [0.05, 1.0, 20.0])
def test_round_trip(family: str, scale: float) -> None:
    rng = np.random.default_rng(0)
    half_width = 100
    symbols = np.clip(np.rint(rng.laplace(0, scale, 500)), -half_width, half_width)
    models = [DiscreteModel(family, scale, half_width)] * len(symbols)
    payload = encode_symbols(symbols.astype(np.int32), models)
    # Trimmed to within a few bytes of the information content (not whole 32-bit words).
    assert 8 * len(payload) <= estimate_bits(symbols, models) + 24
    assert np.array_equal(decode_symbols(payload, models), symbols)


def test_per_position_models_round_trip() -> None:
    rng = np.random.default_rng(1)
    models = [laplace_model(float(s), int(n)) for s, n in
              zip(rng.uniform(0.01, 30, 200), rng.integers(0, 500, 200))]
    symbols = np.array([rng.integers(-m.half_width, m.half_width + 1) for m in models], np.int32)
    payload = encode_symbols(symbols, models)
    assert np.array_equal(decode_symbols(payload, models), symbols)


def test_extreme_symbols_are_codable() -> None:
    """Even symbols with a floored count of one round-trip (no zero-probability symbols)."""
    model = laplace_model(0.01, 1000)
    symbols = np.array([1000, -1000, 0, 999, -1], np.int32)
    assert np.array_equal(decode_symbols(encode_symbols(symbols, [model] * 5), [model] * 5),
                          symbols)


def test_empty() -> None:
    assert encode_symbols(np.zeros(0, np.int32), []) == b""
    assert decode_symbols(b"", []).shape == (0,)
    with pytest.raises(BitstreamError):
        decode_symbols(b"\0\0\0\0", [])


def test_encoder_rejects_caller_bugs() -> None:
    model = laplace_model(1.0, 3)
    with pytest.raises(ValueError):
        encode_symbols(np.array([4], np.int32), [model])
    with pytest.raises(ValueError):
        encode_symbols(np.array([1, 2], np.int32), [model])
    with pytest.raises(ValueError):
        encode_symbols(np.array([0.5]), [model])


def test_decoder_rejects_bad_payloads() -> None:
    model = laplace_model(2.0, 50)
    models = [model] * 40
    symbols = np.arange(-20, 20, dtype=np.int32)
    payload = encode_symbols(symbols, models)
    # A cut payload is rejected, or is the canonical payload of other symbols (byte-trimmed
    # payloads are not prefix-free; the packet's length field is what catches truncation).
    for cut in range(len(payload)):
        try:
            decoded = decode_symbols(payload[:cut], models)
        except BitstreamError:
            continue
        assert not np.array_equal(decoded, symbols)
    with pytest.raises(BitstreamError):
        decode_symbols(payload + b"\0\0\0\0", models)  # not canonical
    with pytest.raises(BitstreamError):
        decode_symbols(payload + b"\0", models)  # a trailing byte: not the canonical encoding
    with pytest.raises(BitstreamError):
        decode_symbols(payload + b"\xff", models)


def test_random_payloads_never_crash() -> None:
    rng = np.random.default_rng(2)
    models = [laplace_model(0.5, 30)] * 3 + [gaussian_model(4.0, 7)] * 10
    for _ in range(500):
        payload = rng.integers(0, 256, 4 * int(rng.integers(0, 6)), dtype=np.uint8).tobytes()
        try:
            decoded = decode_symbols(payload, models)
        except BitstreamError:
            continue
        assert all(abs(int(s)) <= m.half_width for s, m in zip(decoded, models))


def test_estimate_bits_is_close_to_actual_size() -> None:
    rng = np.random.default_rng(3)
    model = laplace_model(3.0, 200)
    symbols = np.rint(rng.laplace(0, 3.0, 2000)).astype(np.int32)
    models = [model] * len(symbols)
    ideal = estimate_bits(symbols, models)
    actual = 8 * len(encode_symbols(symbols, models))
    assert ideal <= actual <= ideal * 1.01 + 64
    assert math.isclose(estimate_bits(symbols[:0], []), 0.0)


def test_imports_without_constriction_or_torch() -> None:
    """This layer must import with numpy alone (constriction is loaded on first use)."""
    code = (
        "import sys; sys.modules['constriction'] = None; sys.modules['torch'] = None\n"
        "import codec.entropy, codec.motion_coding, codec.bitstream\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
