"""The Python API: segment images into any list of class names, with any backend.

    import sed_trt

    # one call (opens, segments, closes): ONNX Runtime on an engine directory
    result = sed_trt.segment("photo.jpg", ["sky", "tree", "road, street"], engine_dir="engines/convnext_b")

    # or keep the model loaded for many images
    with sed_trt.Segmenter.from_engine_dir("engines/convnext_b", backend="onnxruntime", topk=8) as seg:
        seg.set_vocabulary("ade150")
        for path in paths:
            result = seg.segment(path)
            print(result.areas())  # {"sky": 0.41, "tree": 0.22, ...}

    # the PyTorch model from a checkpoint (the reference; bf16/fp16 on a GPU)
    seg = sed_trt.Segmenter.from_checkpoint("sed_b.pth", backbone="convnext_b", device="cuda", precision="bf16")

Every failure is a :class:`SedTrtError` subclass with a one-line message (ConfigError,
ImageError, VocabularyError, EngineError, ...). Layer: the top one, beside the command line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import sed  # noqa: F401  (registers the torch backend; torch itself loads only when used)
from runtime.backends import Backend, BackendRequest, open_backend
from runtime.errors import ConfigError, ImageError, StateError, VocabularyError
from runtime.image import DEFAULT_MAX_PIXELS, check_image, load_image
from runtime.postprocess import label_areas
from runtime.predictor import Prediction, Predictor
from runtime.text_cache import TextFeatureCache, default_cache_dir
from runtime.vocab import display_name, load_vocabulary

ImageLike = str | Path | np.ndarray | Any  # a file path, an (H, W, 3) uint8 array or a PIL image


@dataclass(frozen=True)
class Segmentation:
    """One image's result: ``labels`` (H, W) index into ``classes`` per pixel (the smallest
    unsigned type that holds them), ``kept`` (T,) the classes CER kept, ``probs`` (T, h, w)
    at decoder resolution when asked for, ``timings`` in ms."""

    labels: np.ndarray
    classes: tuple[str, ...]
    kept: np.ndarray
    probs: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def mask(self, name: str) -> np.ndarray:
        """(H, W) bool: the pixels of class ``name`` (as given, synonyms included)."""
        if name not in self.classes:
            raise VocabularyError(f"{name!r} is not in this result's vocabulary of {len(self.classes)} classes")
        return self.labels == self.classes.index(name)

    def areas(self) -> dict[str, float]:
        """The share of the image each present class covers, largest first (display names)."""
        ids, counts = label_areas(self.labels)
        order = np.argsort(-counts, kind="stable")
        return {display_name(self.classes[ids[i]]): float(counts[i]) / self.labels.size for i in order}

    def overlay(self, image: ImageLike, *, alpha: float = 0.5) -> np.ndarray:
        """The image with each class in its colour and a legend beside it: RGB uint8."""
        from runtime.visualize import overlay

        return overlay(read_image(image), self.labels, list(self.classes), alpha=alpha)


def read_image(image: ImageLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A path, a PIL image or an (H, W, 3) uint8 array -> the RGB array the model reads."""
    if isinstance(image, (str, Path)):
        return load_image(image, max_pixels=max_pixels)
    if isinstance(image, np.ndarray):
        return check_image(image)
    if hasattr(image, "mode") and hasattr(image, "size"):  # a PIL image
        if image.mode != "RGB":
            raise ImageError(f"image has mode {image.mode!r}; expected RGB (convert it with image.convert('RGB'))")
        return np.asarray(image, dtype=np.uint8).copy()
    raise ImageError(
        f"image | got {type(image).__name__} | expected a file path, a PIL image or an (H, W, 3) uint8 array"
    )


