"""One deployment: what to open and how to predict, described once and opened in one place.

Every front door builds a :class:`Deployment` and calls :meth:`Deployment.open`: the command
line (from its flags), the Python API (from keywords), the Triton model (its ``settings.json``
is this object as JSON), bench, compare and the bulk runners. A predict option that must reach
the predictor is a field here and a line in :meth:`Deployment.open`; nothing else repeats it.
In the manner of mmdeploy's deploy config: plain data, JSON-able, frozen, validated on creation.

Layer: runtime (torch-free); the torch backend is opened by name like any other.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sed_trt.runtime.errors import OFFICIAL_WEIGHTS_HINT, CheckpointError, ConfigError
from sed_trt.runtime.image import DEFAULT_MAX_PIXELS
from sed_trt.runtime.io_spec import ENCODER_STRIDE, MAX_NETWORK_SIZE, MIN_NETWORK_SIZE

log = logging.getLogger("sed_trt")

CACHE_DEFAULT = "default"  # sed-trt's cache directory ($SED_TRT_CACHE, else ~/.cache/sed-trt)
CACHE_OFF = "off"  # text features in memory only


@dataclass(frozen=True)
class Deployment:
    """What to open (backend, engines or checkpoint, device, precision, backend options) and how to
    predict (CER k, class chunk, pooling, batch size, cache policy, pixel limit).

    ``backend`` may be left out: an engine directory opens in ONNX Runtime, a checkpoint (or a
    backbone alone: random weights) in the PyTorch reference. ``pooling`` left out is the engine
    directory's own (1, the official evaluation, for a checkpoint). ``cache`` is ``"default"``,
    ``"off"`` or a directory.
    """

    # What to open
    backend: str | None = None
    engine_dir: str | None = None
    backbone: str | None = None
    weights: str | None = None
    image_size: int | None = None
    device: str = "cpu"
    precision: str = "fp32"
    threads: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    # How to predict
    topk: int | None = None
    class_chunk: int | None = None
    pooling: int | None = None
    batch_size: int | None = None
    cache: str = CACHE_DEFAULT
    cache_memory_mb: int = 512
    cache_disk_mb: int = 4096
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        for name in ("engine_dir", "backbone", "weights", "cache"):
            value = getattr(self, name)
            if isinstance(value, Path):
                object.__setattr__(self, name, str(value))
            elif value is not None and not isinstance(value, str):
                raise ConfigError(f"deployment {name}: expected a path or name, got {type(value).__name__}")
        whole = ("image_size", "threads", "topk", "class_chunk", "pooling", "batch_size", "max_pixels")
        for name in (*whole, "cache_memory_mb", "cache_disk_mb"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"deployment {name}: expected a whole number >= 1, got {value!r}")
        for name in ("device", "precision"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"deployment {name}: expected a string, got {getattr(self, name)!r}")
        if self.backend is not None and not isinstance(self.backend, str):
            raise ConfigError(f"deployment backend: expected a backend label, got {self.backend!r}")
        if not isinstance(self.options, Mapping) or not all(isinstance(k, str) for k in self.options):
            raise ConfigError("deployment options: expected a mapping of option names to values")
        object.__setattr__(self, "options", dict(self.options))
        size = self.image_size
        if size is not None and (size % ENCODER_STRIDE or not MIN_NETWORK_SIZE <= size <= MAX_NETWORK_SIZE):
            raise ConfigError(
                f"--image-size must be a multiple of {ENCODER_STRIDE} between {MIN_NETWORK_SIZE} and {MAX_NETWORK_SIZE}, got {size}"
            )
        if self.engine_dir is None and self.backbone is None and self.backend in (None, "torch"):
            raise ConfigError("nothing to open: give an engine directory (--engine-dir) or a backbone (--backbone)")

    def __hash__(self) -> int:  # options is a dict: hash the JSON form
        return hash(self.to_json())

    @property
    def backend_label(self) -> str:
        """The backend to open: the one given, else what the inputs imply."""
        if self.backend is not None:
            return self.backend
        return "onnxruntime" if self.engine_dir is not None else "torch"

    def replace(self, **changes: Any) -> Deployment:
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    # JSON: the settings file of the Triton model, a record in benchmark results.

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Deployment:
        """From :meth:`to_dict`'s form; unknown keys are refused, naming them."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a deployment is a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown deployment keys {unknown}; known: {sorted(known)}")
        try:
            return cls(**dict(data))
        except TypeError as exc:
            raise ConfigError(f"deployment: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> Deployment:
        from sed_trt.runtime.jsonutil import loads_bounded

        return cls.from_dict(loads_bounded(text, what="deployment"))

    # Opening

    def request(self, model: Any = None) -> Any:
        """The :class:`~sed_trt.runtime.backends.registry.BackendRequest` this deployment makes
        (``model``: a model already built, for a checkpoint backend; the benchmarks reuse one)."""
        from sed_trt.runtime.backends.registry import BackendRequest

        return BackendRequest(
            model=model,
            engine_dir=self.engine_dir,
            backbone=self.backbone,
            weights=self.weights,
            device=self.device,
            pooling=self.pooling,
            image_size=self.image_size,
            threads=self.threads,
            precision=self.precision,
            options=self.options,
        )

    def check_files(self) -> None:
        """Refuse a missing checkpoint before any heavy import (engine directories: the manifest says)."""
        if self.weights is not None and not Path(self.weights).is_file():
            raise CheckpointError(f"SED checkpoint {self.weights!r} does not exist; {OFFICIAL_WEIGHTS_HINT}")

    def open_backend(self, *, model: Any = None) -> Any:
        """Create (not activate) the backend, refusing one that cannot serve this deployment."""
        from sed_trt.runtime.backends.registry import open_backend

        self.check_files()
        cores = len(os.sched_getaffinity(0))
        if self.threads is not None and self.threads > cores:
            log.warning(
                "--threads %d on %d usable cores: oversubscribed threads run slower, not faster", self.threads, cores
            )
        return open_backend(self.backend_label, self.request(model))

    def text_cache(self) -> Any:
        """The text-feature cache this deployment's policy names."""
        from sed_trt.runtime.fsutil import default_cache_dir
        from sed_trt.runtime.text_cache import TextFeatureCache

        directory = (
            None if self.cache == CACHE_OFF else default_cache_dir() if self.cache == CACHE_DEFAULT else self.cache
        )
        return TextFeatureCache(directory, memory_bytes=self.cache_memory_mb << 20, disk_bytes=self.cache_disk_mb << 20)

    def predictor(self, backend: Any, *, cache: Any = None, progress: bool = False) -> Any:
        """A :class:`~sed_trt.runtime.predictor.Predictor` over ``backend`` (activated here if it is not)."""
        from sed_trt.runtime.predictor import Predictor

        if not backend.active:
            backend.activate()
        return Predictor(
            backend,
            topk=self.topk,
            cache=cache if cache is not None else self.text_cache(),
            progress=progress,
            class_chunk=self.class_chunk,
        )

    def open(self, *, progress: bool = False) -> Any:
        """Open the backend, activate it and return the predictor over it (close with ``predictor.backend``)."""
        return self.predictor(self.open_backend(), progress=progress)
