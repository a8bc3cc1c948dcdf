"""Keyframes coded off the frame loop: the sender's side of a real-time stream.

An AV1 keyframe takes ~110 ms to encode at 256 px on one core of the 2-core machine (WebP
~8 ms); coded on the frame loop it would make three frames late at every keyframe. The
:class:`~codec.api.Encoder` with ``keyframe_worker=True`` hands the crop (and its keyframe
info, taken on the loop) to one background thread and goes on encoding each frame as motion
against the keyframe the receiver holds; the keyframe packet goes out, with the sequence
number and timestamp of the frame it was taken from, before the motion of the first frame
encoded after the worker finished. The receiver renders every motion packet against the
newest keyframe it holds, so the frames in between still show (from the old keyframe), and
the closed loop counts the new keyframe from its own frame (``RefreshLoop.keyframe_sent``).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np

from codec.keyframe import encode_keyframe, received_keyframe

__all__ = ["CodedKeyframe", "KeyframeJob", "KeyframeWorker", "code_keyframe"]


@dataclass(frozen=True)
class KeyframeJob:
    """A keyframe to code: the frame it was taken from, and how to code it."""

    seq: int  # the frame's sequence number (the keyframe packet carries it)
    ticks: int  # the frame's timestamp in timebase ticks
    image: np.ndarray  # S×S×3 uint8 RGB: the crop (a copy the caller no longer touches)
    info: bytes  # the family's keyframe info (landmark family: the crop's 68 landmarks)
    reason: str  # why it is sent
    codec: str
    quality: int
    size: int | tuple[int, int]  # the model's picture: a square's side, or (width, height)
    decode: bool  # also decode it as the receiver will (the closed loop and patches need it)


@dataclass(frozen=True)
class CodedKeyframe:
    """A coded keyframe: the job, its image bytes and, when asked for, the received image."""

    job: KeyframeJob
    data: bytes
    received: np.ndarray | None  # S×S×3 uint8 RGB, what the receiver holds


def code_keyframe(job: KeyframeJob) -> CodedKeyframe:
    """Code (and decode, when ``job.decode``) one keyframe; pure, so any thread may run it."""
    data = encode_keyframe(job.image, job.codec, job.quality)
    received = received_keyframe(data, job.codec, job.size) if job.decode else None
    return CodedKeyframe(job, data, received)


class KeyframeWorker:
    """One background thread coding one keyframe at a time (started on first use)."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._job: Future[Any] | None = None

    @property
    def busy(self) -> bool:
        """A keyframe is being coded, or is coded and not yet taken."""
        return self._job is not None

    def submit(self, job: KeyframeJob, code: Callable[[KeyframeJob], Any] = code_keyframe) -> None:
        """Code ``job`` on the thread: with ``code_keyframe`` (whole), or another coder of it
        (the Encoder's predicted refresh, which returns what ``take`` then gives back)."""
        if self._job is not None:
            raise RuntimeError("a keyframe is already being coded")
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keyframe-encode")
        self._job = self._pool.submit(code, job)

    def take(self) -> Any:
        """The coded keyframe once it is done (once; an encoder error is raised here), else None."""
        job = self._job
        if job is None or not job.done():
            return None
        self._job = None
        return job.result()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the keyframe being coded is done (up to ``timeout`` s); whether one is."""
        if self._job is None:
            return False
        return bool(wait([self._job], timeout=timeout).done)

    def close(self) -> None:
        """Stop the thread; a keyframe still being coded is dropped."""
        self._job = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
