"""benchmarks.report: the README's short table and headline, the full results page in
docs/, reruns that change nothing, and the committed pages being exactly what the generator
makes from the committed results file."""

from __future__ import annotations

import json
import re
import shutil

from benchmarks import report
from conftest import REPO


def _row(codec: str, setting: str, kbps: float, lpips: float, akd: float = 1.5) -> dict:
    return {"codec": codec, "setting": setting, "clips": 2, "payload_kbps": kbps,
            "wire_kbps": kbps + 2, "psnr": 25.0, "lpips": lpips, "akd": akd}


def _results() -> dict:
    averages = [
        _row("ours", "q0-kf0", 7.9, 0.150, 1.9), _row("ours", "q3-kf0", 8.5, 0.138, 1.3),
        _row("ours", "q3-ad0.1", 13.3, 0.119, 1.3),
        _row("x264", "kbps6", 8.4, 0.44), _row("x264", "crf51", 11.1, 0.26),
        _row("x264", "crf44", 18.0, 0.147), _row("x264", "crf36", 34.4, 0.064),
        _row("vp9", "kbps10", 13.5, 0.150), _row("vp9", "kbps40", 43.2, 0.040),
        _row("frozen", "webp-q90", 5.2, 0.216, 14.8),
    ]
    headline = [
        {"setting": "q0-kf0", "rate_key": "payload_kbps", "x264_kbps": 18.8, "ratio": 2.38,
         "counted": False, "reason": "our AKD is worse than x264's at the matched rate"},
        {"setting": "q3-kf0", "rate_key": "payload_kbps", "x264_kbps": 19.3, "ratio": 2.27,
         "counted": True, "reason": "ok"},
        {"setting": "q3-kf0", "rate_key": "wire_kbps", "x264_kbps": 29.4, "ratio": 2.98,
         "counted": True, "reason": "ok"},
        {"setting": "q3-ad0.1", "rate_key": "payload_kbps", "x264_kbps": 22.3, "ratio": 1.68,
         "counted": False, "reason": "our AKD is worse than x264's at the matched rate"},
    ]
    return {"name": "rd-dev", "env": {"git_sha": "abc123"}, "command": "python -m benchmarks.rd",
            "protocol": "256px, split dev", "metric_every": 1, "clips": ["a.mp4", "b.mp4"],
            "averages": averages, "results": [], "plots": ["rd-dev_rd_lpips.png"],
            "analysis": {"headline": headline}}


def test_key_rows_pick_our_default_the_loop_and_the_nearest_baselines() -> None:
    picked = [(why, row["codec"], row["setting"]) for why, row in report.key_rows(_results())]
    assert picked == [
        ("ours, one keyframe", "ours", "q3-kf0"),  # the first counted headline setting
        ("ours, closed-loop keyframe refresh", "ours", "q3-ad0.1"),
        ("x264 nearest our rate", "x264", "kbps6"),
        ("x264 nearest our LPIPS", "x264", "crf44"),
        ("vp9 nearest our LPIPS", "vp9", "kbps10"),
        ("frozen keyframe (no motion)", "frozen", "webp-q90"),
    ]
    # Without a row of ours, each baseline's lowest rate.
    data = _results() | {"averages": [a for a in _results()["averages"] if a["codec"] != "ours"],
                         "analysis": {"headline": []}}
    assert [(why, row["setting"]) for why, row in report.key_rows(data)] == [
        ("x264 lowest rate", "kbps6"), ("vp9 lowest rate", "kbps10"),
        ("frozen keyframe (no motion)", "webp-q90")]


def test_short_section_headline_and_matched_x264(tmp_path) -> None:
    results = tmp_path / "benchmarks" / "results" / "rd-dev.json"
    section = report.short_section(_results(), results, tmp_path, tmp_path / "docs" / "results.md",
                                   command="python -m benchmarks.report x", heading=False)
    assert "## Results" not in section
    assert "q3-kf0: 2.27× payload, 2.98× on the wire." in section
    assert "q0-kf0:" not in section  # not counted: not in the headline
    assert "| ours, one keyframe | q3-kf0 | 8.5 | 10.5 | 25 | 0.138 | 1.3 | 19.3 (2.27×) |" in section
    assert "22.3 (1.68×, not counted: our AKD is worse" in section
    assert "](docs/results.md)" in section and "](benchmarks/results/rd-dev.json)" in section
    assert "`python -m benchmarks.report x`" in section
    none = _results() | {"analysis": {"headline": [
        {"setting": "q3-kf0", "rate_key": "payload_kbps", "counted": False, "reason": "why not"}]}}
    text = report.short_section(none, results, tmp_path, tmp_path / "docs" / "results.md")
    assert text.startswith("## Results\n") and "not counted for any setting (why not)." in text


