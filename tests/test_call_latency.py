"""The loopback latency benchmark runs end to end and writes its JSON (no speed is asserted)."""

from __future__ import annotations

import json

import pytest

from benchmarks import call_latency


@pytest.mark.slow
def test_call_latency_benchmark_writes_json(tmp_path):
    assert call_latency.main(["--model", "tiny", "--untrained", "--seconds", "2", "--runs", "1",
                              "--threads", "1", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "call_latency.json").read_text())
    assert data["untrained"] is True and data["env"]["git_sha"]
    run = data["results"][0]
    assert run["mode"] == "neural" and run["frames_rendered"] > 10
    assert 0 < run["latency_ms"]["median"] < 5000
    assert run["sender_cpu_ms_per_frame"] > 0
    # aiortc's own counters: at least the payload, plus per-packet framing
    assert run["wire_kbps_measured"] > run["data_channel_payload_kbps"] > 0
