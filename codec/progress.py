"""Progress bars for long jobs: tqdm on a terminal, nothing in CI, pipes or log files.

tqdm's ``disable=None`` turns the bar off when stderr is not a TTY, so CI logs and
redirected output stay clean while an interactive user sees a rate and an ETA.
"""

from __future__ import annotations

from typing import Any


class ProgressBar:
    """A bar fed either with absolute counts (``bar(count)``, the API's progress callbacks)
    or with steps (``bar.update(n)``)."""

    def __init__(self, total: int | None, desc: str, unit: str = "frame") -> None:
        from tqdm import tqdm  # lazy: only the CLI and benchmarks draw bars

        self._bar: Any = tqdm(total=total, desc=desc, unit=unit, disable=None, leave=False,
                              dynamic_ncols=True, mininterval=0.2)

    def __call__(self, count: int, total: int | None = None) -> None:
        if total is not None and self._bar.total != total:
            self._bar.total = total
        self._bar.update(count - self._bar.n)

    def update(self, step: int = 1) -> None:
        self._bar.update(step)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
