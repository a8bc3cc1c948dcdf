"""``LatestFrame``: the hand-off point between the decoder (which renders frames, usually on a
worker thread) and whatever shows them (the web viewer's video tracks, on an asyncio loop).

It holds only the newest frame. A slow consumer skips frames instead of building a queue, so
showing the call can never add latency or memory to receiving it.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np

__all__ = ["LatestFrame"]

FrameSnapshot = tuple[np.ndarray | None, int, float]
"""(image H×W×3 uint8 RGB or None before the first frame, counter, timestamp in seconds)."""


def _wake(future: asyncio.Future[None]) -> None:
    # Runs on the waiter's own loop; the waiter may have timed out (and cancelled) meanwhile.
    if not future.done():
        future.set_result(None)


class LatestFrame:
    """Thread-safe holder of the newest rebuilt RGB frame and a counter of frames put so far.

    ``put`` may be called from any thread; ``wait_newer`` may be awaited from any number of
    event loops at once. Images are copied on ``put`` and handed out read-only, so neither side
    can change a frame the other is using.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._image: np.ndarray | None = None
        self._counter = 0
        self._timestamp = 0.0
        # Futures of coroutines blocked in wait_newer, each with the loop that owns it.
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()

    def put(self, image: np.ndarray, timestamp: float) -> int:
        """Replace the held frame with ``image`` (H×W×3 uint8 RGB) and return its counter.

        Raises ValueError for any other shape or dtype, so a bad frame fails at its producer
        rather than later inside a video encoder.
        """
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
                or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(
                f"expected an H×W×3 uint8 RGB image, got {getattr(image, 'shape', type(image))} "
                f"{getattr(image, 'dtype', '')}".rstrip())
        frame = np.array(image, dtype=np.uint8, order="C", copy=True)
        frame.setflags(write=False)
        with self._lock:
            self._image = frame
            self._counter += 1
            self._timestamp = float(timestamp)
            counter = self._counter
            waiters, self._waiters = self._waiters, set()
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_wake, future)
            except RuntimeError:
                # That loop has been closed; nobody is waiting on it any more.
                pass
        return counter

    def get(self) -> FrameSnapshot:
        """The newest (image, counter, timestamp); (None, 0, 0.0) before the first ``put``."""
        with self._lock:
            return self._image, self._counter, self._timestamp

    async def wait_newer(self, counter: int, timeout: float) -> FrameSnapshot:
        """Wait up to ``timeout`` seconds for a frame with a counter above ``counter``.

        Returns the newest snapshot as soon as there is one newer than ``counter`` (at once if
        there already is). On timeout it returns the current snapshot instead of raising, so
        callers compare the counter: unchanged means nothing new arrived.
        """
        loop = asyncio.get_running_loop()
        # Registering under the lock that put() takes means a put() between the check and the
        # wait cannot be missed.
        with self._lock:
            if self._counter > counter:
                return self._image, self._counter, self._timestamp
            entry = (loop, loop.create_future())
            self._waiters.add(entry)
        try:
            await asyncio.wait_for(entry[1], timeout=max(0.0, timeout))
        except TimeoutError:
            pass
        finally:
            with self._lock:
                self._waiters.discard(entry)
        return self.get()
