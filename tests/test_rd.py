"""benchmarks.rd and benchmarks.report: curve maths with known answers, an x264 round trip
on a tiny synthetic clip, and the README and docs/results.md rewrites staying between their
markers (more on the report in test_report.py)."""

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


def test_headlines_against_av1_and_in_the_steady_state() -> None:
    """analysis' "headline_vs": the same matched-LPIPS ratio against SVT-AV1's payload curve and
    against x264's steady-state rate; nothing where a run lacks that codec or that rate."""
    from benchmarks.rd.curves import analysis, headlines_against

    def row(codec, setting, kbps, steady, lpips, akd):
        return {"codec": codec, "setting": setting, "payload_kbps": kbps, "wire_kbps": kbps + 1,
                "steady_kbps": steady, "lpips": lpips, "akd": akd}

    averages = [row("ours", "q3-kf0", 4.0, 1.0, 0.20, 2.5),
                row("x264", "crf51", 10.0, 8.0, 0.30, 4.0), row("x264", "crf44", 40.0, 32.0, 0.10, 2.0),
                row("av1", "crf63", 8.0, 6.0, 0.25, 2.0), row("av1", "crf52", 16.0, 12.0, 0.15, 1.5)]
    [av1] = headlines_against(averages, "av1", "payload_kbps")
    assert av1["against"] == "av1" and av1["av1_kbps"] == pytest.approx(8.0 * 2 ** 0.5)
    assert av1["ratio"] == pytest.approx(2 * 2 ** 0.5) and av1["counted"] is False  # AKD 2.5 > 1.75
    assert "av1's" in av1["reason"]
    [steady] = headlines_against(averages, "x264", "steady_kbps")
    assert steady["x264_kbps"] == pytest.approx(16.0) and steady["ratio"] == pytest.approx(16.0)
    assert steady["counted"] is True
    assert [(h["against"], h["rate_key"]) for h in analysis(averages)["headline_vs"]] == [
        ("av1", "payload_kbps"), ("x264", "steady_kbps")]
    no_steady = [a | {"steady_kbps": None} if a["codec"] == "x264" else a for a in averages]
    assert headlines_against(no_steady, "x264", "steady_kbps") == []
    assert "headline_vs" not in analysis([a for a in no_steady if a["codec"] != "av1"])


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
    assert report.START in first and report.END in first and "9.5" in first
    assert first.count("## Results") == 1  # no heading above the markers: the section has it
    assert "UNTRAINED" in first and "](docs/results.md)" in first
    # The full results go to docs/results.md beside the README, created with its title.
    docs = (tmp_path / "docs" / "results.md").read_text()
    assert docs.startswith("# Results\n") and "## Results" not in docs
    assert "abc123" in docs and "UNTRAINED" in docs and "](../rd/rd_lpips.png)" in docs
    # Text after the section survives a rewrite; the section is replaced, not duplicated.
    readme.write_text(first + "\n## After\n\nkept\n")
    row["payload_kbps"] = 7.25
    results.write_text(json.dumps(json.loads(results.read_text()) | {"averages": [row]}))
    assert report.main([str(results), "--readme", str(readme)]) == 0
    second = readme.read_text()
    assert second.count(report.START) == 1 and second.endswith("## After\n\nkept\n")
    assert "7.25" in second and "9.5 " not in second
    assert second.split(report.START)[0] == first.split(report.START)[0]


