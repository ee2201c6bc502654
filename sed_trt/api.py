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

import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import sed_trt.sed  # noqa: F401  (registers the torch backend; torch itself loads only when used)
from sed_trt.runtime.backends import Backend
from sed_trt.runtime.cer import check_topk
from sed_trt.runtime.deployment import Deployment
from sed_trt.runtime.errors import ConfigError, ImageError, SedTrtError, StateError, VocabularyError
from sed_trt.runtime.fsutil import default_cache_dir
from sed_trt.runtime.image import DEFAULT_MAX_PIXELS, check_image, check_pixels, load_image
from sed_trt.runtime.postprocess import label_areas
from sed_trt.runtime.predictor import Prediction, Predictor
from sed_trt.runtime.text_cache import TextFeatureCache
from sed_trt.runtime.vocab import display_name, load_vocabulary

ImageLike = str | Path | np.ndarray | Any  # a file path, an (H, W, 3) uint8 array or a PIL image


@dataclass(frozen=True)
class Segmentation:
    """One image's result: ``labels`` (H, W) index into ``classes`` per pixel (the smallest
    unsigned type that holds them), ``kept`` (T,) the classes CER kept, ``probs`` (T, h, w)
    at decoder resolution when asked for, ``timings`` in ms, ``random_weights`` when the model
    that computed it has untrained weights (the result is then meaningless)."""

    labels: np.ndarray
    classes: tuple[str, ...]
    kept: np.ndarray
    probs: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    random_weights: bool = False

    def index(self, name: str) -> int:
        """The class id of ``name``: the class as given (``"road, street"``) or the display name
        :meth:`areas` uses for it (``"road"``) where that names one class."""
        if name in self.classes:
            return self.classes.index(name)
        matches = [i for i, c in enumerate(self.classes) if display_name(c) == name]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise VocabularyError(f"{name!r} names {len(matches)} classes here; use the class as given")
        raise VocabularyError(f"{name!r} is not in this result's vocabulary of {len(self.classes)} classes")

    def mask(self, name: str) -> np.ndarray:
        """(H, W) bool: the pixels of class ``name`` (as given, or as :meth:`areas` names it)."""
        return self.labels == self.index(name)

    def areas(self) -> dict[str, float]:
        """The share of the image each present class covers, largest first (display names)."""
        ids, counts = label_areas(self.labels)
        order = np.argsort(-counts, kind="stable")
        return {display_name(self.classes[ids[i]]): float(counts[i]) / self.labels.size for i in order}

    def overlay(self, image: ImageLike, *, alpha: float = 0.5) -> np.ndarray:
        """The image with each class in its colour and a legend beside it: RGB uint8."""
        from sed_trt.runtime.visualize import overlay

        array = read_image(image)
        if array.shape[:2] != self.labels.shape:
            raise ImageError(
                f"image | got {array.shape[1]}x{array.shape[0]} | expected the segmented image's {self.labels.shape[1]}x{self.labels.shape[0]}"
            )
        return overlay(array, self.labels, list(self.classes), alpha=alpha)


