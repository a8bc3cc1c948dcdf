"""The facecodec command: refuses untrained runs unless asked, and works end to end."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest

from app.__main__ import main
from sender.sources import write_default_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_default_clip(tmp_path_factory.mktemp("cli") / "in.mp4", num_frames=12,
                              size=(256, 256))


def test_vid2vid_refuses_to_run_without_weights(clip, tmp_path, capsys):
    assert main(["compress", str(clip), str(tmp_path / "x.fvc"), "--model", "vox256"]) == 2
    err = capsys.readouterr().err
    assert "no trained weights" in err and "--untrained" in err
    assert not (tmp_path / "x.fvc").exists()


def test_default_model_compresses_and_decompresses(clip, tmp_path, capsys, monkeypatch):
    """No flags: the landmark family runs, nothing is marked untrained; --no-refiner renders
    the plain warp (the refiner never runs), without it the refiner does."""
    from codec.families.landmark import LandmarkModel

    stream = tmp_path / "d.fvc"
    assert main(["compress", str(clip), str(stream)]) == 0
    out = capsys.readouterr().out
    assert "UNTRAINED" not in out and "bits/frame" in out
    assert "as a call sends it" in out and "data channel only" in out
    assert main(["info", str(stream)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"] == "landmark" and not info["untrained"] and info["family"] == 2
    assert info["size"] == [256, 256]  # the clip's whole frame, at its own size
    refined: list[int] = []
    refine = LandmarkModel._refine
    monkeypatch.setattr(LandmarkModel, "_refine",
                        lambda self, source, warped, *rest, **options: refined.append(len(warped))
                        or refine(self, source, warped, *rest, **options))
    assert main(["decompress", str(stream), str(tmp_path / "d.mp4")]) == 0
    assert "12 frames" in capsys.readouterr().out
    assert sum(refined) == 12
    refined.clear()
    assert main(["decompress", str(stream), str(tmp_path / "plain.mp4"), "--no-refiner"]) == 0
    assert "12 frames" in capsys.readouterr().out
    assert refined == []


def test_compress_info_decompress(clip, tmp_path, capsys):
    stream = tmp_path / "x.fvc"
    assert main(["compress", str(clip), str(stream), "--untrained", "--model", "tiny",
                 "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "UNTRAINED" in out and "keyframe" in out and "bits/frame" in out and "kbit/s" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["frames"] == 12 and report["untrained"] is True
    # Motion rides on the audio packets in a call: a few bytes each, not a message's 93.
    assert 0 < report["wire_kbps_call_motion"] < report["wire_kbps_data_channel_motion"] / 4
    assert report["wire_kbps_call"] < report["wire_kbps_data_channel"]
    assert main(["info", str(stream)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"] == "tiny" and info["untrained"] and info["motion_packets"] == 12
    # The receiver must be told explicitly too.
    assert main(["decompress", str(stream), str(tmp_path / "y.mp4")]) == 2
    assert "untrained" in capsys.readouterr().err
    assert main(["decompress", str(stream), str(tmp_path / "y.mp4"), "--untrained",
                 "--frontalize"]) == 0
    assert "12 frames" in capsys.readouterr().out
    # --seed takes effect without --model: another seed is another (mismatching) network.
    assert main(["decompress", str(stream), str(tmp_path / "y.mp4"), "--untrained", "--seed", "1"]) == 2
    assert "this receiver has 'tiny' weights" in capsys.readouterr().err


def test_wire_estimate_puts_motion_on_the_audio_packets():
    """One second of 25 motion packets of 10 bytes and a 1000-byte keyframe: on the audio
    packets each motion packet adds 12 bytes (an element with its header, padded to 4); as
    data-channel messages each costs 93 more."""
    from app.wire_estimate import wire_estimate
    from codec.files import CompressReport

    report = CompressReport(
        path="x.fvc", frames=25, fps=25.0, header_bytes=100, keyframes=1, keyframe_bytes=1000,
        motion_bytes=250, intra_packets=1, patches=0, patch_bytes=0, audio_bytes=0, file_bytes=0,
        untrained=False, crop=(0.0, 0.0, 1.0), encode_seconds=1.0, quality=3,
        motion_packet_sizes={10: 25}, message_sizes=[1000])
    estimate = wire_estimate(report)
    messages = 100 + 93 + 1000 + 93
    assert estimate.call_motion_kbps == pytest.approx(25 * 12 * 8 / 1000)
    assert estimate.call_kbps == pytest.approx((messages + 25 * 12) * 8 / 1000)
    assert estimate.data_channel_motion_kbps == pytest.approx(25 * (10 + 93) * 8 / 1000)
    assert estimate.data_channel_kbps == pytest.approx((messages + 25 * 103) * 8 / 1000)


def test_bad_inputs_give_clear_errors(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.fvc")]) == 2
    garbage = tmp_path / "garbage.fvc"
    garbage.write_bytes(b"FVVF\x01" + b"\xff" * 40)
    assert main(["info", str(garbage)]) == 2
    assert main(["decompress", str(garbage), str(tmp_path / "o.mp4"), "--untrained"]) == 2
    assert main(["compress", str(tmp_path / "missing.mp4"), str(tmp_path / "o.fvc"),
                 "--untrained", "--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 4


@pytest.mark.slow
def test_demo_writes_side_by_side_recording_and_report(tmp_path, capsys):
    """The README's main job exactly as a user runs it (default model), only shorter."""
    out = tmp_path / "demo"
    assert main(["demo", "--seconds", "2", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["untrained"] is False and report["mode"] == "neural"
    assert report["frames_rendered"] == report["frames_sent"] == 50
    # (The payload divides by the 2 s of frames, the wire rate by the meter's span, connection
    # included: with a 640×480 keyframe the two are not ordered.)
    assert report["payload_kbps"] > 0 and report["wire_kbps"] > 0
    assert report["motion_on_audio_packets"] > 40  # motion rode on the audio bed's packets
    assert 0 < report["motion_wire_kbps"] < report["wire_kbps"]
    assert report["h264_kbps"] > 0 and report["latency_ms_median"] is not None
    with av.open(str(out / "side_by_side.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (3 * 640, 480)  # the whole photo, 640×480
        assert container.streams.audio
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(frames) == 50
    # The rebuilt face (middle third) moves with the input and stays close to it.
    ours = [f[:, 640:1280].astype(float) for f in frames]
    inputs = [f[:, :640].astype(float) for f in frames]
    assert np.abs(ours[0] - ours[25]).mean() > 3.0
    assert max(np.abs(a - b).mean() for a, b in zip(ours[1:], inputs[1:])) < 12.0
    # The recording of every frame is on the sender's timeline: each frame in its own slot, none
    # repeated, however late this CPU rendered them.
    assert report["recording"]["frames_written"] == 50 and report["recording"]["frames_duplicated"] == 0
    with av.open(str(out / "received.mp4")) as container:
        assert container.streams.audio and container.streams.video
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert float(video.duration * video.time_base) == pytest.approx(2.0, abs=1e-6)
        assert float(audio.duration * audio.time_base) == pytest.approx(2.0, abs=0.25)
    assert "UNTRAINED" not in capsys.readouterr().out


def test_call_without_token_is_refused(capsys, monkeypatch):
    monkeypatch.delenv("FACECODEC_SIGNALING_TOKEN", raising=False)
    assert main(["call", "--room", "r", "--untrained"]) == 2
    assert "token" in capsys.readouterr().err


@pytest.mark.slow
def test_untrained_recordings_carry_the_banner(tmp_path, capsys):
    """Every output of an untrained model says so in the picture, the call's recording too."""
    out = tmp_path / "demo"
    assert main(["demo", "--untrained", "--model", "tiny", "--seconds", "1", "--out", str(out)]) == 0
    for name in ("received.mp4", "side_by_side.mp4"):
        with av.open(str(out / name)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
        size = 64  # the tiny model's frames; the banner is a black band with red text on top
        rebuilt = [f[:, size:2 * size] if name == "side_by_side.mp4" else f for f in frames]
        shown = [f for f in rebuilt if f.mean() > 5]  # frames before the first render are black
        assert shown, name
        for frame in shown:
            band = frame[:8].astype(int)
            assert (band[..., 0] - band[..., 2]).max() > 60, name  # red text on the band
            assert np.median(band) < 40, name  # the band itself is black
    assert "UNTRAINED" in capsys.readouterr().out


def test_help_lists_defaults_models_and_takes_v_after_the_command(capsys):
    for command in ("compress", "decompress", "roundtrip", "demo", "call"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert "(default: landmark)" in text and "vox256" in text, command
        assert "(default: cpu)" in text, command
    with pytest.raises(SystemExit):
        main(["compress", "--help"])
    text = capsys.readouterr().out
    assert "(default: 3; 5 with --refresh)" in " ".join(text.split()) and "(default: av1)" in text and "a video file with a face" in text
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and "landmark family" in text
    assert main(["info", "missing.fvc", "-v"]) == 2  # -v after the subcommand parses


def test_a_bad_refresh_gain_is_a_usage_error(tmp_path, capsys):
    for command in (["compress", str(tmp_path / "a.mp4"), str(tmp_path / "a.fvc")],
                    ["call", "--signaling", "ws://127.0.0.1:1/ws", "--room", "r", "--token", "t"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--refresh", "soon"])
        assert exit_info.value.code == 2
        assert "--refresh takes a gain or 'off', not 'soon'" in capsys.readouterr().err


def test_references_reach_the_stream_header_and_bad_counts_are_usage_errors(clip, tmp_path, capsys):
    from codec.bitstream.container import read_container

    stream = tmp_path / "k.fvc"
    assert main(["compress", str(clip), str(stream), "--untrained", "--model", "tiny",
                 "--refresh", "0.1", "--references", "3"]) == 0
    capsys.readouterr()
    assert read_container(stream.read_bytes()).header.reference_slots == 3
    for bad in ("0", "17", "x"):
        with pytest.raises(SystemExit) as exit_info:
            main(["compress", str(clip), str(tmp_path / "b.fvc"), "--references", bad])
        assert exit_info.value.code == 2
