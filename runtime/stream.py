"""Many inputs through one predictor, pipelined: readers decode ahead, the model runs batches,
writers do the host work behind it; results in input order, memory bounded.

    reader threads ──> bounded window of decoded images (input order)
                       └─> model (this thread): predict_batch, up to ``batch_size`` images
                           └─> writer threads (overlays, files) ──> outcomes in input order

A bad input is an :class:`Outcome` with its ``error`` (one line) and the run goes on; the caller
decides the exit status from the :class:`Summary`. At most ``window`` decoded images and
``window`` pending writes exist at once, whatever the number of inputs. Interrupted (SIGINT,
SIGTERM), the runner stops taking inputs and lets the writes already started finish: outputs
are written atomically, so none is left half-written.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sed_trt.runtime.errors import SedTrtError
from sed_trt.runtime.progress import Progress

READ_ERRORS = (SedTrtError, OSError, ValueError)  # what one bad input may raise while it is read


@dataclass(frozen=True)
class Source:
    """One input: a file (``path``) or a frame already decoded (``image``), ``name`` its output
    stem relative to the output directory (``sub/photo``), ``frame``/``pts`` for video frames."""

    index: int
    name: str
    path: Any = None
    image: np.ndarray | None = field(default=None, repr=False)
    frame: int | None = None
    pts: float | None = None


@dataclass
class Outcome:
    """What became of one input: its prediction (or the one-line error) and what its writer returned."""

    source: Source
    prediction: Any = None
    image: np.ndarray | None = field(default=None, repr=False)
    error: str | None = None
    skipped: bool = False
    written: Any = None
    probs: np.ndarray | None = field(default=None, repr=False)
    exception: BaseException | None = field(default=None, repr=False)


@dataclass
class Summary:
    """Counts and rate of a run (``images_per_s`` over the segmented ones)."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (
            f"{self.done} segmented, {self.skipped} skipped, {self.failed} failed in {self.seconds:.1f} s "
            f"({self.images_per_s:.2f} images/s)"
        )


def _message(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, SedTrtError) else f"{type(exc).__name__}: {text}"


def run_stream(
    predictor: Any,
    sources: Iterable[Source],
    *,
    load: Callable[[Source], np.ndarray],
    write: Callable[[Outcome], Any] | None = None,
    skip: Callable[[Source], bool] | None = None,
    batch_size: int = 1,
    topk: int | None = None,
    keep_probs: bool = False,
    readers: int = 2,
    writers: int = 2,
    window: int = 8,
    total: int | None = None,
    progress: bool = True,
    summary: Summary | None = None,
) -> Iterator[Outcome]:
    """Segment every source with ``predictor`` (its vocabulary set), yielding outcomes in input order.

    Args:
        load: decodes a source into an RGB uint8 (H, W, 3) array (a reader thread); may raise.
        write: the host work of one outcome (a writer thread), its return value kept as
            ``Outcome.written``; a raise makes the outcome failed.
        skip: a source whose outputs exist already (``--skip-existing``) is not read.
        batch_size: images per model call (at most the engines' max batch).
        keep_probs: copy each prediction's probabilities right after its model call (a
            backend may reuse its output buffers for the next batch), as ``Outcome.probs``.
        window: decoded images read ahead, and writes pending, at most.
        summary: filled as the run goes (counts, seconds).
    """
    summary = summary if summary is not None else Summary()
    start = time.perf_counter()
    bar = Progress(total or 0, "segment", enabled=progress and bool(total), unit="img")
    items = iter(sources)
    reading: collections.deque[tuple[Source, Future | None]] = collections.deque()
    writing: collections.deque[tuple[Outcome, Future | None]] = collections.deque()
    read_pool = ThreadPoolExecutor(max(1, readers), thread_name_prefix="sed-trt-read")
    write_pool = ThreadPoolExecutor(max(1, writers), thread_name_prefix="sed-trt-write")
    exhausted = False

    def fill() -> None:
        nonlocal exhausted
        while not exhausted and len(reading) < window:
            source = next(items, None)
            if source is None:
                exhausted = True
                return
            if skip is not None and skip(source):
                reading.append((source, None))
            elif source.image is not None:
                reading.append((source, _done(source.image)))
            else:
                reading.append((source, read_pool.submit(load, source)))

    def finish(outcome: Outcome) -> Outcome:
        if outcome.skipped:
            summary.skipped += 1
        elif outcome.error is not None:
            summary.failed += 1
        else:
            summary.done += 1
        summary.seconds = time.perf_counter() - start
        bar.update(1, f"{summary.failed} failed" if summary.failed else "")
        outcome.image = outcome.probs = None  # written: nothing decoded is held past its outcome
        return outcome

    def drain(limit: int) -> Iterator[Outcome]:
        while len(writing) > limit:
            outcome, future = writing.popleft()
            if future is not None:
                try:
                    outcome.written = future.result()
                except READ_ERRORS as exc:
                    outcome.error, outcome.exception = _message(exc), exc
            yield finish(outcome)

    try:
        fill()
        while reading:
            # Up to batch_size decoded images; skipped and unreadable inputs keep their place.
            entries: list[Outcome | tuple[Source, np.ndarray]] = []
            batch: list[tuple[Source, np.ndarray]] = []
            while reading and len(batch) < batch_size:
                source, future = reading.popleft()
                if future is None:
                    entries.append(Outcome(source, skipped=True))
                    continue
                try:
                    item = (source, future.result())
                    batch.append(item)
                    entries.append(item)
                except READ_ERRORS as exc:
                    entries.append(Outcome(source, error=_message(exc), exception=exc))
                fill()
            predicted = iter(_predict(predictor, batch, topk) if batch else [])
            for entry in entries:
                outcome = entry if isinstance(entry, Outcome) else next(predicted)
                if keep_probs and outcome.prediction is not None:
                    outcome.probs = outcome.prediction.probs
                ok = outcome.error is None and not outcome.skipped
                writing.append((outcome, write_pool.submit(write, outcome) if write is not None and ok else None))
            yield from drain(window)
            fill()
        yield from drain(0)
    finally:
        for _, future in reading:  # interrupted: read nothing more; writes already started finish
            if future is not None:
                future.cancel()
        read_pool.shutdown(wait=True, cancel_futures=True)
        write_pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        summary.seconds = time.perf_counter() - start


def batch_size_for(backend: Any, wanted: int | None) -> int:
    """Images per model call: ``wanted`` (default 1), at most the engines' max batch (1 where
    the backend records no limit)."""
    limit = backend.limits.max_batch if backend.limits is not None else 1
    return min(wanted or 1, limit)


def _done(value: Any) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


def _predict(predictor: Any, batch: list[tuple[Source, np.ndarray]], topk: int | None) -> list[Outcome]:
    """One model call for the batch; if it fails, each image alone, so one bad image fails alone."""
    images = [image for _, image in batch]
    try:
        preds = predictor.predict_batch(images, topk=topk)
        return [Outcome(s, prediction=p, image=im) for (s, im), p in zip(batch, preds)]
    except SedTrtError as exc:
        if len(batch) == 1:
            return [Outcome(batch[0][0], image=batch[0][1], error=_message(exc), exception=exc)]
    out = []
    for source, image in batch:
        try:
            out.append(Outcome(source, prediction=predictor.predict(image, topk=topk), image=image))
        except SedTrtError as exc:
            out.append(Outcome(source, image=image, error=_message(exc), exception=exc))
    return out
