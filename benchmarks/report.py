"""Write the results from a benchmarks.rd results.json (and, optionally, a benchmarks.speed
JSON): a short table with the headline into the README, the full generated results into
docs/results.md.

    python -m benchmarks.report benchmarks/results/rd-dev.json --readme README.md
    python -m benchmarks.report out/rd-dev/results.json --speed out/speed-cpu/speed.json \\
        --publish benchmarks/results --readme README.md --docs docs/results.md

In both files only the text between ``<!-- results:start -->`` and ``<!-- results:end -->``
is replaced (the markers are appended at the end of a file that lacks them; a missing docs
page is created with a "# Results" title), so the numbers always come from a results file
and are never typed by hand. Each file is read just before it is written, so edits
elsewhere in it are kept, and running the same command twice changes nothing.

The README's table (``short_section``) holds our default setting and any closed-loop
setting, each baseline codec's setting nearest our default's LPIPS, x264's nearest our rate,
and the frozen keyframe; ``--docs`` (default: docs/results.md beside the README) gets every
row, the protocol, the face counts, the plots and the speed table (``results_section``).

``--publish DIR`` first copies what the section is built from into a committed folder:
the rd JSON (per-clip rows and averages, floats rounded, no per-frame arrays), its
markdown summary, its PNG plots (losslessly recompressed) and the speed JSON, all named
after the run. The README then links to those copies, so the plots render on the
repository page. Nothing from the data set (crops, frames, video) is ever copied.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.env import describe_commit
from benchmarks.rd.markdown import format_cell, markdown_summary, markdown_table
from benchmarks.rd.protocol import UNTRAINED_MARK, metric_sampling_text

START = "<!-- results:start -->"
END = "<!-- results:end -->"
# Per-clip "extra" keys that repeat the run's notes (encoder options): left out when publishing.
_REPEATED_EXTRA = ("options",)


def _round(value: Any, digits: int = 6) -> Any:
    """Floats rounded to ``digits`` significant digits (recursively): a smaller committed JSON."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: _round(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v, digits) for v in value]
    return value


def _wall_s(data: dict[str, Any]) -> float | None:
    """The run's wall time: the sum over its invocations when it was resumed."""
    runs = data.get("wall_s_invocations")
    return float(sum(runs)) if runs else data.get("wall_s")


def publish(data: dict[str, Any], results_path: Path, folder: Path,
            speed: dict[str, Any] | None, speed_path: Path | None
            ) -> tuple[dict[str, Any], Path, dict[str, Any] | None, Path | None]:
    """Copy the rd JSON (compacted), its summary, its plots and the speed JSON into ``folder``;
    return the published data and paths (the README section is built from those)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = data.get("name") or results_path.parent.name
    plots = []
    for plot in data.get("plots", []):
        source = results_path.parent / plot
        if not source.is_file():
            print(f"plot {source} not found: left out", file=sys.stderr)
            continue
        target = folder / f"{name}_{Path(plot).name}"
        try:
            import cv2

            image = cv2.imread(str(source), cv2.IMREAD_UNCHANGED)
            if image is None or not cv2.imwrite(str(target), image,
                                                [cv2.IMWRITE_PNG_COMPRESSION, 9]):
                raise OSError(f"cannot recompress {source}")
        except ImportError:
            shutil.copyfile(source, target)
        plots.append(target.name)
    rows = []
    for row in data.get("results", []):
        row = dict(row)
        if isinstance(row.get("extra"), dict):
            row["extra"] = {k: v for k, v in row["extra"].items() if k not in _REPEATED_EXTRA}
        rows.append(row)
    out = _round(dict(data) | {"results": rows, "plots": plots,
                               "published_from": results_path.as_posix()})
    json_path = folder / f"{name}.json"
    json_path.write_text(json.dumps(out, indent=None, separators=(",", ":")) + "\n")
    (folder / f"{name}-summary.md").write_text(markdown_summary(out, plots))
    speed_out, speed_out_path = speed, speed_path
    if speed is not None and speed_path is not None:
        speed_out = _round(dict(speed) | {"published_from": speed_path.as_posix()})
        speed_out_path = folder / f"{speed_path.parent.name or 'speed'}.json"
        speed_out_path.write_text(json.dumps(speed_out, indent=1) + "\n")
    return out, json_path, speed_out, speed_out_path


def _rel(path: Path, readme_dir: Path) -> str:
    return Path(os.path.relpath(path.resolve(), readme_dir)).as_posix()


def face_missing(data: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Per setting: (frames where AKD had no face in either frame, frames scored), summed over
    the per-clip rows of the averaged settings; only settings with a missing face."""
    wanted = {(a["codec"], a["setting"]) for a in data.get("averages", [])}
    clips = set(data.get("clips", []))
    out: dict[str, list[int]] = {}
    for row in data.get("results", []):
        key = (row.get("codec"), row.get("setting"))
        if key not in wanted or (clips and row.get("clip") not in clips):
            continue
        if row.get("akd_face_missing") is None:
            continue
        tally = out.setdefault(f"{key[0]} {key[1]}", [0, 0])
        tally[0] += int(row["akd_face_missing"])
        tally[1] += int(row.get("scored_frames", row.get("frames", 0)))
    return {k: (m, n) for k, (m, n) in out.items() if m}