class Segmenter:
    """A loaded model: set a vocabulary once, then segment images. A context manager."""

    def __init__(
        self,
        backend: Backend,
        *,
        topk: int | None = None,
        cache: TextFeatureCache | None = None,
        class_chunk: int | None = None,
    ) -> None:
        """
        Args:
            backend: an opened (not necessarily active) backend; see :meth:`from_engine_dir`
                and :meth:`from_checkpoint`.
            topk: CER's k (None: no rejection; 8 is the paper's fast setting).
            cache: text features by vocabulary (default: the on-disk cache of the CLI).
            class_chunk: classes per decoder-graph run (default: the engines' largest).
        """
        self.backend = backend
        self._topk = topk
        self._cache = cache if cache is not None else TextFeatureCache(default_cache_dir())
        self._class_chunk = class_chunk
        self._predictor: Predictor | None = None

    @classmethod
    def from_engine_dir(
        cls,
        engine_dir: str | Path,
        *,
        backend: str = "onnxruntime",
        precision: str = "fp32",
        device: str = "cpu",
        threads: int | None = None,
        topk: int | None = None,
        options: dict[str, Any] | None = None,
        cache: TextFeatureCache | None = None,
    ) -> Segmenter:
        """Exported graphs (``sed-trt export``) in ONNX Runtime, OpenVINO or TensorRT (``backend``,
        a name or a label such as ``openvino-bf16``); ``options`` are the backend's own."""
        request = BackendRequest(
            engine_dir=engine_dir, device=device, threads=threads, precision=precision, options=options or {}
        )
        return cls(open_backend(backend, request), topk=topk, cache=cache)

    @classmethod
    def from_checkpoint(
        cls,
        weights: str | Path | None,
        *,
        backbone: str = "convnext_b",
        device: str = "cpu",
        precision: str = "fp32",
        threads: int | None = None,
        topk: int | None = None,
        options: dict[str, Any] | None = None,
        cache: TextFeatureCache | None = None,
    ) -> Segmenter:
        """The PyTorch model of ``backbone`` with an official SED checkpoint (None: random weights)."""
        request = BackendRequest(
            backbone=backbone,
            weights=weights,
            device=device,
            threads=threads,
            precision=precision,
            options=options or {},
        )
        return cls(open_backend("torch", request), topk=topk, cache=cache)

    @property
    def predictor(self) -> Predictor:
        """The predictor over the (activated on first use) backend."""
        if self._predictor is None:
            if not self.backend.active:
                self.backend.activate()
            self._predictor = Predictor(self.backend, topk=self._topk, cache=self._cache, class_chunk=self._class_chunk)
        return self._predictor

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.predictor.classes)

    def set_vocabulary(self, classes: str | Sequence[str]) -> None:
        """The class names to segment into: a list, or what ``--classes`` takes (``ade150``, a
        .txt/.json file, ``"a, b; c"``). ``"wall, brick wall"`` is one class with a synonym."""
        names = load_vocabulary(classes) if isinstance(classes, str) else list(classes)
        if names != self.predictor.classes:
            self.predictor.set_classes(names)

    def segment(
        self,
        image: ImageLike,
        classes: str | Sequence[str] | None = None,
        *,
        topk: int | None = None,
        probs: bool = False,
    ) -> Segmentation:
        """Segment one image into ``classes`` (default: the vocabulary set before).

        ``topk`` overrides CER's k for this image; ``probs`` also returns the (T, h, w)
        probabilities (a copy from the backend that labels alone do not need).
        """
        if classes is not None:
            self.set_vocabulary(classes)
        if not self.predictor.classes:
            raise StateError("no vocabulary: pass classes= or call set_vocabulary() first")
        pred: Prediction = self.predictor.predict(read_image(image), topk=topk)
        return Segmentation(
            labels=pred.labels,
            classes=self.classes,
            kept=pred.kept,
            probs=pred.probs if probs else None,
            timings=pred.timings,
        )

    def close(self) -> None:
        """Release the backend (device memory, sessions)."""
        if self.backend.active:
            self.backend.deactivate()
        self._predictor = None

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def segment(
    image: ImageLike,
    classes: str | Sequence[str],
    *,
    engine_dir: str | Path | None = None,
    weights: str | Path | None = None,
    backbone: str = "convnext_b",
    backend: str | None = None,
    topk: int | None = None,
    device: str = "cpu",
    precision: str = "fp32",
) -> Segmentation:
    """Open a model, segment one image, close it: exported graphs when ``engine_dir`` is given
    (``backend`` default onnxruntime), else the PyTorch model of ``backbone`` with ``weights``."""
    if engine_dir is not None:
        seg = Segmenter.from_engine_dir(
            engine_dir, backend=backend or "onnxruntime", precision=precision, device=device, topk=topk
        )
    else:
        if backend not in (None, "torch"):
            raise ConfigError(f"backend {backend!r} runs exported graphs: pass engine_dir=")
        seg = Segmenter.from_checkpoint(weights, backbone=backbone, device=device, precision=precision, topk=topk)
    with seg:
        return seg.segment(image, classes)