def read_image(image: ImageLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A path, a PIL image or an (H, W, 3) uint8 array -> the RGB array the model reads."""
    if isinstance(image, (str, Path)):
        return load_image(image, max_pixels=max_pixels)
    if isinstance(image, np.ndarray):
        return check_image(image, max_pixels=max_pixels)
    if hasattr(image, "mode") and hasattr(image, "size"):  # a PIL image
        if image.mode != "RGB":
            raise ImageError(f"image has mode {image.mode!r}; expected RGB (convert it with image.convert('RGB'))")
        w, h = image.size
        check_pixels(h, w, max_pixels)
        try:
            return np.asarray(image, dtype=np.uint8).copy()  # a lazy image decodes here
        except (OSError, ValueError, SyntaxError) as exc:  # truncated or closed: Pillow's own types
            raise ImageError(
                f"cannot read the PIL image: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
            ) from None
    raise ImageError(
        f"image | got {type(image).__name__} | expected a file path, a PIL image or an (H, W, 3) uint8 array"
    )


class Segmenter:
    """A loaded model: set a vocabulary once, then segment images. A context manager.

    Safe to share between threads: calls run one at a time (one model, one vocabulary at a
    time), and every result carries the vocabulary it was computed with, so a thread's answer
    never depends on what another thread asked.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        topk: int | None = None,
        cache: TextFeatureCache | None = None,
        class_chunk: int | None = None,
        deployment: Deployment | None = None,
    ) -> None:
        """
        Args:
            backend: an opened (not necessarily active) backend; see :meth:`from_deployment`,
                :meth:`from_engine_dir` and :meth:`from_checkpoint`.
            topk: CER's k (None: no rejection; 8 is the paper's fast setting).
            cache: text features by vocabulary (default: the on-disk cache of the CLI).
            class_chunk: classes per decoder-graph run (default: the engines' largest).
            deployment: the deployment ``backend`` was opened from (kept for reference).
        """
        self.backend = backend
        self.deployment = deployment
        self._topk = _check_topk(topk)
        self._cache = cache if cache is not None else TextFeatureCache(default_cache_dir())
        self._class_chunk = class_chunk
        self._predictor: Predictor | None = None
        self._lock = threading.RLock()

    @classmethod
    def from_deployment(cls, deployment: Deployment | str | dict[str, Any]) -> Segmenter:
        """Open a :class:`~sed_trt.runtime.deployment.Deployment` (or its JSON / dict form)."""
        if isinstance(deployment, str):
            deployment = Deployment.from_json(deployment)
        elif isinstance(deployment, dict):
            deployment = Deployment.from_dict(deployment)
        elif not isinstance(deployment, Deployment):
            raise ConfigError(f"deployment | got {type(deployment).__name__} | expected a Deployment, its JSON or dict")
        return cls(
            deployment.open_backend(),
            topk=deployment.topk,
            cache=deployment.text_cache(),
            class_chunk=deployment.class_chunk,
            deployment=deployment,
        )

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
        **deployment: Any,
    ) -> Segmenter:
        """Exported graphs (``sed-trt export``) in ONNX Runtime, OpenVINO or TensorRT (``backend``,
        a name or a label such as ``openvino-bf16``); ``options`` are the backend's own; other
        keywords are :class:`~sed_trt.runtime.deployment.Deployment` fields (``class_chunk``...)."""
        dep = Deployment(
            backend=backend,
            engine_dir=str(engine_dir),
            precision=precision,
            device=device,
            threads=threads,
            topk=_check_topk(topk),
            options=options or {},
            **deployment,
        )
        return cls._open(dep, cache)

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
        **deployment: Any,
    ) -> Segmenter:
        """The PyTorch model of ``backbone`` with an official SED checkpoint (None: random weights).
        A missing checkpoint is refused here, not at the first image."""
        dep = Deployment(
            backend="torch",
            backbone=str(backbone),
            weights=None if weights is None else str(weights),
            device=device,
            precision=precision,
            threads=threads,
            topk=_check_topk(topk),
            options=options or {},
            **deployment,
        )
        return cls._open(dep, cache)

    @classmethod
    def _open(cls, deployment: Deployment, cache: TextFeatureCache | None) -> Segmenter:
        seg = cls.from_deployment(deployment)
        if cache is not None:
            seg._cache = cache
        return seg

    @property
    def predictor(self) -> Predictor:
        """The predictor over the (activated on first use) backend."""
        with self._lock:
            if self._predictor is None:
                if not self.backend.active:
                    self.backend.activate()
                self._predictor = Predictor(
                    self.backend, topk=self._topk, cache=self._cache, class_chunk=self._class_chunk
                )
            return self._predictor

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.predictor.classes)

    def set_vocabulary(self, classes: str | Sequence[str]) -> None:
        """The class names to segment into: a list, or what ``--classes`` takes (``ade150``, a
        .txt/.json file, ``"a, b; c"``). ``"wall, brick wall"`` is one class with a synonym."""
        names = load_vocabulary(classes) if isinstance(classes, str) else list(classes)
        if not names:
            raise VocabularyError("the vocabulary is empty: give at least one class name")
        with self._lock:
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
        topk = _check_topk(topk)
        array = read_image(image, max_pixels=self.max_pixels)  # decoded outside the lock
        with self._lock:  # the vocabulary and the prediction of one call, never another thread's
            if classes is not None:
                self.set_vocabulary(classes)
            if not self.predictor.classes:
                raise StateError("no vocabulary: pass classes= or call set_vocabulary() first")
            pred: Prediction = self.predictor.predict(array, topk=topk)
            return self._result(pred, pred.probs if probs else None)

    def _result(self, pred: Prediction, probs: np.ndarray | None) -> Segmentation:
        """The result of one prediction over the current vocabulary."""
        return Segmentation(
            labels=pred.labels,
            classes=self.classes,
            kept=pred.kept,
            probs=probs,
            timings=pred.timings,
            random_weights=self.backend.random_weights,
        )

    @property
    def max_pixels(self) -> int:
        """The largest image (width x height) accepted, files and arrays alike."""
        return self.deployment.max_pixels if self.deployment is not None else DEFAULT_MAX_PIXELS

    def segment_many(
        self,
        inputs: Iterable[ImageLike],
        classes: str | Sequence[str] | None = None,
        *,
        topk: int | None = None,
        batch_size: int | None = None,
        probs: bool = False,
        errors: str = "raise",
    ) -> Iterator[Segmentation | SedTrtError]:
        """Segment many images (paths, arrays, PIL images), yielding results in input order.

        Pipelined (:mod:`sed_trt.runtime.stream`): reader threads decode ahead while the model
        runs batches of up to ``batch_size`` images (default: the deployment's, at most the
        engines' max batch); memory stays bounded whatever the number of inputs. Every result
        equals :meth:`segment` of that image alone. A bad input raises its typed error
        (``errors="raise"``), or is yielded in its place as the error (``errors="yield"``), the
        run going on. The Segmenter is held for the whole iteration (other threads wait).
        """
        from sed_trt.runtime.stream import Source, batch_size_for, run_stream

        if errors not in ("raise", "yield"):
            raise ConfigError(f"errors={errors!r}: 'raise' or 'yield'")
        topk = _check_topk(topk)
        with self._lock:
            if classes is not None:
                self.set_vocabulary(classes)
            if not self.predictor.classes:
                raise StateError("no vocabulary: pass classes= or call set_vocabulary() first")
            batch = batch_size_for(
                self.backend, batch_size or (self.deployment.batch_size if self.deployment else None)
            )
            sources = (Source(index=i, name=str(i), path=x) for i, x in enumerate(inputs))
            for outcome in run_stream(
                self.predictor,
                sources,
                load=lambda s: read_image(s.path, max_pixels=self.max_pixels),
                batch_size=batch,
                topk=topk,
                keep_probs=probs,
                progress=False,
            ):
                if outcome.error is not None:
                    exc = outcome.exception  # typed as raised, the input's position named
                    kind = type(exc) if isinstance(exc, SedTrtError) else ImageError
                    exc = kind(f"input {outcome.source.index}: {outcome.error}")
                    if errors == "raise":
                        raise exc
                    yield exc
                    continue
                yield self._result(outcome.prediction, outcome.probs if probs else None)

    def segment_video(
        self, path: str | Path, classes: str | Sequence[str] | None = None, *, topk: int | None = None, stride: int = 1
    ) -> Iterator[tuple[int, float | None, Segmentation]]:
        """(frame index, timestamp in s, Segmentation) for every ``stride``-th frame of a video
        (PyAV, the ``[video]`` extra), pipelined as :meth:`segment_many`."""
        from sed_trt.runtime.video import read_frames

        meta: list[tuple[int, float | None]] = []  # filled as the frames are read (ahead of the results)

        def images() -> Iterator[np.ndarray]:
            for index, pts, rgb in read_frames(path, stride=stride):
                meta.append((index, pts))
                yield rgb

        for i, result in enumerate(self.segment_many(images(), classes, topk=topk)):
            assert isinstance(result, Segmentation)
            yield (*meta[i], result)

    def close(self) -> None:
        """Release the backend (device memory, sessions)."""
        with self._lock:
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


def _check_topk(topk: Any) -> int | None:
    """CER's k from a caller: None or a whole number (a string or a float is refused, not
    coerced), in the range :func:`sed_trt.runtime.cer.check_topk` allows."""
    if topk is None:
        return None
    if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)):
        raise ConfigError(f"topk | got {topk!r} | expected None or a whole number >= 1")
    check_topk(int(topk))
    return int(topk)