def speed_section(speed: dict[str, Any], speed_path: Path, readme_dir: Path) -> list[str]:
    """The speed table (one row per stage × precision × mode) with what it ran on."""
    env = speed.get("env", {})
    load = env.get("load_average_1_5_15")
    lines = ["### Speed", "",
             f"From `{speed.get('command', 'python -m benchmarks.speed')}` "
             f"([JSON]({_rel(speed_path, readme_dir)})) at git sha {describe_commit(env)}: "
             f"config {speed.get('config')}, batch 1, {env.get('device')} "
             f"({env.get('device_name')}), {env.get('threads')} torch threads, torch "
             f"{env.get('torch')}"
             + (f", {speed['wall_s']:.0f} s wall" if speed.get("wall_s") else "")
             + (f", load average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} "
                "(1/5/15 min; the machine is shared, so CPU times are indicative)" if load else "")
             + ".", "",
             f"> Weights: {speed.get('weights', '')}", "",
             "| stage | precision | mode | status | median ms | p99 ms | frames | frames/s |",
             "|" + " --- |" * 8]
    for row in speed.get("results", []):
        lines.append(f"| {row.get('stage')} | {row.get('precision')} | {row.get('mode')} | "
                     f"{row.get('status')} | {format_cell(row.get('median_ms'))} | "
                     f"{format_cell(row.get('p99_ms'))} | {row.get('frames')} | "
                     f"{format_cell(row.get('frames_per_s')) if row.get('frames_per_s') else ''} |")
    costs = speed.get("costs", {})
    flops = [f"{name.split('.')[-1]} {costs[name]['gflops']:.1f} GFLOP/frame"
             for name in ("receiver.M", "receiver.G") if costs.get(name, {}).get("gflops")]
    if flops:
        lines += ["", "Cost per frame (convolutions and matrix products): " + ", ".join(flops) + "."]
    return lines