def _moving_clip(n: int, size: int, seed: int = 0) -> np.ndarray:
    """A small synthetic clip with motion (no face: only pixel metrics apply)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    frames = []
    for t in range(n):
        base = 128 + 60 * np.sin((xx + 3 * t) / 9.0) * np.cos((yy - 2 * t) / 13.0)
        image = np.stack([base, np.roll(base, 5, axis=1), 255 - base], axis=-1)
        frames.append(np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8))
    return np.stack(frames)


def test_scored_indices_and_ours_renders_only_scored_frames(tiny_model) -> None:
    assert rd.scored_indices(12, 5).tolist() == [0, 5, 10]
    assert rd.scored_indices(3, 1).tolist() == [0, 1, 2]
    with pytest.raises(ValueError):
        rd.scored_indices(3, 0)
    crops = _moving_clip(12, 64)
    full = rd.run_ours(crops, tiny_model, quality=2, keyframe_refresh_s=0.0)
    model = tiny_model.network
    calls = []
    original = model.render
    model.render = lambda *a, **k: calls.append(a[1].shape[0]) or original(*a, **k)
    try:
        sampled = rd.run_ours(crops, tiny_model, quality=2, keyframe_refresh_s=0.0, metric_every=5)
    finally:
        del model.render
    # Every frame is encoded and its bits counted; only frames 0, 5, 10 cost a generator call.
    assert np.array_equal(sampled.frame_bytes, full.frame_bytes) and len(full.frame_bytes) == 12
    assert sum(calls) == 3 and sampled.rendered == 3 and full.rendered is None
    index, decoded = sampled.scored_frames(5)
    assert index.tolist() == [0, 5, 10] and len(decoded) == 3
    # Skipped frames still advance the motion chain, so the rendered ones match a full decode.
    for i, image in zip(index, decoded):
        assert np.array_equal(image, full.decoded[i])
    full_index, full_decoded = full.scored_frames(5)
    assert full_index.tolist() == [0, 5, 10] and np.array_equal(full_decoded[2], full.decoded[10])
    with pytest.raises(ValueError):
        sampled.scored_frames(4)
    row = rd.summarize({"psnr": np.ones(3)}, sampled, metric_every=5)
    assert row["frames"] == 12 and row["scored_frames"] == 3 and row["metric_every"] == 5
    assert row["decoded_frames"] == 3
    assert row["payload_kbps"] == pytest.approx(8 * full.frame_bytes.sum() / (12 / rd.FPS) / 1000)


def test_main_metric_every_end_to_end(tmp_path, tiny_model) -> None:
    """The driver on a cached synthetic 'clip': rows, JSON, summary and resume all carry the
    sampling; bits count all 10 frames, metrics only frames 0, 4, 8."""
    frames, every = 10, 4
    manifest = tmp_path / "MANIFEST.tsv"
    manifest.write_text("path\tsplit\nsynthetic/a.mp4\tdev\n")
    out = tmp_path / "rd"
    (out / "crops").mkdir(parents=True)
    np.save(out / "crops" / f"{rd.slug('synthetic/a.mp4')}_256px_{frames}f.npy",
            _moving_clip(frames, 256))
    argv = ["--manifest", str(manifest), "--split", "dev", "--frames", str(frames),
            "--out", str(out), "--codecs", "ours,x264,frozen", "--model", "tiny", "--untrained",
            "--qualities", "0,3", "--keyframe-refresh", "0,0.2@3", "--sweep", "quick",
            "--metric-every", str(every), "--metrics", "psnr", "--threads", "1"]
    assert rd.main(argv) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["metric_every"] == every and data["untrained"] is True
    assert "every 4th frame" in data["protocol"]
    assert any("every 4th frame" in note for note in data["notes"])
    settings = {(r["codec"], r["setting"]) for r in data["results"]}
    assert {("ours", "q0-kf0"), ("ours", "q3-kf0"), ("ours", "q3-kf0.2"),
            ("frozen", "webp-q90"), ("x264", "crf51")} <= settings
    assert ("ours", "q0-kf0.2") not in settings  # "R@Q": that refresh at quality Q only
    for row in data["results"]:
        assert row["metric_every"] == every and row["scored_frames"] == 3
        assert row["frames"] == frames and row["psnr"] is not None and row["lpips"] is None
        name = rd.slug(f"{row['codec']}_{row['setting']}_synthetic/a.mp4")
        perframe = np.load(out / "perframe" / f"{name}.npz")
        assert perframe["frame_bytes"].shape == (frames,) and perframe["scored"].tolist() == [0, 4, 8]
        assert perframe["psnr"].shape == (3,)
    kf = next(r for r in data["results"] if r["setting"] == "q3-kf0.2")
    assert kf["extra"]["keyframes"] == 2 and kf["extra"]["rendered_frames"] == 3
    assert all(a["scored_frames"] == 3 for a in data["averages"])
    summary = (out / "summary.md").read_text()
    assert "UNTRAINED" in summary and "every 4th frame" in summary and "3 of 10" in summary
    # Resumed: nothing to re-run, and the wall time of each invocation is kept.
    assert rd.main(argv) == 0
    again = json.loads((out / "results.json").read_text())
    assert len(again["results"]) == len(data["results"])
    assert len(again["wall_s_invocations"]) == 2


def test_report_publish_with_speed(tmp_path) -> None:
    """--publish copies the JSON (compact), summary and plots into a committed folder and the
    README links to the copies; --speed adds the speed table; only the block changes."""
    import cv2

    run = tmp_path / "out" / "rd-dev"
    run.mkdir(parents=True)
    cv2.imwrite(str(run / "rd_lpips.png"), np.full((20, 30, 3), 200, np.uint8))
    row = {"codec": "ours", "setting": "q0-kf0", "clips": 1, "payload_kbps": 1.23456789,
           "frames": 250.0, "scored_frames": 10.0, "lpips": 0.5, "untrained": True}
    clip_row = row | {"clip": "a.mp4", "akd_face_missing": 2,
                      "extra": {"options": {"crf": "51"}, "keyframes": 1}}
    results = run / "results.json"
    results.write_text(json.dumps({
        "name": "rd-dev", "env": {"git_sha": "abc123"}, "command": "python -m benchmarks.rd",
        "untrained": True, "metric_every": 25, "frames_requested": 250, "averages": [row],
        "results": [clip_row], "plots": ["rd_lpips.png"], "clips": ["a.mp4"],
        "wall_s_invocations": [1800.0, 60.0],
        "analysis": {"headline": [{"setting": "q0-kf0", "rate_key": "payload_kbps",
                                   "counted": False, "reason": "our LPIPS is worse"}]}}))
    speed = tmp_path / "out" / "speed-cpu" / "speed.json"
    speed.parent.mkdir()
    speed.write_text(json.dumps({
        "name": "speed", "command": "python -m benchmarks.speed --threads 2", "config": "vox256",
        "weights": "UNTRAINED (seeded random weights)",
        "env": {"git_sha": "abc123", "device": "cpu", "device_name": "Some CPU", "threads": 2,
                "load_average_1_5_15": [1.0, 1.5, 2.0]},
        "costs": {"receiver.M": {"gflops": 21.2}, "receiver.G": {"gflops": 45.8}},
        "results": [{"stage": "receiver.render", "precision": "fp32", "mode": "eager",
                     "status": "ok", "median_ms": 612.5, "p99_ms": 700.1, "frames": 20,
                     "frames_per_s": 1.63}]}))
    readme = tmp_path / "README.md"
    readme.write_text(f"# T\n\n## Results\n\nbefore\n\n{report.START}\nold\n{report.END}\n\nafter\n")
    docs = tmp_path / "docs" / "results.md"
    docs.parent.mkdir()
    docs.write_text(f"# T\n\n## Results\n\nbefore\n\n{report.START}\nold\n{report.END}\n\nafter\n")
    published = tmp_path / "benchmarks" / "results"
    assert report.main([str(results), "--speed", str(speed), "--publish", str(published),
                        "--readme", str(readme), "--docs", str(docs)]) == 0
    assert sorted(p.name for p in published.iterdir()) == [
        "rd-dev-summary.md", "rd-dev.json", "rd-dev_rd_lpips.png", "speed-cpu.json"]
    copy = json.loads((published / "rd-dev.json").read_text())
    assert copy["averages"][0]["payload_kbps"] == 1.23457  # rounded to 6 significant digits
    assert copy["results"][0]["extra"] == {"keyframes": 1}  # encoder options live in the notes
    assert copy["plots"] == ["rd-dev_rd_lpips.png"]
    assert "UNTRAINED" in (published / "rd-dev-summary.md").read_text()
    for path in (readme, docs):  # both keep everything outside the markers
        text = path.read_text()
        assert text.startswith("# T\n\n## Results\n\nbefore\n\n")
        assert text.endswith(f"{report.END}\n\nafter\n") and text.count("## Results") == 1
    short = readme.read_text().split(report.START)[1].split(report.END)[0]
    assert "old" not in short and "UNTRAINED" in short and "](docs/results.md)" in short
    assert "](benchmarks/results/rd-dev.json)" in short and "| ours, one keyframe (UNTRAINED) | q0-kf0 |" in short
    section = docs.read_text().split(report.START)[1].split(report.END)[0]
    assert "old" not in section and "UNTRAINED" in section and "abc123" in section
    assert "every 25th frame" in section and "10 of 250" in section and "31 min wall" in section
    assert "](../benchmarks/results/rd-dev_rd_lpips.png)" in section
    assert "](../benchmarks/results/rd-dev-summary.md)" in section
    assert "| receiver.render | fp32 | eager | ok | 612 |" in section
    assert "2 torch threads" in section and "python -m benchmarks.speed --threads 2" in section
    assert "--publish" in section
    assert "our LPIPS is worse" in section
    assert "(missing / scored, all clips): ours q0-kf0 2/10." in section


def test_main_folder_benchmarks_every_video_in_it(tmp_path, capsys) -> None:
    """``--folder DIR`` alone: every video under DIR (recursively, sorted, named by its path
    under DIR) is a clip; the default manifest and --split play no part."""
    from sender.sources import write_default_clip

    videos = tmp_path / "my_videos"
    (videos / "sub").mkdir(parents=True)
    write_default_clip(videos / "sub" / "b.mp4", num_frames=10, size=(256, 256), audio=False)
    write_default_clip(videos / "a.mp4", num_frames=10, size=(256, 256))
    (videos / "notes.txt").write_text("not a video\n")
    out = tmp_path / "rd"
    argv = ["--folder", str(videos), "--split", "no-such-split", "--codecs", "frozen,x264",
            "--frames", "10", "--sweep", "quick", "--metrics", "psnr", "--threads", "1",
            "--out", str(out)]
    assert rd.main(argv) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["clips"] == ["a.mp4", "sub/b.mp4"] and data["skipped"] == {}
    assert "every video under --folder" in data["protocol"]
    for clip in ("a.mp4", "sub/b.mp4"):
        rows = [r for r in data["results"] if r["clip"] == clip]
        assert {r["codec"] for r in rows} == {"frozen", "x264"}
        assert all(r["frames"] == 10 and r["psnr"] is not None and r["psnr"] > 15 for r in rows)
    assert all(a["clips"] == 2 for a in data["averages"])
    assert (out / "summary.md").is_file()
    assert [c.name for c in rd.folder_clips(videos)] == ["a.mp4", "sub/b.mp4"]


def test_main_exits_2_when_no_clip_is_scored(tmp_path, capsys) -> None:
    """An empty or missing folder, and a run whose every clip is skipped, fail with one
    stderr line saying why, and write no summary."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no videos here\n")
    common = ["--codecs", "frozen", "--frames", "10", "--metrics", "psnr"]
    out = tmp_path / "rd"
    assert rd.main(["--folder", str(empty), "--out", str(out), *common]) == 2
    assert "no clip to score: no video under" in capsys.readouterr().err
    assert not out.exists()
    assert rd.main(["--folder", str(tmp_path / "missing"), "--out", str(out), *common]) == 2
    assert "no clip to score: folder not found" in capsys.readouterr().err
    # --manifest with --folder relocates the manifest's paths: none exists there, all skipped.
    manifest = tmp_path / "MANIFEST.tsv"
    manifest.write_text("path\tsplit\nx/a.mp4\tdev\nx/b.mp4\tdev\ny/c.mp4\ttrain\n")
    argv = ["--manifest", str(manifest), "--folder", str(empty), "--out", str(out), *common]
    assert rd.main(argv) == 2
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if "no clip scored" in line)
    assert "all 2 clips skipped (not found: 2)" in line and "relocates" in line
    assert not (out / "summary.md").exists()
    assert set(json.loads((out / "results.json").read_text())["skipped"]) == {"x/a.mp4",
                                                                             "x/b.mp4"}
    assert rd.main(["--manifest", str(manifest), "--split", "test", "--out", str(out),
                    *common]) == 2
    assert "no row of split 'test'" in capsys.readouterr().err


