"""Opening a media file for reading: the path check and PyAV's demuxer, with typed errors.

Shared by :mod:`codec.media.reading` and :mod:`codec.media.audio`, so a missing or
unreadable file fails the same way for video and audio. PyAV is imported lazily (the
training machine has none).
"""

from __future__ import annotations

import os
from typing import Any

from codec.errors import MediaError

__all__ = ["check_path", "open_input"]


def check_path(path: str | os.PathLike[str]) -> str:
    """``path`` as a string; raises :class:`MediaError` when nothing exists there."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MediaError(f"{path}: no such file")
    return path


def open_input(path: str) -> Any:
    """An ``av`` input container for ``path``; raises :class:`MediaError` when unreadable."""
    import av  # lazy: no PyAV on the training machine

    try:
        return av.open(path, mode="r")
    except av.FFmpegError as exc:
        raise MediaError(f"{path}: unreadable: {exc}") from exc
