"""Backend interface (runner lifecycle) and the array operations the predictor needs between graphs."""

from __future__ import annotations

import abc
import logging
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sed_trt.runtime.errors import ConfigError, EngineError, InputError, SedTrtError, StateError
from sed_trt.runtime.io_spec import CER_GRAPHS, LABELS, ExportLimits, GraphSpec, ModelDims, graph_specs

Array = Any  # np.ndarray for host backends, torch.Tensor for device backends

log = logging.getLogger("sed_trt")
DEVICE_GRAPHS = (*CER_GRAPHS, LABELS)  # what only device-resident backends run
_warned_random: set[Path] = set()  # engine directories already warned about in this process


class ArrayOps(abc.ABC):
    """Array primitives the shared orchestration calls; survivor indices are decided on the host."""

    @abc.abstractmethod
    def from_numpy(self, a: np.ndarray) -> Array: ...

    @abc.abstractmethod
    def to_numpy(self, x: Array) -> np.ndarray: ...

    @abc.abstractmethod
    def empty(self, shape: tuple[int, ...], dtype: str = "float32") -> Array:
        """An uninitialised array (filled chunk by chunk by the predictor)."""

    @abc.abstractmethod
    def zeros(self, shape: tuple[int, ...]) -> Array:
        """A float32 array of zeros (the first chunk's running sums)."""

    def narrow(self, x: Array, axis: int, start: int, stop: int) -> Array:
        """``x[start:stop]`` along ``axis`` (a view where the array type has them)."""
        return x[(slice(None),) * axis + (slice(start, stop),)]

    def write(self, dst: Array, axis: int, start: int, src: Array) -> None:
        """Copy ``src`` into ``dst`` at ``start`` along ``axis``."""
        dst[(slice(None),) * axis + (slice(start, start + src.shape[axis]),)] = src

    def index(self, idx: np.ndarray) -> Any:
        """Host indices (n,) in the form :meth:`take` reads (uploaded once, sliced per chunk)."""
        return idx

    @abc.abstractmethod
    def take(self, x: Array, idx: Any, axis: int) -> Array:
        """Gather ``idx`` (a slice of :meth:`index`'s result) along ``axis`` (contiguous result)."""

    def scatter_classes(self, probs: Array, kept: np.ndarray, num_classes: int) -> np.ndarray:
        """(B, T', H, W) -> host (B, T, H, W) with exact zeros outside ``kept`` (copies only T')."""
        host = self.to_numpy(probs)
        out = np.zeros((host.shape[0], num_classes, *host.shape[2:]), dtype=np.float32)
        out[:, kept] = host
        return out

    def synchronize(self) -> None:  # noqa: B027 (a no-op by default: host arrays are always ready)
        """Wait for queued device work (timing); a no-op on the host."""


class NumpyOps(ArrayOps):
    """Host arrays."""

    def from_numpy(self, a: np.ndarray) -> np.ndarray:
        return a

    def to_numpy(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x)

    def empty(self, shape: tuple[int, ...], dtype: str = "float32") -> np.ndarray:
        return np.empty(shape, dtype=dtype)

    def zeros(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape, dtype=np.float32)

    def take(self, x: np.ndarray, idx: np.ndarray, axis: int) -> np.ndarray:
        return np.ascontiguousarray(np.take(x, idx, axis=axis))