def test_folder_help_text() -> None:
    """--help says what --folder, --manifest and --split do in each mode."""
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf), pytest.raises(SystemExit):
        rd.parse_args(["--help"])
    text = " ".join(buf.getvalue().split())
    assert "without --manifest: benchmark every video under this folder" in text
    assert "With --manifest: where the manifest's paths live" in text
    assert "does not apply to --folder without --manifest" in text
    alone = rd.parse_args(["--folder", "x"])
    assert alone.folder_mode and alone.manifest is None
    assert not rd.parse_args([]).folder_mode and rd.parse_args([]).manifest.name == "MANIFEST.tsv"
    relocated = rd.parse_args(["--folder", "x", "--manifest", "m.tsv"])
    assert not relocated.folder_mode and relocated.manifest.name == "m.tsv"


def test_the_closed_loop_is_compared_with_fixed_refresh_at_its_quality():
    from benchmarks.rd.curves import analysis, curves_by_codec

    def row(setting, kbps, lpips):
        return {"codec": "ours", "setting": setting, "payload_kbps": kbps, "lpips": lpips, "akd": 1.0,
                "psnr": 25.0}

    fixed = [row("q3-kf0", 8, 0.14), row("q3-kf8", 14, 0.125), row("q3-kf4", 19, 0.11), row("q3-kf2", 29, 0.08)]
    # The loop reaches each fixed point's LPIPS with 30% fewer bits; the kq80 variant and
    # another quality's fixed rows are curves of their own.
    adaptive = [row(f"q3-ad{p}", 0.7 * r["payload_kbps"], r["lpips"]) for p, r in zip((2, 1, 0.5), fixed[1:])]
    variant = [row("q3-ad1-kq80", 10, 0.12), row("q3-ad0.5-kq80", 15, 0.1)]
    other = [row("q1-kf4", 5, 0.3), row("q1-kf2", 6, 0.29)]
    averages = fixed + adaptive + variant + other
    assert set(curves_by_codec(averages)) >= {"ours kf0", "ours periodic", "ours adaptive", "ours adaptive kq80"}
    result = analysis(averages)["bd_rate_adaptive_vs_fixed_refresh"]
    assert result["ours adaptive"]["lpips"] == pytest.approx(-30.0, abs=0.5)
    assert "ours adaptive kq80" in result


