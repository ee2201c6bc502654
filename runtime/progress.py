"""Minimal progress reporting for long work (export, text encoding, eval, training, benchmarks)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Prints ``desc: 42% (21/50) 3.1s`` lines to stderr, at most every ``interval`` seconds."""

    def __init__(
        self, total: int, desc: str, *, enabled: bool = True, interval: float = 1.0, stream: TextIO | None = None
    ) -> None:
        self.total = max(int(total), 1)
        self.desc = desc
        self.enabled = enabled
        self.interval = interval
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = time.perf_counter()
        self._last = 0.0
        self.extra = ""

    def update(self, n: int = 1, extra: str = "") -> None:
        """Advance by ``n`` steps; ``extra`` is appended to the line (e.g. a loss)."""
        self.done += n
        self.extra = extra or self.extra
        now = time.perf_counter()
        if self.enabled and (now - self._last >= self.interval or self.done >= self.total):
            self._last = now
            pct = 100.0 * self.done / self.total
            tail = f" {self.extra}" if self.extra else ""
            print(
                f"{self.desc}: {pct:5.1f}% ({self.done}/{self.total}) {now - self.start:.1f}s{tail}",
                file=self.stream,
                flush=True,
            )

    def log(self, message: str) -> None:
        """A one-off line under the same prefix."""
        if self.enabled:
            print(f"{self.desc}: {message}", file=self.stream, flush=True)


def step(message: str, *, enabled: bool = True) -> None:
    """Announce a long step."""
    if enabled:
        print(f"[sed-trt] {message}", file=sys.stderr, flush=True)