class Backend(abc.ABC):
    """A runner: ``__init__`` stores options, ``activate`` loads, ``run`` executes one graph, ``deactivate`` frees."""

    name: str = "base"

    def __init__(self) -> None:
        self.active = False

    # Whether the arrays live on a device: CER and the label map then run as graphs there
    # (runtime.io_spec's cerK and labels), so only class ids and labels reach the host.
    device_resident: bool = False
    threads: int | None = None  # host threads (also the host post-processing's)

    # Set by subclasses in __init__ or activate().
    dims: ModelDims
    limits: ExportLimits | None
    pooling: int
    ops: ArrayOps

    @property
    def specs(self) -> Mapping[str, GraphSpec]:
        return graph_specs(self.dims, self.pooling)

    @property
    @abc.abstractmethod
    def text_fingerprint(self) -> str:
        """Identity of the text tower (keys the text-feature cache)."""

    @property
    def tokenizer_path(self) -> str | None:
        """BPE merges file to use (None: the one installed with open_clip)."""
        return None

    @property
    def label(self) -> str:
        """Name plus any option that changes results (e.g. ``openvino-bf16``): how tables name it."""
        return self.name

    @property
    def random_weights(self) -> bool:
        """Whether the model behind this backend is known to have random (untrained) weights."""
        return False

    @property
    def max_classes(self) -> int | None:
        """Largest vocabulary the graphs/engines accept (None: unbounded)."""
        return None if self.limits is None else self.limits.max_classes

    @property
    def class_chunk(self) -> int:
        """Largest chunk of classes the decoder graphs accept (the default chunk of the predictor)."""
        return (self.limits or ExportLimits()).class_chunk

    @classmethod
    def from_request(cls, request: Any) -> Backend:
        """Build from a :class:`sed_trt.runtime.backends.registry.BackendRequest` (what ``open_backend`` calls)."""
        raise NotImplementedError(f"{cls.__name__} does not implement from_request")

    def placement(self) -> dict[str, Any]:
        """Where this backend runs and with how many CPU threads (None: the library's default)."""
        return {"device": "cpu", "threads": self.threads}

    def activate(self) -> Backend:
        self.active = True
        return self

    def deactivate(self) -> None:
        self.active = False

    def __enter__(self) -> Backend:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def run(self, graph: str, feeds: dict[str, Array]) -> dict[str, Array]:
        """Validate ``feeds`` against the I/O spec, then execute ``graph``."""
        if not self.active:
            raise StateError(
                f"{self.name} backend is not active: call activate() (or use it as a context manager) first"
            )
        spec = self.specs[graph]
        sizes: dict[str, int] = {}
        for t in spec.inputs:
            if t.name not in feeds:
                raise InputError(f"graph {graph!r} | missing input {t.name!r} | expected {spec.input_names}")
            x = feeds[t.name]
            t.check(tuple(x.shape), _dtype_name(x), sizes)
        if self.limits is not None:
            for axis, size in sizes.items():
                if size > self.limits.range_of(axis).max:
                    raise InputError(
                        f"graph {graph!r} | got {axis}={size} | the engines accept at most {self.limits.range_of(axis).max}"
                    )
        return self._run(graph, feeds)

    @abc.abstractmethod
    def _run(self, graph: str, feeds: dict[str, Array]) -> dict[str, Array]: ...


