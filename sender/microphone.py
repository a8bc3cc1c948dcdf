"""The microphone as a WebRTC audio track, through PulseAudio or ALSA.

:func:`microphone_track` opens the default (or a named) capture device with aiortc's
``MediaPlayer``, mono at 48 kHz; a machine without one gets a
:class:`~codec.errors.MediaError` that lists every attempt.
"""

from __future__ import annotations

import av
from aiortc import MediaStreamTrack

from codec.errors import MediaError

__all__ = ["microphone_track"]


def microphone_track(device: str | None = None) -> MediaStreamTrack:
    """The microphone as an aiortc audio track (aiortc's ``MediaPlayer``).

    Args:
        device: None tries PulseAudio's "default" source, then ALSA's "default" device.
            "pulse:NAME" or "alsa:NAME" picks the backend; a bare name (e.g. "hw:1,0")
            is tried with PulseAudio, then ALSA.

    Raises:
        MediaError: no backend in this FFmpeg build, or no device could be opened
            (the message lists every attempt).
    """
    from aiortc.contrib.media import MediaPlayer

    if device is not None and device.split(":", 1)[0] in ("pulse", "alsa") and ":" in device:
        backend, name = device.split(":", 1)
        attempts = [(backend, name)]
    else:
        name = device or "default"
        attempts = [("pulse", name), ("alsa", name)]
    failures = []
    for backend, name in attempts:
        if backend not in av.formats_available:
            failures.append(f"{backend}: not in this FFmpeg build")
            continue
        try:
            player = MediaPlayer(name, format=backend, options={"channels": "1", "sample_rate": "48000"})
        except (av.FFmpegError, OSError, ValueError) as exc:
            failures.append(f"{backend} {name!r}: {exc}")
            continue
        if player.audio is None:
            failures.append(f"{backend} {name!r}: opened, but it has no audio stream")
            continue
        return player.audio
    raise MediaError("no microphone available (" + "; ".join(failures) + ")")