def test_a_refresh_period_the_sampling_divides_is_warned_about(tmp_path, tiny_model, caplog) -> None:
    """Keyframes rebuild to themselves: a period of 4 frames scored every 4th frame would score
    only keyframes, so the driver says so."""
    frames = 8
    manifest = tmp_path / "MANIFEST.tsv"
    manifest.write_text("path\tsplit\nsynthetic/a.mp4\tdev\n")
    out = tmp_path / "rd"
    (out / "crops").mkdir(parents=True)
    np.save(out / "crops" / f"{rd.slug('synthetic/a.mp4')}_256px_{frames}f.npy", _moving_clip(frames, 256))
    argv = ["--manifest", str(manifest), "--split", "dev", "--frames", str(frames), "--out", str(out),
            "--codecs", "ours", "--model", "tiny", "--untrained", "--qualities", "3",
            "--keyframe-refresh", "0.16@3", "--metric-every", "4", "--metrics", "psnr", "--threads", "1"]
    with caplog.at_level("WARNING", logger="benchmarks.rd"):
        assert rd.main(argv) == 0
    assert any("scores the keyframes of refresh period(s) 0.16 s" in r.getMessage() for r in caplog.records)


def test_closed_loop_settings_parse_gain_and_head_turn_trigger():
    from benchmarks.rd.curves import curves_by_codec
    from benchmarks.rd.ours import ours_settings, ours_sweep, refresh_policy

    points = ours_sweep("0,a0.5@3,a1t15@3", [2, 3])
    assert points == [(0.0, 2), (0.0, 3), ("a0.5", 3), ("a1t15", 3)]
    names = [s.name for s in ours_settings(points)]
    assert names == ["q2-kf0", "q3-kf0", "q3-ad0.5-r4", "q3-ad1t15-r4"]  # the shipped K with the loop
    assert refresh_policy("a0.5").pose_limit_deg == 25.0  # the policy's default
    policy = refresh_policy("a1t15")
    assert policy.gain == 1.0 and policy.pose_limit_deg == 15.0
    for bad in ("a0", "a1t0", "a1t200", "a1tx"):
        with pytest.raises(ValueError):
            ours_sweep(bad, [3])
    rows = [{"codec": "ours", "setting": name, "payload_kbps": i} for i, name in enumerate(names)]
    assert set(curves_by_codec(rows)) == {"ours kf0", "ours adaptive r4", "ours adaptive turn 15 r4"}


