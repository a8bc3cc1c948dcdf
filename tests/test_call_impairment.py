"""One cell of the impairment matrix (benchmarks/impairment.py) as a test: a real call between
three processes (signaling in the middle namespace, the sender and the receiver in their own)
with the default model, over a link with 10 % random loss (iptables statistic) and a
50 kbit/s cap (tc tbf) each way. The bounds are on the benchmark's own figures (the
receiver's freeze meter, its keyframe recoveries, the sender's wire meter), not on sleeps.

Needs root, iproute2 (ip, tc), iptables and /dev/net/tun: skips with the reason without them,
and fails under CI=true where .ci/run (root) provides them."""

from __future__ import annotations

import json
import os

import pytest
from conftest import shared_data_dir, skip_or_fail_in_ci

from benchmarks.impairment import DEFAULT_CLIP, matrix, run_cell
from benchmarks.netimpair import tools_missing

SECONDS = 20.0  # the matrix runs 30 s a cell; CI's whole run must stay short


def _unavailable(reason: str) -> None:
    skip_or_fail_in_ci(reason, ci_provides=os.geteuid() == 0)


@pytest.mark.slow
def test_call_with_loss_and_a_rate_cap_recovers(tmp_path):
    reason = tools_missing()
    if reason:
        _unavailable(reason)
    cell = next(c for c in matrix() if c.name == "loss10-cap50")
    data = shared_data_dir()
    # A real clip where ../shared is there (CI), else the built-in talking portrait.
    clip = str(data / DEFAULT_CLIP) if data is not None and (data / DEFAULT_CLIP).is_file() else None
    figures = run_cell(cell, tmp_path, seconds=SECONDS, clip=clip)
    if "skipped" in figures:
        _unavailable(figures["skipped"])
    text = json.dumps({k: v for k, v in figures.items() if k not in ("freezes",)}, default=str)[:6000]
    assert figures["ended_cleanly"], text  # exit 0, one call each side, no traceback, nothing leaked
    assert figures["mode_at_end"] == "neural", text
    assert figures["motion_loss"] > 0.03, text  # the loss was really there
    assert figures["first_picture_s"] is not None and figures["first_picture_s"] < 5.0, text
    # Pictures kept coming: every freeze recovered within 5 s, at most 40 % of the call frozen.
    # (A keyframe after a burst of losses shares the link with ~23 kbit/s of audio.)
    # (Before the link adaptation, the matrix's 20 kbit/s cell showed its first picture after
    # 21.8 s and 0.11 frames/s; the bounds leave room for a loaded 2-core CI machine.)
    assert figures["longest_freeze_s"] < 5.0, text
    assert figures["frozen_s"] < 0.4 * SECONDS, text
    assert figures["rendered_fps"] >= 5.0, text
    # Each keyframe the receiver asked for was shown within 5 s of asking.
    assert all(s < 5.0 for s in figures["keyframe_recovery_s"] or []), text
    # Under the cap: the sender's whole wire rate (audio, motion, keyframes, SCTP and the resends
    # of what was lost), counted before the shaper drops anything. With audio in 20 ms packets
    # runs gave 50.4-59.9 kbit/s; audio in 60 ms packets on this link (rtc.opus_encoder) gave
    # 29.0, 29.4 and 34.1. A sender that ignored the cap (the 20 kbit/s H.264 cell once sent
    # 257) fails here.
    assert figures["wire_kbps_total"] < 50.0, text