def test_protocol_rows_one_per_run_with_ratios_against_x264_av1_and_steady(tmp_path) -> None:
    crop = _results()
    frame = _results() | {"averages": [
        _row("ours", "q3-kf0-kq40", 6.0, 0.30) | {"steady_kbps": 1.0},
        _row("ours", "q3-kf0", 10.0, 0.20, 1.2) | {"steady_kbps": 2.0},
        _row("x264", "crf51", 10.0, 0.30, 4.0) | {"steady_kbps": 8.0},
        _row("x264", "crf44", 40.0, 0.10, 2.0) | {"steady_kbps": 32.0},
        _row("av1", "crf63", 8.0, 0.25, 1.0) | {"steady_kbps": 6.0},
        _row("av1", "crf52", 16.0, 0.15, 1.0) | {"steady_kbps": 12.0}]}
    readme = tmp_path
    rows = report.protocol_rows([("256 crop", crop, tmp_path / "r" / "crop.json"),
                                 ("whole frame", frame, tmp_path / "r" / "frame.json")], readme)
    assert rows[0].startswith("| protocol | clips | our setting |") and len(rows) == 4
    # The crop run has no SVT-AV1 and no steady rate: said, not guessed.
    assert rows[2].startswith("| [256 crop](r/crop.json) | 2 | q3-kf0 | 8.5 | n/a | 0.138 | 1.3 | ")
    assert rows[2].endswith("| n/a (not in this run) | n/a (not in this run) |")
    # The whole frame: the shipped one-keyframe setting, not the -kq variant listed first.
    assert rows[3].startswith("| [whole frame](r/frame.json) | 2 | q3-kf0 | 10 | 2 | 0.2 | 1.2 | 2× | ")
    assert "| 1.13× (not counted: AKD worse) | 8× |" in rows[3]


def test_rerun_changes_nothing_and_docs_path_is_free(tmp_path, monkeypatch) -> None:
    results = tmp_path / "benchmarks" / "results" / "rd-dev.json"
    results.parent.mkdir(parents=True)
    results.write_text(json.dumps(_results()))
    (tmp_path / "README.md").write_text("# T\n\n## Results\n\nhand-written\n")
    monkeypatch.chdir(tmp_path)
    argv = ["benchmarks/results/rd-dev.json", "--readme", "README.md", "--docs", "pages/full.md"]
    assert report.main(argv) == 0
    readme, docs = tmp_path / "README.md", tmp_path / "pages" / "full.md"
    first = readme.read_text(), docs.read_text()
    assert first[0].startswith("# T\n\n## Results\n\nhand-written\n\n" + report.START)
    assert first[0].count("## Results") == 1 and "](pages/full.md)" in first[0]
    assert first[1].startswith("# Results\n\n" + report.START) and "](../benchmarks/results/" in first[1]
    stamps = readme.stat().st_mtime_ns, docs.stat().st_mtime_ns
    assert report.main(argv) == 0
    assert (readme.read_text(), docs.read_text()) == first
    assert (readme.stat().st_mtime_ns, docs.stat().st_mtime_ns) == stamps  # not even rewritten


def test_committed_readme_and_results_page_are_generated(tmp_path, monkeypatch) -> None:
    """README.md's short table and docs/results.md's full one are exactly what the README's
    regenerate command writes from the committed results files: nothing typed by hand."""
    readme = (REPO / "README.md").read_text()
    command = re.search(r"Generated by `python -m benchmarks\.report ([^`]+)`", readme)
    assert command, "README's results section names the command that wrote it"
    argv = command.group(1).split()
    results = [a for a in argv if a.endswith(".json")]
    assert results and all(a.startswith("benchmarks/results/") for a in results), argv
    for name in ["README.md", "docs/results.md", *results,
                 *(a.removesuffix(".json") + "-summary.md" for a in results)]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    assert report.main(argv) == 0
    for name in ("README.md", "docs/results.md"):
        assert (tmp_path / name).read_text() == (REPO / name).read_text(), name
