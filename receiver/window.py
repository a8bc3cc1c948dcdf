"""Show the receiver's rebuilt frames in a window: :class:`WindowSink` (Tk).

No PIL, no OpenCV GUI (the headless OpenCV build has none): frames go to Tk as PPM images.
The window drops frames when it falls behind, so showing a call never slows receiving it.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from typing import Any, Self

import numpy as np

from receiver.sinks import SinkUnavailableError, check_frame

__all__ = ["WindowSink"]


def _ppm(frame_rgb: np.ndarray) -> bytes:
    """A binary PPM (P6) image of an H×W×3 uint8 RGB frame: what Tk's photo reads natively."""
    height, width = frame_rgb.shape[:2]
    return b"P6 %d %d 255\n" % (width, height) + np.ascontiguousarray(frame_rgb).tobytes()


class WindowSink:
    """Show frames in a window (Tk), keeping only the newest when the window lags.

    The Tk event loop runs in its own thread; :meth:`show` only swaps the newest frame
    into a slot that the Tk thread polls, so the caller never blocks on drawing. A frame
    not yet drawn when the next arrives is dropped and counted.

    Args:
        title: the window title.
        poll_ms: how often the Tk thread looks for a new frame.
        timeout_s: how long to wait for the window to open.

    Raises:
        SinkUnavailableError: no display, no tkinter, or Tk could not open a window.
    """

    def __init__(self, title: str = "facecodec", *, poll_ms: int = 5, timeout_s: float = 10.0) -> None:
        ok, reason = self.available()
        if not ok:
            raise SinkUnavailableError(f"cannot open a window: {reason}")
        self.title = title
        self.poll_ms = max(1, int(poll_ms))
        self.frames_shown = 0
        self.frames_dropped = 0
        self._lock = threading.Lock()
        self._latest: np.ndarray | None = None
        self._stop = threading.Event()
        self._closed = threading.Event()  # the window is gone (closed by us or the user)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"WindowSink {title}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            self._stop.set()
            raise SinkUnavailableError(f"the window did not open within {timeout_s} s")
        if self._error is not None:
            raise SinkUnavailableError(f"Tk could not open a window: {self._error}") from self._error

    @staticmethod
    def available() -> tuple[bool, str]:
        """(True, "") if a window can be opened here, else (False, why not)."""
        if sys.platform.startswith("linux") or "bsd" in sys.platform:
            if not os.environ.get("DISPLAY"):
                return False, "no DISPLAY set (no X server; Tk cannot draw on a bare Wayland)"
        try:
            import tkinter  # noqa: F401
        except ImportError as exc:
            return False, f"tkinter is missing ({exc}); install the python3-tk package"
        return True, ""

    @property
    def closed(self) -> bool:
        """True once the window is gone (closed by :meth:`close` or by the user)."""
        return self._closed.is_set()

    def show(self, frame_rgb: np.ndarray) -> bool:
        """Display an H×W×3 uint8 RGB frame (returns at once).

        Returns:
            False if the window is closed (the frame is discarded), True otherwise.
        """
        check_frame(frame_rgb)
        if self._closed.is_set():
            return False
        frame = np.array(frame_rgb, copy=True)
        with self._lock:
            if self._latest is not None:
                self.frames_dropped += 1
            self._latest = frame
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Close the window and end its thread (idempotent)."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self) -> None:
        """The Tk thread: every Tk object is created and used here only."""
        try:
            import tkinter

            root = tkinter.Tk()
            root.title(self.title)
            label = tkinter.Label(root, borderwidth=0)
            label.pack()
            photo: Any = None
        except Exception as exc:  # noqa: BLE001 - TclError and friends: reported to __init__
            self._error = exc
            self._closed.set()
            self._ready.set()
            return

        def on_user_close() -> None:
            self._stop.set()

        def poll() -> None:
            nonlocal photo
            if self._stop.is_set():
                root.destroy()
                return
            with self._lock:
                frame, self._latest = self._latest, None
            if frame is not None:
                height, width = frame.shape[:2]
                if photo is None or (photo.width(), photo.height()) != (width, height):
                    photo = tkinter.PhotoImage(master=root, width=width, height=height)
                    label.configure(image=photo)
                photo.configure(data=_ppm(frame), format="PPM")
                self.frames_shown += 1
            root.after(self.poll_ms, poll)

        root.protocol("WM_DELETE_WINDOW", on_user_close)
        root.after(0, poll)
        self._ready.set()
        try:
            root.mainloop()
        finally:
            # Tk objects must die in this thread: one freed later by the main thread's
            # garbage collector aborts the process (Tcl_AsyncDelete). The closures hold
            # them in a reference cycle, so break it and collect here.
            photo = label = root = None
            poll = on_user_close = None  # type: ignore[assignment]
            gc.collect()
            self._closed.set()
