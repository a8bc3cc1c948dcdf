"""benchmarks.rd and benchmarks.report: curve maths with known answers, an x264 round trip
on a tiny synthetic clip, and the README rewrite staying between its markers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks import rd, report


def _curve(rates: np.ndarray) -> np.ndarray:
    """A smooth, monotone synthetic quality curve (PSNR-like) of log-rate."""
    return 20.0 + 6.0 * np.log(rates) - 0.2 * np.log(rates) ** 2


def test_bd_rate_half_rate_is_minus_50_percent() -> None:
    rates = np.array([10.0, 20.0, 40.0, 80.0])
    quality = _curve(rates)
    # B reaches every quality of A at half the rate.
    assert rd.bd_rate(rates, quality, rates / 2, quality) == pytest.approx(-50.0, abs=1e-6)
    assert rd.bd_rate(rates, quality, rates * 2, quality) == pytest.approx(100.0, abs=1e-6)
    # A lower-is-better metric (LPIPS-like) gives the same answer: integration is over quality.
    lpips = 1.0 / quality
    assert rd.bd_rate(rates, lpips, rates / 2, lpips) == pytest.approx(-50.0, abs=1e-6)


def test_bd_rate_none_without_overlap() -> None:
    rates = np.array([10.0, 20.0, 40.0])
    assert rd.bd_rate(rates, [1.0, 2.0, 3.0], rates, [4.0, 5.0, 6.0]) is None
    assert rd.bd_rate(rates, [1.0, 1.0, 1.0], rates, [1.0, 2.0, 3.0]) is None


def test_rate_for_quality_interpolates_log_rate() -> None:
    rates = [10.0, 40.0]
    lpips = [0.30, 0.10]
    # Halfway in LPIPS is the geometric mean of the rates.
    assert rd.rate_for_quality(rates, lpips, 0.20, lower_is_better=True) == pytest.approx(20.0)
    assert rd.rate_for_quality(rates, lpips, 0.05, lower_is_better=True) is None
    assert rd.rate_for_quality(rates, lpips, 0.40, lower_is_better=True) is None
    # A non-monotone point (a worse result at a higher rate) is ignored.
    assert rd.rate_for_quality([10.0, 15.0, 40.0], [0.30, 0.35, 0.10], 0.20,
                               lower_is_better=True) == pytest.approx(20.0)


def test_headline_ratio_and_akd_condition() -> None:
    x264 = [{"payload_kbps": 10.0, "lpips": 0.30, "akd": 4.0},
            {"payload_kbps": 40.0, "lpips": 0.10, "akd": 2.0}]
    ours = {"payload_kbps": 2.0, "lpips": 0.20, "akd": 2.5}
    h = rd.headline(ours, x264)
    assert h["x264_kbps"] == pytest.approx(20.0)
    assert h["ratio"] == pytest.approx(10.0)
    assert h["x264_akd_at_match"] == pytest.approx(3.0)
    assert h["counted"] is True
    worse = rd.headline(ours | {"akd": 3.5}, x264)
    assert worse["ratio"] == pytest.approx(10.0) and worse["counted"] is False
    out_of_range = rd.headline(ours | {"lpips": 0.05}, x264)
    assert out_of_range["ratio"] is None and out_of_range["counted"] is False


def test_x264_two_crfs_on_tiny_clip() -> None:
    rng = np.random.default_rng(0)
    # A smooth moving pattern plus a little noise: compressible, but not trivially.
    yy, xx = np.mgrid[0:128, 0:128]
    frames = []
    for t in range(10):
        base = 128 + 60 * np.sin((xx + 3 * t) / 9.0) * np.cos((yy - 2 * t) / 13.0)
        image = np.stack([base, np.roll(base, 7, axis=1), 255 - base], axis=-1)
        image = image + rng.normal(0, 4, image.shape)
        frames.append(np.clip(image, 0, 255).astype(np.uint8))
    crops = np.stack(frames)
    settings = {s.name: s for s in rd._pyav_settings("x264")}
    low = rd.run_pyav(crops, settings["crf24"].params)
    high = rd.run_pyav(crops, settings["crf44"].params)
    assert len(low.decoded) == len(high.decoded) == 10
    assert high.frame_bytes.sum() < low.frame_bytes.sum()
    assert low.extra["x264_sei_bytes"] > 300  # the version SEI is found (and not counted)
    for run, (lo, hi) in ((low, (28.0, 60.0)), (high, (18.0, 45.0))):
        mse = np.mean((np.stack(run.decoded).astype(float) - crops.astype(float)) ** 2)
        psnr = 10 * math.log10(255.0 ** 2 / max(mse, 1e-9))
        assert lo < psnr < hi
    assert rd.summarize({"psnr": np.ones(10)}, low)["payload_kbps"] > 0


def test_x264_version_sei_detection() -> None:
    sei = b"\x00\x00\x00\x01\x06\x05\x10" + b"x264 - core 165" + b"\x80"
    slice_nal = b"\x00\x00\x01\x65\x88\x84"
    assert rd.x264_version_sei_bytes(sei + slice_nal) == len(sei)
    assert rd.x264_version_sei_bytes(slice_nal) == 0


def test_report_rewrites_only_between_markers(tmp_path) -> None:
    results = tmp_path / "rd" / "results.json"
    results.parent.mkdir()
    row = {"codec": "x264", "setting": "crf51", "clips": 1, "payload_kbps": 9.5, "lpips": 0.3}
    results.write_text(json.dumps({"name": "t", "env": {"git_sha": "abc123"}, "command": "cmd",
                                   "untrained": True, "averages": [row], "plots": ["rd_lpips.png"],
                                   "clips": ["a.mp4"], "analysis": {"headline": []}}))
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nintro\n")
    assert report.main([str(results), "--readme", str(readme)]) == 0
    first = readme.read_text()
    assert first.startswith("# Title\n\nintro\n")
    assert report.START in first and report.END in first and "abc123" in first
    assert "UNTRAINED" in first and "rd/rd_lpips.png" in first
    # Text after the section survives a rewrite; the section is replaced, not duplicated.
    readme.write_text(first + "\n## After\n\nkept\n")
    row["payload_kbps"] = 7.25
    results.write_text(json.dumps(json.loads(results.read_text()) | {"averages": [row]}))
    assert report.main([str(results), "--readme", str(readme)]) == 0
    second = readme.read_text()
    assert second.count(report.START) == 1 and second.endswith("## After\n\nkept\n")
    assert "7.25" in second and "9.5 " not in second
    assert second.split(report.START)[0] == first.split(report.START)[0]