def test_common_face_akd_scores_every_setting_on_the_same_frames(tmp_path) -> None:
    """A setting that loses the face on its hardest frame must not look better for it: AKD on
    the frames every setting shows a face puts both on the same pictures."""
    from benchmarks.rd.scoring import add_common_face_akd, perframe_file

    def row(setting, clip, akd):
        np.savez_compressed(perframe_file(tmp_path, "ours", setting, clip), akd=np.asarray(akd))
        return {"codec": "ours", "setting": setting, "clip": clip, "size": 256, "frames": 12,
                "frames_requested": 12, "metric_every": 4, "scored_frames": len(akd),
                "akd": float(np.nanmean(akd))}

    # Frame 1 is hard: "lost" shows no face there, "kept" shows one 5 px off. Frame 2 has no
    # face in the real frame (NaN in both).
    lost = row("q3-kf4", "a.mp4", [1.0, np.nan, np.nan])
    kept = row("q3-ad1", "a.mp4", [1.2, 5.0, np.nan])
    assert lost["akd"] < kept["akd"]  # the per-setting mean rewards losing the face
    stale = row("q3-kf8", "b.mp4", [2.0, 2.0, 2.0])
    stale["akd"] = 3.0  # its file belongs to another run
    alone = row("q3-kf8", "c.mp4", [np.nan, 1.5, 2.5])
    add_common_face_akd([lost, kept, stale, alone], tmp_path)
    assert lost["akd_common"] == pytest.approx(1.0) and kept["akd_common"] == pytest.approx(1.2)
    assert lost["akd_common_frames"] == kept["akd_common_frames"] == 1
    assert stale["akd_common"] is None and stale["akd_common_frames"] == 0
    assert alone["akd_common"] == pytest.approx(2.0) and alone["akd_common_frames"] == 2
    averages = rd.average_rows([lost, kept, stale])
    assert {a["setting"]: a["akd_common"] for a in averages} == {"q3-kf4": 1.0, "q3-ad1": 1.2, "q3-kf8": None}


