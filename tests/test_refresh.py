"""The sender's closed loop: it renders its own packets and refreshes the keyframe when the
receiver's rebuild drifts from the real frame, within its interval and byte budget."""

from __future__ import annotations

import numpy as np
import pytest

from codec.api import Decoder, Encoder, RefreshPolicy, rebuild_psnr
from codec.zoo import resolve_model


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    """40 frames of the default portrait turning its head, then 40 of a different scene (the
    same portrait mirrored and shifted in colour): a cut no warp of the first keyframe shows."""
    from sender.sources import FreeViewPortraitSource

    model = resolve_model()
    frames = list(FreeViewPortraitSource(model, num_frames=40))
    cut = [np.ascontiguousarray(f[:, ::-1, ::-1]) for f in frames]
    return frames + cut


def run(policy: RefreshPolicy | None, frames: list[np.ndarray]) -> tuple[Encoder, list[np.ndarray]]:
    model = resolve_model()
    encoder = Encoder(model, refresh=policy)
    decoder = Decoder.from_header(encoder.header(), model=model)
    shown = []
    for i, frame in enumerate(frames):
        for packet in encoder.encode(frame, i / 25):
            decoded = decoder.decode(packet)
            if decoded is not None:
                shown.append(decoded.image)
    return encoder, shown


def test_a_scene_the_keyframe_cannot_show_triggers_a_refresh(clip):
    policy = RefreshPolicy(threshold_db=24.0, hold_checks=3, min_interval_s=1.0)
    encoder, shown = run(policy, clip)
    seqs = [seq for seq, _ in encoder.stats.refreshes]
    # The cut is at frame 40: the loop sees it within its hold time and refreshes once;
    # the turning head before it is rebuilt well enough to need none.
    assert len(seqs) == 1 and 40 < seqs[0] <= 40 + policy.hold_checks + 1, encoder.stats.refreshes
    assert encoder.stats.keyframes == 2
    assert "dB" in encoder.stats.refreshes[0][1]
    # After the refresh the receiver shows the new scene; without the loop it never does.
    without, shown_without = run(None, clip)
    assert without.stats.keyframes == 1
    assert rebuild_psnr(shown_without[-1], clip[-1]) < 20.0
    assert rebuild_psnr(shown[-1], clip[-1]) > rebuild_psnr(shown_without[-1], clip[-1]) + 5.0


def test_refreshes_respect_the_interval_and_the_byte_budget(clip):
    # A threshold no frame meets: only the interval and the budget stop refreshes.
    eager = RefreshPolicy(threshold_db=99.0, hold_checks=1, min_interval_s=0.4, max_keyframe_kbps=1000.0)
    encoder, _ = run(eager, clip)
    seqs = [seq for seq, _ in encoder.stats.refreshes]
    assert len(seqs) >= 5 and min(np.diff(seqs)) >= 10  # 0.4 s at 25 fps
    tight = RefreshPolicy(threshold_db=99.0, hold_checks=1, min_interval_s=0.4, max_keyframe_kbps=20.0)
    encoder, _ = run(tight, clip)
    seconds = len(clip) / 25
    average_kbit = 8 * encoder.stats.keyframe_bytes / (1000 * encoder.stats.keyframes)
    # The first keyframe and one refresh of credit, then 20 kbit/s.
    assert encoder.stats.keyframe_bytes * 8 / 1000 <= 20.0 * seconds + 2 * average_kbit + 1e-6
    assert len(encoder.stats.refreshes) < len(seqs)


def test_relative_threshold_refreshes_on_the_cut_only(clip):
    """drop_db judges each keyframe by its own first rebuild (~40 dB here): the turn before
    the cut costs ~9 dB, the cut ~20."""
    encoder, _ = run(RefreshPolicy(drop_db=12.0, hold_checks=3), clip)
    seqs = [seq for seq, _ in encoder.stats.refreshes]
    assert len(seqs) == 1 and 40 < seqs[0] <= 44, encoder.stats.refreshes
