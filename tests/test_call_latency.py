"""The loopback latency benchmark runs end to end and writes its JSON (no speed is asserted)."""

from __future__ import annotations

import json

import pytest

from benchmarks import call_latency


@pytest.mark.slow
def test_call_latency_benchmark_writes_json(tmp_path):
    assert call_latency.main(["--model", "tiny", "--untrained", "--seconds", "2", "--runs", "1",
                              "--threads", "1", "--setups", "neural", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "call_latency.json").read_text())
    assert data["untrained"] is True and data["env"]["git_sha"]
    run = data["results"][0]
    assert run["mode"] == "neural" and run["frames_rendered"] > 10 and run["audio"]
    assert 0 < run["latency_ms"]["median"] < 5000
    assert run["sender_cpu_ms_per_frame"] > 0
    # aiortc's own counters: at least the payload, plus per-packet framing
    assert run["wire_kbps_measured"] > run["data_channel_payload_kbps"] > 0


@pytest.mark.slow
def test_motion_stream_on_the_wire_stays_within_its_budget(tmp_path):
    """The default model at its default quality, in a call with audio: the bytes the motion
    stream puts on the sender's wire (its RTP header extension elements in the audio packets,
    and any data-channel datagram it still needs), as the call benchmark measures them, are
    within the budget the benchmark states. One message per frame on the data channel, the
    old way, is not."""
    assert call_latency.main(["--model", "landmark", "--seconds", "4", "--runs", "1", "--threads", "1",
                              "--setups", "neural,neural-datachannel", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "call_latency.json").read_text())
    budget = data["summary"]["motion_wire_budget_kbps"]
    after, before = (next(r for r in data["results"] if r["setup"] == s) for s in ("neural", "neural-datachannel"))
    assert after["frames_rendered"] > 50 and after["motion_packets_on_audio"] > 0.9 * after["frames_sent"]
    assert after["motion_kbps"] > 0.5  # motion was actually sent
    assert after["wire_kbps"]["motion"] <= budget, after["wire_kbps"]
    assert before["wire_kbps"]["motion"] > budget, before["wire_kbps"]  # the per-message overhead