def test_a_run_that_only_resummarises_keeps_the_meta_of_the_code_that_scored(tmp_path) -> None:
    path = tmp_path / "results.json"
    first = rd.ResultStore(path, {"env": {"git_sha": "aaa"}, "command": "run 1", "notes": ["old"]})
    first.add({"codec": "ours", "setting": "q3-kf0", "clip": "a.mp4", "size": 256, "frames": 8})
    again = rd.ResultStore(path, {"env": {"git_sha": "bbb"}, "command": "run 2", "notes": ["new"]})
    again.note_resummarised()
    again.save()
    data = json.loads(path.read_text())
    assert data["env"]["git_sha"] == "aaa" and data["notes"] == ["old"]
    assert data["resummarised"] == [{"git_sha": "bbb", "command": "run 2"}]
    resumed = rd.ResultStore(path, {"env": {"git_sha": "ccc"}, "command": "run 3", "notes": ["newer"]})
    resumed.add({"codec": "ours", "setting": "q3-kf4", "clip": "a.mp4", "size": 256, "frames": 8})
    assert json.loads(path.read_text())["env"]["git_sha"] == "ccc"  # it scored a row: its meta


def test_refresh_oracle_ranks_keyframes_by_their_distance_from_the_usual_pose() -> None:
    from benchmarks.refresh_oracle import keyframe_predictors, spearman

    assert spearman(np.arange(5.0), np.arange(5.0) ** 3) == pytest.approx(1.0)
    assert spearman(np.arange(5.0), -np.arange(5.0)) == pytest.approx(-1.0)
    # 10 grid keyframes every 5th frame; a keyframe rebuilds the clip worse the further its
    # yaw is from the clip's usual 0; the expression is unrelated noise.
    rng = np.random.default_rng(0)
    motions = np.zeros((50, 8))
    motions[:, 0] = np.repeat([0, 1, 0, 20, 0, 5, 0, 2, 40, 0], 5)
    motions[:, 6:] = rng.normal(size=(50, 2))
    errors = (0.1 + 0.01 * np.abs(motions[::5, 0]))[:, None] + np.zeros((10, 50))
    found = keyframe_predictors(errors, motions, 5)
    assert found["pose"] > 0.8 and abs(found["expression"]) < 0.8


