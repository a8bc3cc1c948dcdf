"""Bad input on the sending side (issue 27): an empty room, a face that leaves the frame or
moves within it, odd picture sizes and a camera that changes its resolution mid-call. Each
has one log line and a defined behaviour: H.264 until a face is there, a keyframe when it
returns (and not while it moves), a picture capped to the size limit, a typed error, or
frames brought back to the call's size. The default landmark model on the CPU, no peer: the
sender's session runs on its own (no channels, so nothing is sent), which is all these need.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator

import cv2
import numpy as np
import pytest

from codec.api import Encoder
from codec.facecrop import FaceCropper
from codec.zoo import resolve_model
from sender.session import SenderSession

CALL_LOG = "facecodec.call"  # what `facecodec call` shows without -v
WAIT_FRAMES = 400  # frames fed while waiting for the sender's face thread to see a change


@pytest.fixture(scope="module")
def model():
    return resolve_model("landmark", refiner=False)


@pytest.fixture(scope="module")
def turning(model) -> list[np.ndarray]:
    """The built-in portrait, whole photo at 640×480, its head turned in place: 12 frames."""
    from sender.sources import FreeViewPortraitSource

    source = FreeViewPortraitSource(model, num_frames=12, frame_size=(640, 480))
    return [source.frame_at(t) for t in np.linspace(0.0, 1.0, 12)]


EMPTY_ROOM = np.full((480, 640, 3), 120, np.uint8)


def picture(face: np.ndarray, width: int, height: int) -> np.ndarray:
    """A width×height camera frame of the portrait: scaled to cover it, centre-cropped."""
    from sender.sources import cover_to_size

    return cover_to_size(face, (width, height))


def sender(model, frames: Iterator[np.ndarray], size=(640, 480), **options) -> SenderSession:
    """A whole-frame sender of ``frames`` at ``size`` with keyframes coded with each frame
    (no worker thread: every count below is exact)."""
    encoder = Encoder(model.at_size(*size, whole_frame=True), keyframe_codec="webp")
    return SenderSession(frames, fps=25.0, encoder=encoder, cropper=FaceCropper(out_size=size[0]),
                         h264_track=None, mode="neural", drop_late=False, whole_frame=size, **options)


def run(session: SenderSession) -> SenderSession:
    try:
        asyncio.run(session.run(None, None))
    finally:
        session.close()
    return session


def until(frames: list[np.ndarray], done: Callable[[], bool]) -> Iterator[np.ndarray]:
    """``frames`` over and over until ``done()`` (the sender's face thread saw the change), at
    most WAIT_FRAMES: the test waits for the sender, not for a fixed number of frames that a
    loaded machine might not reach in time."""
    for i in range(WAIT_FRAMES):
        if done():
            return
        yield frames[i % len(frames)]


def lines(caplog, start: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith(("facecodec", "sender"))
            and r.getMessage().startswith(start)]


def test_an_empty_room_at_call_start_sends_h264_until_a_face_comes(model, turning, caplog) -> None:
    """No face in the first frame: H.264 (one warning) until the face thread finds one, then
    neural with the stream's first keyframe, coded from a frame with the face."""
    caplog.set_level(logging.INFO)
    holder: dict[str, SenderSession] = {}

    def frames() -> Iterator[np.ndarray]:
        yield from [EMPTY_ROOM] * 10
        yield from until(turning, lambda: holder["session"].mode == "neural")
        yield from turning

    session = holder["session"] = sender(model, frames())
    run(session)
    stats, encoder = session.stats, session.encoder
    assert session.mode == "neural" and stats.h264_frames >= 10 and stats.mode_switches == 1
    assert len(lines(caplog, "no face in the first frame: sending H.264")) == 1
    assert len(lines(caplog, "switching to neural: face found again")) == 1
    assert encoder.stats.keyframes == 1  # coded once the face is there, from a frame with it
    assert stats.neural_frames >= len(turning)


def test_a_face_that_leaves_and_returns_costs_one_switch_each_way_and_one_keyframe(model, turning,
                                                                                    caplog) -> None:
    """Mid-call, the face leaves the frame (an empty room): H.264 once it has been gone for
    ``face_lost_frames``; back to neural with a new keyframe when it returns, each with one log line."""
    caplog.set_level(logging.INFO)
    holder: dict[str, SenderSession] = {}

    def frames() -> Iterator[np.ndarray]:
        yield from turning * 2
        yield from until([EMPTY_ROOM], lambda: holder["session"].mode == "h264")
        yield from until(turning, lambda: holder["session"].mode == "neural")
        yield from turning

    session = holder["session"] = sender(model, frames(), face_lost_frames=10)
    run(session)
    reasons = [why for _, why in session.encoder.stats.keyframe_reasons]
    assert session.mode == "neural" and session.stats.mode_switches == 2
    assert reasons == ["stream start", "back to neural: face found again"], reasons
    assert len(lines(caplog, "switching to h264: face lost for")) == 1
    assert len(lines(caplog, "switching to neural: face found again")) == 1


def test_a_face_moving_within_the_whole_frame_sends_no_new_keyframe(model, turning) -> None:
    """The whole frame is sent: a face that moves across it (here 190 px right and 95 px down
    over 40 frames) is motion, not a reason for a keyframe or a switch."""
    face = cv2.resize(turning[0], (320, 240), interpolation=cv2.INTER_AREA)
    moving = []
    for i in range(40):
        frame = np.full((480, 640, 3), 90, np.uint8)
        x, y = 5 * i, 5 * i // 2
        frame[y:y + 240, x:x + 320] = face
        moving.append(frame)
    session = run(sender(model, iter(moving)))
    assert session.mode == "neural" and session.stats.mode_switches == 0
    assert session.stats.neural_frames == 40 and session.stats.face_checks >= 1
    assert session.encoder.stats.keyframe_reasons == [(0, "stream start")]


def test_a_camera_that_changes_resolution_mid_call_is_scaled_to_the_calls_size(model, turning, caplog) -> None:
    """640×480, then 1280×720, then 640×480 again: every picture sent stays 640×480, the
    wider one centre-cropped to 4:3 (not stretched), with one log line and one new keyframe
    per change."""
    from sender.sources import cover_to_size

    caplog.set_level(logging.INFO)
    wide = [picture(frame, 1280, 720) for frame in turning[:8]]
    sent: list[np.ndarray] = []
    session = sender(model, iter(turning[:8] + wide + turning[:8]),
                     on_frame=lambda crop, t: sent.append(crop))
    run(session)
    assert [crop.shape for crop in sent] == [(480, 640, 3)] * 24
    assert np.array_equal(sent[8], cover_to_size(wide[0], (640, 480)))
    assert session.stats.resolution_changes == 2
    changes = lines(caplog, "the source's frames changed from")
    assert changes == [("the source's frames changed from 640×480 to 1280×720: centre-cropped and scaled "
                        "to the call's 640×480"),
                       "the source's frames changed from 1280×720 to 640×480: back at the call's size"]
    reasons = list(session.encoder.stats.keyframe_reasons)
    assert reasons == [(0, "stream start"), (8, "the source's resolution changed"),
                       (16, "the source's resolution changed")], reasons


ODD_SIZES = [(641, 479), (1, 1), (1080, 1920), (8000, 8000)]
# (width, height) the picture is coded at: capped to 1280×720 (the long side to 1280, the
# short to 720), even sides; None: no face to find (typed error / H.264).
CODED = {(641, 479): (640, 480), (1, 1): None, (1080, 1920): (720, 1280), (8000, 8000): (720, 720)}


@pytest.mark.parametrize("size", ODD_SIZES, ids=[f"{w}x{h}" for w, h in ODD_SIZES])
def test_compress_takes_odd_picture_sizes(model, turning, tmp_path, size, capsys) -> None:
    """``compress`` of an odd-sized input (an image sequence: any size a file may have): the
    picture within the 1280×720 cap, or for a 1×1 input (no face there) one error line."""
    from app.__main__ import main
    from codec.bitstream import read_container

    width, height = size
    folder = tmp_path / "frames"
    folder.mkdir()
    frames = 1 if width * height > 4_000_000 else 3  # an 8000×8000 frame is 192 MB
    image = picture(turning[3], width, height)
    for i in range(frames):
        cv2.imwrite(str(folder / f"{i:03d}.png"), image[:, :, ::-1])
    code = main(["compress", str(folder), str(tmp_path / "out.fvc"), "--no-audio", "--no-patches"])
    err = capsys.readouterr().err
    if CODED[size] is None:
        assert code == 2 and err.count("error:") == 1 and "no face found" in err, err
        return
    assert code == 0, err
    with open(tmp_path / "out.fvc", "rb") as f:
        header = read_container(f).header
    assert (header.width, header.height) == CODED[size] and header.whole_frame


@pytest.mark.parametrize("size", ODD_SIZES, ids=[f"{w}x{h}" for w, h in ODD_SIZES])
def test_a_call_sender_takes_odd_camera_sizes(model, turning, size, caplog) -> None:
    """A call's sender on an odd-sized camera: the picture (neural and H.264 alike) within
    the 1280×720 cap; a 1×1 camera (no face) sends H.264 with one warning."""
    from app.call import Call, CallOptions, call_encoder
    from sender.media_tracks import H264Track

    caplog.set_level(logging.INFO)
    options = CallOptions(mode="neural", live=False)
    image = picture(turning[3], *size)
    call = Call(None, model=model, frames=iter([image] * 4), options=options)
    asyncio.run(call._picture_size())
    expected = CODED[size] or (16, 16)  # 1×1: scaled up to the smallest picture sent
    assert call.whole_frame and call.picture_size == expected
    track = H264Track(call.picture_size, fps=25.0, bitrate_kbps=30.0)
    sent: list[tuple[int, int, int]] = []
    session = SenderSession(call.frames, fps=25.0, encoder=call_encoder(call.send_model, options),
                            cropper=FaceCropper(out_size=call.picture_size[0]), h264_track=track,
                            mode="neural", drop_late=False, whole_frame=call.picture_size,
                            on_frame=lambda crop, t: sent.append(crop.shape))
    try:
        run(session)
    finally:
        track.stop()
    assert sent == [(expected[1], expected[0], 3)] * 4
    if CODED[size] is None:
        assert session.mode == "h264" and session.stats.h264_frames == 4
        assert len(lines(caplog, "no face in the first frame")) == 1
    else:
        assert session.mode == "neural" and session.stats.neural_frames == 4
        assert session.encoder.stats.keyframes == 1


def test_face_checks_in_an_empty_room_take_a_bounded_share_of_a_core(model, monkeypatch) -> None:
    """Waiting on H.264 for a face to come back, the sender's face thread spaces its checks
    by their cost (sender.session.FACE_CHECK_CPU_SHARE): a detector that spends 0.2 s of CPU
    on each empty frame (about what dlib's upsampled pass costs at 640×480) no longer runs
    back to back every 5 frames."""
    import time

    import codec.facecrop
    from sender.session import FACE_CHECK_CPU_SHARE

    def costly_detector(frame, *args, **kwargs):
        started = time.thread_time()
        while time.thread_time() - started < 0.2:
            pass
        return None

    monkeypatch.setattr(codec.facecrop, "detect_landmarks", costly_detector)
    session = sender(model, iter([EMPTY_ROOM] * 100))  # 4 s at 25 fps
    started = time.monotonic()
    run(session)
    wall = time.monotonic() - started
    stats = session.stats
    assert session.mode == "h264" and stats.h264_frames == 100
    # Back to back, 0.2-s checks would fill about 4 s; spaced, a quarter of that (+ one check).
    assert stats.face_checks >= 2
    assert stats.face_cpu_ms_total / 1000.0 <= FACE_CHECK_CPU_SHARE * wall + 0.5, (stats.face_checks, wall)