def results_section(data: dict[str, Any], results_path: Path, readme_dir: Path,
                    speed: dict[str, Any] | None = None, speed_path: Path | None = None,
                    command: str | None = None, heading: bool = True) -> str:
    """The markdown that goes between the markers (without them); ``heading``: start with
    "## Results" (left out when the README already has that heading above the markers)."""
    env = data.get("env", {})
    command = command or f"python -m benchmarks.report {results_path.as_posix()}"
    wall = _wall_s(data)
    lines = (["## Results", ""] if heading else []) + [
             f"Generated by `{command}` from a run of `{data.get('command', '?')}` at git sha "
             f"{describe_commit(env)} (torch {env.get('torch')}, PyAV {env.get('av')}, "
             f"{env.get('device')}, {env.get('cpu_threads')} threads"
             + (f", {wall / 60:.0f} min wall" if wall else "") + "). Do not edit by hand.", ""]
    if data.get("untrained"):
        lines += [f"> **{UNTRAINED_MARK}.** The rows marked UNTRAINED come from randomly "
                  "initialised weights and test the pipeline only.", ""]
    every = data.get("metric_every", 1)
    frames = data.get("frames_requested") or 250
    lines += [f"Protocol: {data.get('protocol', '')}. Clips: {len(data.get('clips', []))} "
              f"({', '.join(data.get('clips', []))}).", ""]
    if every != 1:
        lines += [f"**Sampled metrics: {metric_sampling_text(every, frames)}.** PSNR, SSIM, "
                  "MS-SSIM, LPIPS, AKD and AED are means over the sampled frames only.", ""]
    if data.get("skipped"):
        lines += ["Skipped clips: " + "; ".join(f"{k} ({v})" for k, v in data["skipped"].items())
                  + ".", ""]
    summary = results_path.parent / f"{results_path.stem}-summary.md"  # written by --publish
    if summary.is_file():
        lines += [f"Full summary (headline table, BD-rates, notes): [{summary.name}]"
                  f"({_rel(summary, readme_dir)}); per-clip rows: "
                  f"[{results_path.name}]({_rel(results_path, readme_dir)}).", ""]
    lines += [markdown_table(data.get("averages", [])), ""]
    missing = face_missing(data)
    if missing:
        lines += ["AKD and AED average only the scored frames where dlib finds a face in both the "
                  "decoded and the source frame. Frames without one (missing / scored, all clips): "
                  + ", ".join(f"{k} {m}/{n}" for k, (m, n) in missing.items()) + ".", ""]
    headline = [h for h in data.get("analysis", {}).get("headline", [])
                if h.get("rate_key") == "payload_kbps"]
    counted = [h for h in data.get("analysis", {}).get("headline", []) if h.get("counted")]
    if counted:
        best = ", ".join(f"{h['setting']} ({h['rate_key']}): {format_cell(h['ratio'])}×" for h in counted)
        lines += [f"Headline (x264 kbit/s at our LPIPS ÷ ours, where our AKD is no worse): {best}.",
                  ""]
    else:
        reasons: dict[str, list[str]] = {}
        for h in headline:
            reasons.setdefault(h.get("reason", "n/a"), []).append(h["setting"])
        why = "; ".join(f"{reason}: {', '.join(names)}" for reason, names in reasons.items())
        lines += ["Headline (x264 kbit/s at our LPIPS ÷ ours): not counted for any setting"
                  + (f" ({why})" if why else " (see the run's summary.md for why)") + ".", ""]
    for name in data.get("plots", []):
        # Links relative to the README, so they render on the repository page.
        target = Path(os.path.relpath(results_path.parent / name, readme_dir)).as_posix()
        lines.append(f"![{Path(name).stem}]({target})")
    if speed is not None and speed_path is not None:
        lines += [""] + speed_section(speed, speed_path, readme_dir)
    return "\n".join(lines).rstrip() + "\n"


def _reference_setting(data: dict[str, Any]) -> str | None:
    """Our setting the headline is quoted for: the first counted one, else the first with a
    headline entry, else our first averaged row's."""
    headline = data.get("analysis", {}).get("headline", [])
    for entries in ([h for h in headline if h.get("counted")], headline,
                    [a for a in data.get("averages", []) if a.get("codec") == "ours"]):
        if entries:
            return entries[0].get("setting")
    return None