def test_refresh_oracle_replays_the_loops_trial_keyframes() -> None:
    from benchmarks.refresh_oracle import online
    from codec.api import RefreshPolicy

    # 100 frames, a keyframe tried every 5th: the one at frame 0 rebuilds everything with error
    # 0.3; any later one rebuilds every frame with 0.1, except the cut's, after frame 70.
    errors = np.full((20, 100), 0.1)
    errors[0] = 0.3
    errors[:14, 70:] = 0.9
    # Frame 25 is the first trial the interval (1 s) allows; the cut's error stands over the
    # jump for hold_checks frames (70-72), which refreshes at the next grid frame.
    assert online(errors, 5, RefreshPolicy(gain=0.1)) == [0, 25, 75]
    # A gain no trial reaches leaves only the cut.
    assert online(errors, 5, RefreshPolicy(gain=1.0)) == [0, 75]


def test_refresh_oracle_replays_the_loop_with_changed_policy_fields() -> None:
    from benchmarks.refresh_oracle import policy_overrides

    assert policy_overrides("window_s=3, hold_checks=4") == {"window_s": 3.0, "hold_checks": 4}
    assert policy_overrides("") == {}
    for bad in ("gain=1", "bogus=1", "window_s=x"):
        with pytest.raises(ValueError):
            policy_overrides(bad)


def test_periodic_refresh_that_waits_for_a_face_is_a_baseline_of_its_own():
    from benchmarks.rd.curves import analysis, curves_by_codec
    from benchmarks.rd.ours import ours_settings, ours_sweep, refresh_policy

    points = ours_sweep("0,4@3,4f@3,2f@3", [3])
    assert points == [(0.0, 3), (4.0, 3), ("f4", 3), ("f2", 3)]
    assert [s.name for s in ours_settings(points)] == ["q3-kf0", "q3-kf4", "q3-kf4f", "q3-kf2f"]
    assert refresh_policy("f4") is None
    for bad in ("0f", "-2f"):
        with pytest.raises(ValueError):
            ours_sweep(bad, [3])

    def row(setting, kbps, lpips):
        return {"codec": "ours", "setting": setting, "payload_kbps": kbps, "lpips": lpips}

    averages = [row("q3-kf0", 8, 0.14), row("q3-kf4", 19, 0.13), row("q3-kf2", 29, 0.12),
                row("q3-kf4f", 19, 0.11), row("q3-kf2f", 29, 0.09),
                row("q3-ad1", 17, 0.125), row("q3-ad0.5", 21, 0.118)]
    assert set(curves_by_codec(averages)) == {"ours kf0", "ours periodic", "ours periodic face-wait",
                                              "ours adaptive"}
    result = analysis(averages)
    blind = result["bd_rate_adaptive_vs_fixed_refresh"]["ours adaptive"]["lpips"]
    waiting = result["bd_rate_adaptive_vs_face_wait_refresh"]["ours adaptive"]["lpips"]
    assert blind < 0 < waiting  # the loop beats blind periods and loses to face-waiting ones here


