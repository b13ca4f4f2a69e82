"""A one-line progress bar on stderr for commands that print results on stdout as they go.

Drawn only when stderr is a terminal, so pipes, files and tests see nothing of it. Lines for
stdout or stderr are written inside `aside`, which takes the bar off its line first and draws it again
after them: a terminal that shows both streams never gets a result glued to the bar.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

WIDTH = 30  # characters of the bar itself


class ProgressBar:
    """`done` of `total` items, their rate and the time left, redrawn in place on `stream`.

    Args:
        total: How many items there are.
        label: What is being done ("predicting").
        stream: Where the bar goes (default: stderr at the time of the call).
        enabled: Draw it (default: only when `stream` is a terminal).
    """

    def __init__(self, total: int, label: str, stream: TextIO | None = None, enabled: bool | None = None):
        self.total, self.label, self.done = total, label, 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _is_terminal(self.stream) if enabled is None else enabled
        self.started = time.monotonic()
        self._drawn = False

    def advance(self, count: int = 1) -> None:
        """Counts `count` more items done and redraws."""
        self.done += count
        self._draw()

    @contextmanager
    def aside(self) -> Iterator[None]:
        """Takes the bar off its line while the caller writes whole lines (to stdout or stderr),
        then draws it again below them."""
        self._erase()
        try:
            yield
        finally:
            sys.stdout.flush()
            self._draw()

    def close(self) -> None:
        """Takes the bar off the terminal."""
        self._erase()

    def text(self) -> str:
        """The bar's line: label, bar, count, percent, rate and time left."""
        share = self.done / self.total if self.total else 1.0
        filled = int(WIDTH * min(share, 1.0))
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else None
        eta = "--:--" if left is None else f"{int(left) // 60:02d}:{int(left) % 60:02d}"
        return (f"{self.label} [{'#' * filled}{'.' * (WIDTH - filled)}] {self.done}/{self.total} "
                f"{share:4.0%} {rate:.1f}/s ETA {eta}")

    def _draw(self) -> None:
        if self.enabled:
            self.stream.write("\r" + self.text() + "\x1b[K")
            self.stream.flush()
            self._drawn = True

    def _erase(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False

    def __enter__(self) -> ProgressBar:
        self._draw()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False