def key_rows(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The README's few rows, each with why it is there: our reference setting (one keyframe),
    our closed-loop settings, x264 at our rate and at our LPIPS, every other baseline nearest
    our LPIPS (each baseline's lowest rate when there is no row of ours), the frozen keyframe.
    Averaged rows only, in that order, no row twice."""
    averages = data.get("averages", [])
    reference = _reference_setting(data)
    ours = next((a for a in averages if a.get("codec") == "ours" and a.get("setting") == reference),
                None)
    picked: list[tuple[str, dict[str, Any]]] = []

    def add(why: str, row: dict[str, Any] | None) -> None:
        if row is not None and all(row is not r for _, r in picked):
            picked.append((why, row))

    add("ours, one keyframe" if reference and reference.endswith("-kf0") else "ours", ours)
    for row in averages:
        setting = str(row.get("setting", ""))
        if row.get("codec") == "ours" and "-ad" in setting:
            add("ours, closed-loop keyframe refresh", row)

    def nearest(rows: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
        if ours is None or ours.get(key) is None:
            return None
        rows = [r for r in rows if r.get(key) is not None]
        return min(rows, key=lambda r: abs(r[key] - ours[key])) if rows else None

    codecs = list(dict.fromkeys(str(a.get("codec")) for a in averages))
    for codec in codecs:
        if codec in ("ours", "frozen"):
            continue
        rows = [a for a in averages if a.get("codec") == codec]
        if ours is None:  # nothing to be near: each baseline's lowest rate
            rated = [r for r in rows if r.get("payload_kbps") is not None]
            add(f"{codec} lowest rate", min(rated, key=lambda r: r["payload_kbps"]) if rated else None)
            continue
        if codec == "x264":
            add("x264 nearest our rate", nearest(rows, "payload_kbps"))
        add(f"{codec} nearest our LPIPS", nearest(rows, "lpips"))
    for row in averages:
        if row.get("codec") == "frozen":
            add("frozen keyframe (no motion)", row)
    return picked


def _headline_text(data: dict[str, Any]) -> str:
    """The headline in one sentence: per counted setting, payload and on-wire ratios."""
    entries = data.get("analysis", {}).get("headline", [])
    counted = [h for h in entries if h.get("counted")]
    if not counted:
        reasons = sorted({h.get("reason", "n/a") for h in entries if h.get("rate_key") == "payload_kbps"})
        return ("**Headline** (x264 kbit/s needed for our LPIPS ÷ ours, counted only where our AKD "
                "is no worse): not counted for any setting"
                + (f" ({'; '.join(reasons)})" if reasons else "") + ".")
    by_setting: dict[str, dict[str, Any]] = {}
    for h in counted:
        by_setting.setdefault(h["setting"], {})[h.get("rate_key")] = h
    parts = []
    for setting, ratios in by_setting.items():
        cells = [f"{format_cell(ratios[k]['ratio'])}× {label}"
                 for k, label in (("payload_kbps", "payload"), ("wire_kbps", "on the wire"))
                 if k in ratios]
        parts.append(f"{setting}: " + ", ".join(cells))
    return ("**Headline** (x264 kbit/s needed for our LPIPS ÷ ours, counted only where our AKD "
            "is no worse): " + "; ".join(parts) + ".")


def _one_keyframe_setting(data: dict[str, Any]) -> str | None:
    """Our shipped one-keyframe setting (``q<Q>-kf0``, no keyframe or patch variant) at the
    quality of the headline's reference setting when the run has one, else that setting."""
    reference = _reference_setting(data)
    plain = [str(row.get("setting")) for row in data.get("averages", [])
             if row.get("codec") == "ours" and str(row.get("setting", "")).endswith("-kf0")
             and str(row.get("setting")).count("-") == 1]
    quality = str(reference).split("-")[0]
    return next((s for s in plain if s == f"{quality}-kf0"), plain[0] if plain else reference)


# The protocol table's ratios: (column, baseline, rate key); each is that baseline's rate at
# our LPIPS ÷ ours (``benchmarks.rd.curves.headline``), computed from the averaged rows so
# that a run made before rd reported them still fills what it can.
PROTOCOL_RATIOS = (("× x264 payload", "x264", "payload_kbps"),
                   ("× SVT-AV1 payload", "av1", "payload_kbps"),
                   ("× x264 steady", "x264", "steady_kbps"))


def _ratio_cell(entry: dict[str, Any] | None) -> str:
    """"3.7×", "2.3× (AKD worse)" when the AKD gate fails, or why there is no ratio."""
    if entry is None:
        return "n/a (not in this run)"
    if entry.get("ratio") is None:
        return f"n/a ({entry.get('reason', 'no match')})"
    if entry.get("counted"):
        return f"{format_cell(entry['ratio'])}×"
    return f"{format_cell(entry['ratio'])}× (not counted: AKD worse)"


def protocol_rows(runs: Sequence[tuple[str, dict[str, Any], Path]], readme_dir: Path) -> list[str]:
    """One table row per protocol (label, rd results, its path): our shipped one-keyframe
    setting's rates, LPIPS and AKD, and its ratios against x264 and SVT-AV1 (payload) and x264
    in the steady state, each counted only where our AKD is no worse at the matched rate."""
    from benchmarks.rd.curves import headlines_against

    head = ["protocol", "clips", "our setting", "payload kbit/s", "steady kbit/s", "LPIPS ↓",
            "AKD px ↓", *(column for column, _, _ in PROTOCOL_RATIOS)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for label, data, path in runs:
        averages = data.get("averages", [])
        setting = _one_keyframe_setting(data)
        ours = next((a for a in averages if a.get("codec") == "ours" and a.get("setting") == setting), {})
        cells = [f"[{label}]({_rel(path, readme_dir)})", str(len(data.get("clips", []))), str(setting),
                 format_cell(ours.get("payload_kbps")), format_cell(ours.get("steady_kbps")),
                 format_cell(ours.get("lpips"), 4), format_cell(ours.get("akd"))]
        for _, against, rate_key in PROTOCOL_RATIOS:
            entry = next((h for h in headlines_against(averages, against, rate_key)
                          if h["setting"] == setting), None)
            cells.append(_ratio_cell(entry))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def short_section(data: dict[str, Any], results_path: Path, readme_dir: Path, docs_path: Path,
                  command: str | None = None, heading: bool = True,
                  frame: tuple[dict[str, Any], Path] | None = None) -> str:
    """The README's block (without the markers): what the run was, the headline and the
    ``key_rows`` table, linking to the full results page."""
    command = command or f"python -m benchmarks.report {results_path.as_posix()}"
    clips = data.get("clips", [])
    lines = (["## Results", ""] if heading else []) + [
        f"The rd benchmark on {len(clips)} clip{'' if len(clips) == 1 else 's'}"
        + (f" ({data['protocol']})" if data.get("protocol") else "") + ", from "
        f"[{results_path.name}]({_rel(results_path, readme_dir)}). Every row, the plots and how "
        f"the run was made: [{_rel(docs_path, readme_dir)}]({_rel(docs_path, readme_dir)}). "
        f"Generated by `{command}`; do not edit by hand.", ""]
    if data.get("untrained"):
        lines += [f"> **{UNTRAINED_MARK}.**", ""]
    if frame is not None:
        frame_data, frame_path = frame
        lines += [("Two protocols: the 256-px face crop (the table below) and the whole camera frame "
                   "(long side ≤ 1280 px, what `compress` and a call send by default; "
                   f"{frame_data.get('protocol', '')}). Ratios are the baseline's kbit/s at our "
                   "LPIPS ÷ ours; \"steady\" counts the payload after the first second (the "
                   "keyframe left out)."), "",
                  *protocol_rows([("256 crop", data, results_path), ("whole frame", frame_data, frame_path)],
                                 readme_dir), ""]
    lines += [_headline_text(data), ""]
    head = ["row", "setting", "payload kbit/s", "on-wire kbit/s", "PSNR", "LPIPS ↓",
            "AKD px ↓", "x264 kbit/s at this LPIPS"]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    matched = {h["setting"]: h for h in data.get("analysis", {}).get("headline", [])
               if h.get("rate_key") == "payload_kbps"}
    for why, row in key_rows(data):
        match = matched.get(row.get("setting")) if row.get("codec") == "ours" else None
        at_lpips = ""
        if match is not None and match.get("x264_kbps") is not None:
            at_lpips = (f"{format_cell(match['x264_kbps'])} ({format_cell(match.get('ratio'))}×"
                        + ("" if match.get("counted") else ", not counted: " + match.get("reason", "n/a"))
                        + ")")
        why = f"{why} (UNTRAINED)" if row.get("untrained") else why
        cells = [why, row.get("setting"), format_cell(row.get("payload_kbps")),
                 format_cell(row.get("wire_kbps")), format_cell(row.get("psnr")),
                 format_cell(row.get("lpips"), 4), format_cell(row.get("akd")), at_lpips]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines).rstrip() + "\n"


def has_results_heading(text: str) -> bool:
    """Whether the last "# " or "## " heading above the start marker already says "Results"."""
    before = text[: text.find(START)] if START in text else text
    headings = [line.strip() for line in before.splitlines()
                if line.startswith("# ") or line.startswith("## ")]
    return bool(headings) and headings[-1].lstrip("#").strip() == "Results"


def replace_section(text: str, section: str) -> str:
    """``text`` with the part between the markers replaced by ``section``; markers appended
    at the end when absent. Everything outside the markers is kept byte for byte."""
    start, end = text.find(START), text.find(END)
    if start == -1 or end == -1 or end < start:
        if start != -1 or end != -1:
            raise ValueError("README has only one results marker, or they are out of order")
        sep = "" if text.endswith("\n") or not text else "\n"
        return f"{text}{sep}\n{START}\n{section}{END}\n"
    return text[: start + len(START)] + "\n" + section + text[end:]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("results", type=Path, help="a benchmarks.rd results.json")
    parser.add_argument("--readme", type=Path, default=Path("README.md"),
                        help="gets the short table and the headline (default: README.md)")
    parser.add_argument("--docs", type=Path, default=None,
                        help="gets the full results (default: docs/results.md beside the README)")
    parser.add_argument("--speed", type=Path, default=None,
                        help="a benchmarks.speed JSON: adds the speed table")
    parser.add_argument("--frame-results", type=Path, default=None, metavar="JSON",
                        help="a whole-frame benchmarks.rd results.json (rd --frame): the README "
                             "gets a row per protocol and the docs page its full section")
    parser.add_argument("--publish", type=Path, default=None, metavar="DIR",
                        help="copy the JSON, summary and plots here (a committed folder) and "
                             "link the README to the copies")
    args = parser.parse_args(argv)
    for path in (args.results, args.speed, args.frame_results):
        if path is not None and not path.is_file():
            print(f"no such results file: {path}", file=sys.stderr)
            return 2
    command = "python -m benchmarks.report " + " ".join(
        sys.argv[1:] if argv is None else list(argv))
    data = json.loads(args.results.read_text())
    speed = json.loads(args.speed.read_text()) if args.speed is not None else None
    results_path, speed_path = args.results, args.speed
    frame = None
    if args.frame_results is not None:
        frame = json.loads(args.frame_results.read_text()), args.frame_results
    if args.publish is not None:
        data, results_path, speed, speed_path = publish(data, args.results, args.publish,
                                                        speed, args.speed)
        if frame is not None:
            frame_data, frame_path, _, _ = publish(frame[0], frame[1], args.publish, None, None)
            frame = frame_data, frame_path
    docs = args.docs if args.docs is not None else args.readme.parent / "docs" / "results.md"
    # Read each file only now (others edit other parts of them) and change only the section.
    text = docs.read_text() if docs.is_file() else "# Results\n"
    section = results_section(data, results_path, docs.resolve().parent, speed, speed_path,
                              command, heading=not has_results_heading(text))
    if frame is not None:  # the whole-frame run's own section after the crop's
        section += "\n### Whole frames\n\n" + results_section(
            frame[0], frame[1], docs.resolve().parent, command=command, heading=False)
    docs.parent.mkdir(parents=True, exist_ok=True)
    _write_if_changed(docs, replace_section(text, section))
    text = args.readme.read_text() if args.readme.is_file() else ""
    section = short_section(data, results_path, args.readme.resolve().parent, docs.resolve(),
                            command, heading=not has_results_heading(text), frame=frame)
    _write_if_changed(args.readme, replace_section(text, section))
    print(f"rewrote the results sections of {docs} (full) and {args.readme} (short)", file=sys.stderr)
    return 0


def _write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` unless the file already holds it (a rerun leaves the files untouched)."""
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