def test_frame_stats_worst_frames_and_steady_rate() -> None:
    """p95 of the scored frames' LPIPS (NaN frames left out) and the payload after the first
    second, without the first keyframe or I-frame."""
    from benchmarks.rd.scoring import frame_stats

    lpips = np.array([*np.linspace(0.1, 0.2, 20), np.nan])
    frame_bytes = np.zeros(50, dtype=np.int64)
    frame_bytes[0] = 5000  # the first keyframe: not steady state
    frame_bytes[25:] = 10  # 10 bytes a frame from the second second on
    stats = frame_stats(lpips, frame_bytes, fps=25.0)
    assert stats["lpips_p95"] == pytest.approx(np.percentile(np.linspace(0.1, 0.2, 20), 95))
    assert stats["steady_kbps"] == pytest.approx(8 * 10 * 25 / 1000)
    assert frame_stats(None, frame_bytes[:25]) == {"lpips_p95": None, "steady_kbps": None}
    assert frame_stats(np.full(3, np.nan), frame_bytes)["lpips_p95"] is None


def test_worst_frames_against_the_frozen_keyframe_and_backfill(tmp_path) -> None:
    """Rows scored before rd recorded p95 get it from their per-frame arrays (not from a
    stale file); a clip whose p95 is worse than the frozen keyframe's is flagged and listed,
    and the summary's table says so."""
    from benchmarks.rd.markdown import markdown_table, worst_frame_clips
    from benchmarks.rd.scoring import add_frame_stats, perframe_file, worst_frame_check

    def row(codec, setting, clip, lpips, first=4000):
        frame_bytes = np.full(50, 20, dtype=np.int64)
        frame_bytes[0] = first
        np.savez_compressed(perframe_file(tmp_path, codec, setting, clip), frame_bytes=frame_bytes,
                            lpips=np.asarray(lpips))
        return {"codec": codec, "setting": setting, "clip": clip, "size": 256, "frames": 50,
                "frames_requested": 50, "metric_every": 5, "scored_frames": len(lpips),
                "bytes": int(frame_bytes.sum()), "lpips": float(np.mean(lpips)), "payload_kbps": 1.0}

    ours_a = row("ours", "q3-kf0", "a.mp4", [0.1] * 9 + [0.5])  # one torn frame
    frozen_a = row("frozen", "webp-q90", "a.mp4", [0.3] * 10)
    ours_b = row("ours", "q3-kf0", "b.mp4", [0.1] * 10)
    frozen_b = row("frozen", "webp-q90", "b.mp4", [0.2] * 10)
    stale = row("ours", "q3-ad0.1", "b.mp4", [0.1] * 10)
    stale["lpips"] = 0.3  # its file belongs to another run
    rows = [ours_a, frozen_a, ours_b, frozen_b, stale]
    before = markdown_table(rd.average_rows(rows))
    assert "p95" not in before and "steady" not in before  # old runs render as they did
    add_frame_stats(rows, tmp_path)
    assert ours_a["lpips_p95"] == pytest.approx(np.percentile([0.1] * 9 + [0.5], 95))
    assert ours_a["steady_kbps"] == pytest.approx(8 * 20 * 25 / 1000)
    assert "lpips_p95" not in stale
    check = worst_frame_check(rows)
    assert check == {"ours q3-kf0": {"clips": 2, "worse": ["a.mp4"]}}
    assert ours_a["lpips_p95_worse_than_frozen"] is True and ours_b["lpips_p95_worse_than_frozen"] is False
    assert stale["lpips_p95_worse_than_frozen"] is None
    table = markdown_table(rd.average_rows(rows))
    assert "LPIPS p95 (worst frames)" in table and "steady kbit/s (after 1 s)" in table
    lines = worst_frame_clips(rows)
    assert any(line.startswith("| a.mp4 |") and "✗" in line for line in lines)
    assert not any(line.startswith("| b.mp4 |") and "✗" in line for line in lines)
    assert lines[-2].startswith("| clips ✗ | 1 |")
