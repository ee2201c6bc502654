"""The inference callable behind ``sed-trt serve``: requests in, labels and kept classes out.

One :class:`SegmentationService` per model instance owns one activated backend and one
predictor. Each request carries its own image and vocabulary; a dynamic batch is run
request by request, grouped by vocabulary so text features switch as rarely as possible.
Text features come from an in-memory LRU (bounded in bytes) in front of the disk cache, so
a repeated vocabulary costs nothing and a new one is encoded once (its cost is logged).
A bad request (empty or oversized vocabulary, a malformed image or top-k) gets a one-line
``error`` output and placeholder results (PyTriton cannot send empty arrays: labels
[[-1]]); the other requests of its batch are unaffected.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.backends.base import Backend
from runtime.errors import InputError, SedTrtError
from runtime.predictor import Predictor
from runtime.text_cache import TextFeatureCache

log = logging.getLogger("sed_trt")

MODEL_NAME = "sed"


@dataclass(frozen=True)
class TensorDef:
    """One Triton input or output of the ``sed`` model (shape without the batch axis)."""

    name: str
    dtype: Any
    shape: tuple[int, ...]
    optional: bool = False


INPUTS = (
    TensorDef("image", np.uint8, (-1, -1, 3)),  # RGB, any size
    TensorDef("classes", bytes, (-1,)),  # UTF-8 class names ("wall, brick wall" for synonyms, as in the CLI)
    TensorDef("topk", np.int32, (1,), optional=True),  # CER top-k; 0 or absent: the server's default
    TensorDef("want_probs", np.bool_, (1,), optional=True),
)
OUTPUTS = (
    TensorDef("labels", np.int32, (-1, -1)),  # (H, W) class index per pixel
    TensorDef("kept", np.bool_, (-1,)),  # (T,) classes CER kept
    TensorDef("probs", np.float32, (-1, -1, -1)),  # (T, h, w) when want_probs, else a (1, 1, 1) placeholder
    TensorDef("error", bytes, (1,)),  # "" or the one-line reason this request failed
)


class VocabularyLRU:
    """Text features by vocabulary, least recently used evicted beyond ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, ...], np.ndarray] = OrderedDict()
        self.hits = self.misses = 0

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self._items.values())

    def get(self, key: tuple[str, ...]) -> np.ndarray | None:
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        self.misses += 1
        return None

    def put(self, key: tuple[str, ...], value: np.ndarray) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > 1 and self.nbytes > self.max_bytes:
            self._items.popitem(last=False)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class SegmentationService:
    """The callable PyTriton runs: ``service(requests) -> responses`` (one dict per request)."""

    def __init__(
        self,
        backend: Backend,
        *,
        topk: int | None = None,
        cache: TextFeatureCache | None = None,
        vocab_cache_bytes: int = 512 * 2**20,
        class_chunk: int | None = None,
    ) -> None:
        if not backend.active:
            backend.activate()
        self.backend = backend
        self.topk = topk
        self.predictor = Predictor(backend, topk=topk, cache=cache, class_chunk=class_chunk)
        self.vocabularies = VocabularyLRU(vocab_cache_bytes)
        self._current: tuple[str, ...] | None = None
        self._lock = threading.Lock()  # one request at a time through this instance's backend
        self.requests = self.errors = 0

    def warm_up(self) -> None:
        """One prediction on a small image, so the first request does not pay start-up costs."""
        self.predict(np.full((64, 64, 3), 127, np.uint8), ["thing", "stuff"], None)

    def _use_vocabulary(self, classes: tuple[str, ...]) -> None:
        if classes == self._current:
            return
        features = self.vocabularies.get(classes)
        if features is None:
            start = time.perf_counter()
            self.predictor.set_classes(list(classes))
            features = self.predictor.text_features
            assert features is not None
            self.vocabularies.put(classes, features)
            log.info(
                "new vocabulary of %d classes: text features in %.0f ms",
                len(classes),
                1e3 * (time.perf_counter() - start),
            )
        else:
            self.predictor.set_text_features(list(classes), features)
        self._current = classes

    def predict(self, image: np.ndarray, classes: list[str], topk: int | None) -> Any:
        """Segment one image (H, W, 3) uint8 into ``classes``; ``topk`` None: the server's default."""
        with self._lock:
            self._use_vocabulary(tuple(classes))
            self.predictor.topk = topk if topk is not None else self.topk
            return self.predictor.predict(image)

    @staticmethod
    def parse(request: Any) -> tuple[np.ndarray, list[str], int | None, bool]:
        """(image, classes, topk, want_probs) of one request, or an :class:`InputError`."""
        image = np.asarray(request["image"])
        if image.ndim == 4 and image.shape[0] == 1:
            image = image[0]
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 1:
            raise InputError(f"image must be uint8 (H, W, 3), got {image.dtype} {tuple(image.shape)}")
        raw = np.asarray(request["classes"]).reshape(-1)
        try:
            classes = [c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in raw]
        except UnicodeDecodeError:
            raise InputError("classes must be UTF-8 strings") from None
        if not classes:
            raise InputError("the vocabulary is empty: send at least one class name")
        topk = None
        if "topk" in request and request["topk"] is not None:
            value = int(np.asarray(request["topk"]).reshape(-1)[0])
            if value < 0:
                raise InputError(f"topk must be >= 1 (or 0 for the server's default), got {value}")
            topk = value or None
        want_probs = bool(np.asarray(request["want_probs"]).reshape(-1)[0]) if "want_probs" in request else False
        return image, classes, topk, want_probs

    def handle(self, request: Any) -> dict[str, np.ndarray]:
        """One request -> its outputs (with the batch axis of 1); failures become ``error``."""
        self.requests += 1
        try:
            image, classes, topk, want_probs = self.parse(request)
            pred = self.predict(image, classes, topk)
        except SedTrtError as exc:
            self.errors += 1
            log.warning("request refused: %s", _one_line(exc))
            return _response(np.full((1, 1), -1, np.int32), np.zeros(1, bool), None, _one_line(exc))
        return _response(pred.labels.astype(np.int32), pred.kept, pred.probs if want_probs else None, "")

    def __call__(self, requests: list[Any]) -> list[dict[str, np.ndarray]]:
        keys = [_vocabulary_key(r) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: keys[i])  # same vocabularies back to back
        out: list[dict[str, np.ndarray]] = [{} for _ in requests]
        for i in order:
            out[i] = self.handle(requests[i])
        return out


def _vocabulary_key(request: Any) -> bytes:
    try:
        return b"\x00".join(np.asarray(request["classes"]).reshape(-1).tolist())
    except Exception:  # malformed: sorted anywhere, refused by handle()
        return b""


def _response(labels: np.ndarray, kept: np.ndarray, probs: np.ndarray | None, error: str) -> dict[str, np.ndarray]:
    probs = np.zeros((1, 1, 1), np.float32) if probs is None else probs.astype(np.float32)
    return {
        "labels": labels[None],
        "kept": kept[None],
        "probs": probs[None],
        "error": np.array([[error.encode("utf-8")]], dtype=object),
    }
