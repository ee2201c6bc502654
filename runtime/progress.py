"""Progress for long work (text encoding, export, evaluation, training, benchmarks, predictions).

On a terminal a tqdm bar redrawn in place (rate and time left), shown only once the work has
lasted ``delay`` seconds, so quick work prints nothing; in a log (stderr not a terminal) a plain
line at most every ``interval`` seconds and one at the end, so a log stays short.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

LOG_INTERVAL_S = 10.0  # seconds between plain progress lines in a log
LOG_MIN_S = 2.0  # work shorter than this prints no line in a log
BAR_DELAY_S = 0.5  # a bar appears only for work that lasts longer


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or exotic stream
        return False


class Progress:
    """``update(n)`` as steps finish; a bar on a terminal, sparse ``desc: 42% (21/50) 3.1s`` lines elsewhere."""

    def __init__(
        self,
        total: int,
        desc: str,
        *,
        enabled: bool = True,
        interval: float = LOG_INTERVAL_S,
        stream: TextIO | None = None,
        unit: str = "it",
    ) -> None:
        self.total = max(int(total), 1)
        self.desc = desc
        self.enabled = enabled
        self.interval = interval
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = time.perf_counter()
        self._last = self.start
        self.extra = ""
        self._bar: Any = None
        self._printed = False
        if enabled and _is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total, desc=desc, file=self.stream, delay=BAR_DELAY_S, unit=unit, dynamic_ncols=True
            )

    def update(self, n: int = 1, extra: str = "") -> None:
        """Advance by ``n`` steps; ``extra`` is shown beside the count (e.g. a loss)."""
        self.done += n
        self.extra = extra or self.extra
        if not self.enabled:
            return
        if self._bar is not None:
            if extra:
                self._bar.set_postfix_str(extra, refresh=False)
            self._bar.update(n)
            if self.done >= self.total:
                self.close()
            return
        now = time.perf_counter()
        due = now - self._last >= self.interval
        finished = self.done >= self.total and (self._printed or now - self.start >= LOG_MIN_S)
        if due or finished:
            self._last = now
            self._printed = True
            pct = 100.0 * self.done / self.total
            tail = f" {self.extra}" if self.extra else ""
            print(
                f"{self.desc}: {pct:5.1f}% ({self.done}/{self.total}) {now - self.start:.1f}s{tail}",
                file=self.stream,
                flush=True,
            )

    def log(self, message: str) -> None:
        """A one-off line under the same prefix (above the bar on a terminal)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(f"{self.desc}: {message}", file=self.stream)
        else:
            print(f"{self.desc}: {message}", file=self.stream, flush=True)

    def close(self) -> None:
        """Finish the bar (work that stops early)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def step(message: str, *, enabled: bool = True) -> None:
    """Announce a long step."""
    if enabled:
        print(f"[sed-trt] {message}", file=sys.stderr, flush=True)
