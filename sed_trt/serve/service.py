"""The inference behind ``sed-trt serve``: requests in, labels and kept classes out.

One :class:`SegmentationService` per model instance owns one activated backend and one
predictor. Each request carries its own images (a batch of one or more rows) and
vocabulary. A batch of requests (Triton's dynamic batcher) is split into rows, grouped by
vocabulary and CER top-k, and each group runs through :meth:`Predictor.predict_batch` in
batches of up to ``max_batch`` images: one image-encoder pass for photos of any sizes and
one decoder pass for all of them. CER decides per image, so every row gets the answer it
gets alone, whatever its batch-mates (rows whose kept sets agree still decode together). Text
features come from the bounded cache (runtime.text_cache), so a repeated vocabulary costs
nothing and a new one is encoded once. Every check that can refuse a request (its tensors,
its vocabulary) runs before the instance lock; a refused row gets a one-line ``error``
output, never a traceback, and the other rows are unaffected.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sed_trt.runtime.backends.base import Backend
from sed_trt.runtime.errors import InputError, SedTrtError
from sed_trt.runtime.image import DEFAULT_SERVE_MAX_PIXELS, check_image, check_pixels
from sed_trt.runtime.predictor import Prediction, Predictor
from sed_trt.runtime.text_cache import TextFeatureCache
from sed_trt.runtime.vocab import validate_vocabulary

log = logging.getLogger("sed_trt")

MODEL_NAME = "sed"


@dataclass(frozen=True)
class TensorDef:
    """One input or output of the ``sed`` model (shape without the batch axis; -1: any size)."""

    name: str
    dtype: Any
    shape: tuple[int, ...]
    optional: bool = False
    triton_type: str = ""


INPUTS = (
    TensorDef("image", np.uint8, (-1, -1, 3), triton_type="TYPE_UINT8"),  # RGB, any size
    TensorDef("classes", bytes, (-1,), triton_type="TYPE_STRING"),  # UTF-8 names ("wall, brick wall": synonyms)
    TensorDef("topk", np.int32, (1,), optional=True, triton_type="TYPE_INT32"),  # CER k; 0 or absent: the default
    TensorDef("want_probs", np.bool_, (1,), optional=True, triton_type="TYPE_BOOL"),
)
OUTPUTS = (
    TensorDef("labels", np.int32, (-1, -1), triton_type="TYPE_INT32"),  # (H, W) class index per pixel
    TensorDef("kept", np.bool_, (-1,), triton_type="TYPE_BOOL"),  # (T,) classes CER kept
    TensorDef("probs", np.float32, (-1, -1, -1), triton_type="TYPE_FP32"),  # (T, h, w) if asked, else (1, 1, 1)
    TensorDef("error", bytes, (1,), triton_type="TYPE_STRING"),  # "" or the one-line reason this row failed
    TensorDef("random_weights", np.bool_, (1,), triton_type="TYPE_BOOL"),  # the model is untrained: meaningless
)


@dataclass
class Row:
    """One image of a request, parsed and checked (or the reason it cannot be served)."""

    image: np.ndarray | None = None
    classes: tuple[str, ...] = ()
    topk: int | None = None
    want_probs: bool = False
    error: str = ""
    result: Prediction | None = None


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _column(request: Mapping[str, Any], name: str, rows: int) -> list[Any]:
    """Input ``name`` per row: (rows, ...) as sent, or a batch of 1 broadcast to every row."""
    value = np.asarray(request[name])
    if value.ndim == 0 or value.shape[0] not in (1, rows):
        raise InputError(f"input {name!r} has shape {value.shape}; expected ({rows}, ...) like 'image'")
    return [value[0 if value.shape[0] == 1 else r] for r in range(rows)]


def parse(request: Mapping[str, Any], *, max_pixels: int | None = DEFAULT_SERVE_MAX_PIXELS) -> list[Row]:
    """The rows of one request (its images along the batch axis), each checked; never raises."""
    try:
        images = np.asarray(request["image"])
        if images.ndim == 3:
            images = images[None]  # one image sent without the batch axis
        if images.ndim != 4 or images.shape[0] < 1:
            raise InputError(f"image must be uint8 (B, H, W, 3), got shape {tuple(images.shape)}")
        check_pixels(images.shape[1], images.shape[2], max_pixels)  # before any copy or work
        rows = images.shape[0]
        classes = _column(request, "classes", rows)
        topks = _column(request, "topk", rows) if request.get("topk") is not None else [None] * rows
        wants = _column(request, "want_probs", rows) if request.get("want_probs") is not None else [False] * rows
    except SedTrtError as exc:
        return [Row(error=one_line(exc))]
    except Exception as exc:  # a malformed request of any kind: one line, never a traceback
        return [Row(error=f"malformed request: {one_line(exc)}")]
    out = []
    for r in range(rows):
        row = Row()
        try:
            row.image = check_image(np.ascontiguousarray(images[r]), max_pixels=max_pixels)
            names = [c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in np.asarray(classes[r]).reshape(-1)]
            row.classes = tuple(validate_vocabulary(names))
            if topks[r] is not None:
                k = int(np.asarray(topks[r]).reshape(-1)[0])
                if k < 0:
                    raise InputError(f"topk must be >= 1 (or 0 for the server's default), got {k}")
                row.topk = k or None
            row.want_probs = bool(np.asarray(wants[r]).reshape(-1)[0])
        except SedTrtError as exc:
            row.error = one_line(exc)
        except UnicodeDecodeError:
            row.error = "classes must be UTF-8 strings"
        except Exception as exc:
            row.error = f"malformed request: {one_line(exc)}"
        out.append(row)
    return out


class SegmentationService:
    """The callable a model instance runs: ``service(requests) -> responses`` (one dict each)."""

    def __init__(
        self,
        backend: Backend,
        *,
        topk: int | None = None,
        cache: TextFeatureCache | None = None,
        class_chunk: int | None = None,
        max_batch: int = 1,
        max_pixels: int | None = DEFAULT_SERVE_MAX_PIXELS,
    ) -> None:
        if not backend.active:
            backend.activate()
        self.backend = backend
        limit = backend.limits.max_batch if backend.limits is not None else max_batch
        self.max_batch = max(1, min(max_batch, limit))
        self.max_pixels = max_pixels
        self.predictor = Predictor(backend, topk=topk, cache=cache or TextFeatureCache(None), class_chunk=class_chunk)
        self._lock = threading.Lock()  # one batch at a time through this instance's backend
        self.requests = self.errors = 0

    def warm_up(self) -> None:
        """One prediction on a small image, so the first request does not pay start-up costs."""
        self.predict([np.full((64, 64, 3), 127, np.uint8)], ("thing", "stuff"), None)

    def predict(self, images: Sequence[np.ndarray], classes: tuple[str, ...], topk: int | None) -> list[Prediction]:
        """Segment images that share a vocabulary and a CER k (None: the server's default)."""
        with self._lock:
            if list(classes) != self.predictor.classes:
                start = time.perf_counter()
                self.predictor.set_classes(list(classes))
                log.info("vocabulary of %d classes ready in %.0f ms", len(classes), 1e3 * (time.perf_counter() - start))
            return self.predictor.predict_batch(images, topk=topk)

    def _run_group(self, rows: list[Row]) -> None:
        for start in range(0, len(rows), self.max_batch):
            part = rows[start : start + self.max_batch]
            try:
                results = self.predict([r.image for r in part], part[0].classes, part[0].topk)  # type: ignore[misc]
                for row, result in zip(part, results):
                    row.result = result
                    if row.want_probs:
                        result.probs  # noqa: B018 (fetched while the backend holds them)
            except SedTrtError as exc:
                for row in part:
                    row.error = one_line(exc)
            except Exception as exc:  # a bug: one line to the client, the traceback in the server log
                log.exception("request failed")
                for row in part:
                    row.error = f"internal error: {type(exc).__name__}: {one_line(exc)}"

    def __call__(self, requests: Sequence[Mapping[str, Any]]) -> list[dict[str, np.ndarray]]:
        parsed = [parse(r, max_pixels=self.max_pixels) for r in requests]
        groups: dict[tuple, list[Row]] = {}
        for rows in parsed:
            for row in rows:
                if not row.error:
                    groups.setdefault((row.classes, row.topk), []).append(row)
        for rows in groups.values():
            self._run_group(rows)
        out = []
        for rows in parsed:
            self.requests += len(rows)
            self.errors += sum(1 for r in rows if r.error)
            for r in rows:
                if r.error:
                    log.warning("request refused: %s", r.error)
            out.append(response(rows, random_weights=self.predictor.backend.random_weights))
        return out


def response(rows: list[Row], *, random_weights: bool = False) -> dict[str, np.ndarray]:
    """Outputs of one request, one row per image (failed rows: labels [[-1]], the reason in ``error``).

    Rows of one request share the image size and vocabulary (they are one tensor), so their
    outputs stack; a failed row is padded to the others' shapes.
    """
    done = [r.result for r in rows if r.result is not None]
    h, w = done[0].labels.shape if done else (1, 1)
    t = len(done[0].kept) if done else 1
    asked = [r.result.probs for r in rows if r.result is not None and r.want_probs]
    probs_shape = asked[0].shape if asked else (1, 1, 1)  # any row that asked, not row 0 alone
    labels = np.full((len(rows), h, w), -1, np.int32)
    kept = np.zeros((len(rows), t), bool)
    probs = np.zeros((len(rows), *probs_shape), np.float32)
    for i, r in enumerate(rows):
        if r.result is not None:
            labels[i] = r.result.labels
            kept[i] = r.result.kept
            if r.want_probs and r.result.probs.shape == probs_shape:
                probs[i] = r.result.probs
    errors = np.array([[r.error.encode("utf-8")] for r in rows], dtype=object)
    flags = np.full((len(rows), 1), random_weights, bool)
    return {"labels": labels, "kept": kept, "probs": probs, "error": errors, "random_weights": flags}
