"""Which mode a call's sending side uses: what this peer can render, and the choice.

Each peer announces :class:`signaling.messages.Capabilities` (its weights and its measured
render rate); the sending side of each peer then picks ``neural`` or ``h264`` from what the
receiving peer announced (:func:`choose_mode`). ``auto`` is that choice; ``neural`` and
``h264`` force it.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from codec.bitstream.control import MODES as SENDING_MODES
from codec.families.base import TalkingHeadModel
from rtc.motion_bundle import BUNDLE_CAPABILITY
from signaling.messages import Capabilities

events = logging.getLogger("facecodec.call")  # the few lines a user of `facecodec call` sees

# What a call may be asked for: one of the modes a stream switches between, or the choice.
MODES = (*SENDING_MODES, "auto")


def local_capabilities(model: TalkingHeadModel | None, fps: float, measure_frames: int = 3,
                       size: tuple[int, int] | None = None) -> Capabilities:
    """This peer's :class:`signaling.messages.Capabilities`, with a measured render rate
    (after :func:`fit_refiner_to_budget` has chosen what this peer renders); ``size``: the
    whole frames the call will render, (width, height) (None: the model's own crops)."""
    if model is None:
        return Capabilities(has_weights=False, render_fps=0.0, codecs=["h264"])
    render_fps = fit_refiner_to_budget(model, fps, measure_frames, size)
    return Capabilities(has_weights=True, model=model.name,
                        weights_sha256_prefix=model.sha256_prefix.hex(),
                        untrained=bool(model.untrained),
                        render_fps=min(render_fps, 1000.0),
                        codecs=[*SENDING_MODES, BUNDLE_CAPABILITY])  # it takes motion bundles


# Share of the frame interval a call's receiver may spend rendering with the learned
# refiner: the same machine also captures, tracks and encodes this peer's own video and
# renders the warp. A GPU is far inside it; two CPU cores are far outside, whatever the
# moment's load (the figures: the landmark speed results and the call benchmark).
REFINER_BUDGET = 0.25


def fit_refiner_to_budget(model: TalkingHeadModel, fps: float, frames: int = 3,
                          size: tuple[int, int] | None = None) -> float:
    """Drop the landmark family's learned refiner for this call when rendering with it takes
    more than ``REFINER_BUDGET`` of the frame interval: a live call then shows the plain warp
    at full rate rather than a refined picture at a falling rate. The stream is the same
    either way, so the sender never knows. Logged at INFO on ``facecodec.call``.

    Returns the measured render rate (frames/s) of what the model now renders."""
    render_fps = measure_render_fps(model, frames, size)
    if getattr(model, "refiner", None) is None:
        return render_fps
    budget_ms = 1000.0 * REFINER_BUDGET / fps
    took_ms = 1000.0 / render_fps
    if took_ms <= budget_ms:
        events.info("rendering with the refiner (%.0f ms a frame)", took_ms)
        return render_fps
    model.refiner = None
    events.info("rendering the plain warp: the refiner takes %.0f ms a frame here, over %.0f ms "
                "(a quarter of the frame interval)", took_ms, budget_ms)
    return measure_render_fps(model, frames, size)


def measure_render_fps(model: TalkingHeadModel, frames: int = 3, size: tuple[int, int] | None = None) -> float:
    """Frames/s of rendering a motion vector against a keyframe, after one warm-up frame.

    The keyframe is a flat grey image with the model's default keyframe description, so
    the measurement needs no face and no sender. ``size``: whole frames of (width, height)
    where the family renders them (a call's picture), else the model's own crops."""
    if size is not None:
        try:
            model = model.at_size(*size, whole_frame=True)
        except ValueError:
            pass
    width, height = model.frame_size
    image = np.full((height, width, 3), 128, np.uint8)
    source = model.prepare_source(image, model.default_keyframe_info())
    motion = model.neutral_motion(source)[None]
    times = []
    for _ in range(frames + 1):
        started = time.perf_counter()
        model.render(source, motion)
        times.append(time.perf_counter() - started)
    return 1.0 / max(float(np.median(times[1:])), 1e-6)


def choose_mode(requested: str, model: TalkingHeadModel | None, peer: Capabilities | None,
                fps: float) -> tuple[str, str]:
    """(mode, why) for this peer's sending side, from what the receiving peer announced."""
    if requested == "h264":
        return "h264", "asked for h264"
    if model is None:
        return "h264", "this peer has no model"
    if requested == "neural":
        return "neural", "asked for neural"
    if peer is None or not peer.has_weights:
        return "h264", "the peer has no model"
    if peer.model != model.name or peer.weights_sha256_prefix != model.sha256_prefix.hex():
        return "h264", "the peer holds other weights"
    if peer.render_fps < 0.9 * fps:
        return "h264", f"the peer renders {peer.render_fps:.1f} frames/s < {fps:g}"
    return "neural", f"the peer holds the weights and renders {peer.render_fps:.1f} frames/s"
