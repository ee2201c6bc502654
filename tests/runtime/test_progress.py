"""Progress: a bar redrawn in place on a terminal, sparse plain lines in a log."""

from __future__ import annotations

import io
import time

from sed_trt.runtime.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_sparse_lines_and_the_last():
    log = io.StringIO()
    bar = Progress(1000, "text encoder", stream=log, interval=0.5)
    for i in range(1000):
        if i == 500:
            time.sleep(0.6)  # one interval passes: one line then
        bar.update(1)
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and lines[-1].startswith("text encoder: 100.0% (1000/1000)"), lines
    short = io.StringIO()
    quick = Progress(10, "labels", stream=short)
    quick.update(10)
    assert short.getvalue() == ""  # work shorter than LOG_MIN_S prints nothing in a log


def test_a_terminal_gets_one_bar_redrawn_in_place(monkeypatch):
    monkeypatch.setattr("sed_trt.runtime.progress.BAR_DELAY_S", 0.0)
    term = Terminal()
    bar = Progress(50, "text encoder", stream=term)
    for _ in range(50):
        bar.update(1, "batch")
    out = term.getvalue()
    assert "\r" in out and out.count("\n") <= 1 and "50/50" in out  # carriage returns, not 50 lines
    quiet = Terminal()
    off = Progress(50, "x", stream=quiet, enabled=False)
    off.update(50)
    assert quiet.getvalue() == ""
