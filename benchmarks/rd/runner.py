"""The sweep itself: every pending (codec setting, clip) pair is encoded, decoded, scored and
stored the moment it exists, so an interrupted run resumes where it stopped."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from codec.progress import ProgressBar

from .baselines import _pyav_settings, run_frozen, run_pyav
from .clips import Clip, SkipClip, load_crops, load_frames
from .ours import ours_settings, run_ours_setting
from .results import ResultStore
from .runs import CodecRun, Setting
from .scoring import MetricSuite, perframe_file, summarize

# The package's name, not this module's: the stderr lines keep their "benchmarks.rd:" prefix.
log = logging.getLogger("benchmarks.rd")


def sweep_settings(codecs: Sequence[str], ours_points: Sequence[tuple[float | str, int]],
                   quick: bool, patches: bool = True, keyframe_quality: int | None = None,
                   keyframe_codec: str | None = None, references: Sequence[int | None] = (None,),
                   reference_policy: str = "lru", predicted_refresh: bool = True,
                   predicted_crfs: Sequence[int | None] = (None,),
                   whole_frame: bool = False, damping: bool = False) -> list[Setting]:
    """Every setting to run, codec by codec in ``--codecs`` order (``quick``: ``--sweep quick``);
    ours at each of ``references`` × ``predicted_crfs`` (None: the shipped default;
    ``whole_frame``: our keyframes' default is the whole-frame one; ``damping``: codec.damping)."""
    settings: list[Setting] = []
    for codec in codecs:
        if codec in ("x264", "vp8", "vp9", "av1"):
            settings += _pyav_settings(codec, quick=quick)
        elif codec == "frozen":
            settings.append(Setting("frozen", "webp-q90", {}))
        elif codec == "ours":
            for k in references:
                for crf in (predicted_crfs if predicted_refresh else [None]):
                    settings += ours_settings(ours_points, patches, keyframe_quality, keyframe_codec,
                                              k, reference_policy, predicted_refresh, crf, whole_frame,
                                              damping)
    return settings


@dataclass
class Sweep:
    """Runs ``settings`` on clips at one protocol point (crop size, frames, metric sampling)
    and adds each scored row to ``store``; rows already there are not run again."""

    store: ResultStore
    settings: list[Setting]
    model: Any  # our resolved model when "ours" runs, else None
    size: int | str  # the crop side, or "frame": whole frames (``--frame``, clips.load_frames)
    frames: int
    every: int  # --metric-every
    metrics: list[str]  # --metrics
    out: Path
    suite: MetricSuite | None = None  # built on the first clip with work to do

    @property
    def model_tag(self) -> str | None:
        """Our model's name as rows record it (None without our codec)."""
        return self.model.name if self.model is not None else None

    @property
    def untrained(self) -> bool:
        return bool(self.model is not None and self.model.untrained)

    def run(self, clips: Sequence[Clip]) -> list[str]:
        """Every clip in turn; the names of those not skipped."""
        (self.out / "perframe").mkdir(exist_ok=True)
        used = []
        for ci, clip in enumerate(clips):
            if self._run_clip(clip, f"[{ci + 1}/{len(clips)}]"):
                used.append(clip.name)
        return used

    def rows(self, used_clips: Sequence[str]) -> list[dict[str, Any]]:
        """This run's rows of results.json: its protocol point, clips, settings and model."""
        names = {(s.codec, s.name) for s in self.settings}
        return [r for r in self.store.data["results"] if r["size"] == self.size
                and r.get("frames_requested", r["frames"]) == self.frames
                and r.get("metric_every", 1) == self.every and r["clip"] in used_clips
                and (r["codec"], r["setting"]) in names
                and (r["codec"] != "ours" or r.get("model") == self.model_tag)]

    def _run_clip(self, clip: Clip, position: str) -> bool:
        """The settings ``clip`` has no row for yet; False when the clip is skipped."""
        pending = [s for s in self.settings if not self.store.has(
            codec=s.codec, setting=s.name, clip=clip.name, size=self.size, frames=self.frames,
            model=self.model_tag if s.codec == "ours" else None, metric_every=self.every)]
        try:
            crops = (load_frames(clip, self.frames, self.out / "crops") if self.size == "frame"
                     else load_crops(clip, self.size, self.frames, self.out / "crops"))
        except SkipClip as exc:
            log.warning("skipping %s: %s", clip.name, exc)
            self.store.data["skipped"][clip.name] = str(exc)
            self.store.save()
            return False
        print(f"{position} {clip.name}: {len(crops)} frames, "
              f"{len(pending)} settings to run ({len(self.settings) - len(pending)} done before)",
              file=sys.stderr)
        if pending and self.suite is None:
            self.suite = MetricSuite(wanted=self.metrics)
        for setting in pending:
            row = self._score(setting, clip, crops, self._encode(setting, crops))
            self.store.data["metrics_unavailable"].update(self.suite.unavailable)
            self.store.add(row)
        return True

    def _encode(self, setting: Setting, crops: np.ndarray) -> CodecRun:
        """One codec setting over the clip's crops, decoded back."""
        if setting.codec == "ours":
            bar = ProgressBar(2 * len(crops), f"{setting.codec} {setting.name} codec")
            run = run_ours_setting(crops, self.model, setting.params, progress=bar,
                                   metric_every=self.every, whole_frame=self.size == "frame")
            bar.close()
            return run
        if setting.codec == "frozen":
            return run_frozen(crops)
        return run_pyav(crops, setting.params)

    def _score(self, setting: Setting, clip: Clip, crops: np.ndarray,
               run: CodecRun) -> dict[str, Any]:
        """The clip's row for ``run``; its per-frame arrays go to perframe/*.npz."""
        index, decoded = run.scored_frames(self.every)
        bar = ProgressBar(len(index), f"{setting.codec} {setting.name} metrics")
        metric_started = time.perf_counter()
        values, side = self.suite.per_frame(decoded, crops[index], f"{clip.name}@every{self.every}",
                                            progress=bar)
        metric_s = time.perf_counter() - metric_started
        bar.close()
        ours = setting.codec == "ours"
        row = {"codec": setting.codec, "setting": setting.name, "clip": clip.name,
               "size": self.size, "frames": len(crops), "frames_requested": self.frames,
               "model": self.model_tag if ours else None, "untrained": bool(ours and self.untrained)}
        row.update(summarize(values, run, metric_every=self.every))
        row["metric_ms_per_scored_frame"] = 1000.0 * metric_s / max(len(index), 1)
        row.update(side)
        row["extra"] = run.extra
        np.savez_compressed(perframe_file(self.out / "perframe", setting.codec, setting.name, clip.name),
                            frame_bytes=run.frame_bytes, scored=index, **values)
        return row