class EngineDirBackend(Backend):
    """A backend driven by an engine directory's manifest (ONNX Runtime, TensorRT).

    Activation verifies every file it is about to load against the manifest's sha256
    (``verify_kinds``): a corrupt graph must fail loudly, never compute something else.
    """

    verify_kinds: tuple[str, ...] = ("graph", "tokenizer")
    graph_precision: str = "fp32"  # which graph files to load: fp32, or fp16 (mixed precision, export --fp16)
    # The manifest entry whose file computes text features (keys the text-feature cache).
    text_file_kind: str = "graph"

    def __init__(self, engine_dir: str | Path, *, backbone: str | None = None) -> None:
        super().__init__()
        from sed_trt.runtime.manifest import Manifest

        self.engine_dir = Path(engine_dir)
        self.manifest = Manifest.load(self.engine_dir)
        self.manifest.check_backbone(backbone)
        self.dims = self.manifest.dims
        self.limits = self.manifest.limits
        self.pooling = self.manifest.pooling
        self._runners: dict[str, Any] = {}

    @classmethod
    def from_request(cls, request: Any) -> EngineDirBackend:
        """``cls(engine_dir, backbone=..., threads=..., precision=..., **options)`` for a CPU backend
        (a GPU backend overrides it), then refuse an export that cannot serve the request."""
        if str(request.device) != "cpu":
            raise ConfigError(f"--device {request.device}: the {cls.name} backend runs on the CPU")
        backend = cls(  # type: ignore[call-arg]
            request.engine_dir,
            backbone=request.backbone,
            threads=request.threads,
            precision=request.precision,
            **request.options,
        )
        backend.check_compatible(pooling=request.pooling, image_size=request.image_size, weights=request.weights)
        return backend

    def _prepare(self) -> None:
        """Import the engine library and settle options before any graph loads (raise
        :class:`BackendUnavailableError` when it is missing). Graph backends override it."""

    def _load(self, graph: str, path: Path, data: bytes) -> Any:
        """A runner for one graph from ``data``, the bytes of ``path`` already verified against the
        manifest (ONNX Runtime session, OpenVINO infer request...)."""
        raise NotImplementedError

    def activate(self) -> EngineDirBackend:
        """Verify the files, then load a runner per graph of the manifest."""
        self._prepare()
        self.verify()
        runners: dict[str, Any] = {}
        try:
            for name, rel in self.manifest.graphs_for(self.graph_precision).items():
                if name in DEVICE_GRAPHS and not self.device_resident:
                    continue  # CER and the labels run on the host here
                data = self.manifest.read_verified(self.engine_dir, rel)  # loaded from the bytes verified
                try:
                    runners[name] = self._load(name, self.engine_dir / rel, data)
                except SedTrtError:
                    raise
                except Exception as exc:  # each engine library raises its own types
                    reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                    raise EngineError(f"{self.name} cannot load {rel!r}: {reason}") from None
        except BaseException as exc:
            # Release what was loaded now, runners before the models they run (deactivate's order),
            # not whenever the garbage collector reaches the traceback's frames, in any order.
            traceback.clear_frames(exc.__traceback__)  # the loaders' locals (a model, a request)
            runners.clear()
            self.deactivate()
            raise
        self._runners = runners
        self.active = True
        return self

    def deactivate(self) -> None:
        self._runners = {}
        self.active = False

    def check_graph_inputs(self, graph: str, shapes: dict[str, list[Any]]) -> None:
        """Refuse a graph file whose inputs' fixed sizes are not the manifest's (an edited manifest,
        a file from another export): it would fail later with a library's message, or compute garbage."""
        for t in self.specs[graph].inputs:
            got = shapes.get(t.name)
            fixed = [(i, d) for i, d in enumerate(t.shape) if isinstance(d, int)]
            if (
                got is None
                or len(got) != len(t.shape)
                or any(isinstance(got[i], int) and got[i] != d for i, d in fixed)
            ):
                raise EngineError(
                    f"{graph}: input {t.name!r} of the graph file is {got}, the manifest says {list(t.shape)}; re-export the engines"
                )

    def check_compatible(
        self, *, pooling: int | None = None, image_size: int | None = None, weights: str | Path | None = None
    ) -> None:
        """Refuse a request the exported graphs cannot serve (pooling and input size are baked in)."""
        if pooling is not None and pooling != self.pooling:
            raise ConfigError(f"the engines were exported with --pooling {self.pooling}; got --pooling {pooling}")
        if image_size is not None and image_size != self.dims.image_size:
            raise ConfigError(
                f"the engines were exported with --image-size {self.dims.image_size}; got --image-size {image_size}"
            )
        if weights is not None:
            from sed_trt.runtime.fsutil import file_sha256

            if not Path(weights).is_file():
                raise ConfigError(f"--weights {str(weights)!r} does not exist")
            if self.manifest.checkpoint_sha256 != file_sha256(weights):
                raise ConfigError(f"--weights {str(weights)!r} is not the checkpoint the engines were exported from")

    def verify(self) -> None:
        """Check the files this backend reads by path against the manifest (graphs and engines are
        checked as their bytes are read, :meth:`Manifest.read_verified`); warn about random weights."""
        self.manifest.verify_files(
            self.engine_dir, which=tuple(k for k in self.verify_kinds if k not in ("graph", "engine"))
        )
        if self.random_weights and self.engine_dir.resolve() not in _warned_random:
            _warned_random.add(self.engine_dir.resolve())
            log.warning(
                "the engines in %s were exported with RANDOM weights (no --weights): fine for speed, useless for predictions",
                self.engine_dir,
            )

    @property
    def random_weights(self) -> bool:
        return self.manifest.checkpoint_sha256 is None

    @property
    def text_fingerprint(self) -> str:
        """Text-tower weights at export + the sha256 of the text-encoder file this backend runs."""
        label = f"{self.text_file_kind} text_encoder"
        digest = self.manifest.files().get(label, ("", ""))[1]
        return f"{self.manifest.text_fingerprint}:{self.text_file_kind}:{digest[:16]}"

    @property
    def tokenizer_path(self) -> str | None:
        return str(self.engine_dir / self.manifest.tokenizer_file)  # checked against its sha256 at activation


def _dtype_name(x: Array) -> str:
    return str(x.dtype).replace("torch.", "")
