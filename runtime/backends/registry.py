"""Backends as plug-ins: one module each, with a :class:`BackendSpec` named ``SPEC`` beside its class.

A spec says what the command line and every tool need to know without importing the
backend's library: its name, what it loads (an engine directory or a checkpoint), where it
runs, its precisions (labels such as ``openvino-bf16``), its own options (and so its flags)
and a probe for ``sed-trt doctor``. The class builds itself from a :class:`BackendRequest`
(``from_request``). A backend is added by one registry entry: :func:`register_backend` with
its module path (``import sed`` registers the torch backend), or an entry point in the
``sed_trt.backends`` group whose value is the module path.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from sed_trt.runtime.errors import ConfigError, SedTrtError

ENTRY_POINT_GROUP = "sed_trt.backends"
PRECISIONS = ("fp32", "bf16", "fp16", "int8", "fp8")  # --precision's values; each backend runs a subset

# name -> module holding SPEC; modules are imported only when specs are listed or a backend is opened.
_MODULES: dict[str, str] = {
    "onnxruntime": "sed_trt.runtime.backends.onnxruntime_backend",
    "openvino": "sed_trt.runtime.backends.openvino_backend",
    "tensorrt": "sed_trt.runtime.backends.tensorrt_backend",
}
_SPECS: dict[str, BackendSpec] = {}


@dataclass(frozen=True)
class Option:
    """A backend's own option: the keyword its ``from_request`` reads and the flag that sets it.

    ``kind``: ``switch`` (a flag that turns it on), ``toggle`` (``--x``/``--no-x``) or
    ``value`` (a flag with an argument, parsed by ``type``).
    """

    keyword: str
    flag: str
    help: str
    kind: str = "switch"
    type: Callable[[str], Any] | None = None


# Declared once: the torch and tensorrt backends share the flag.
CUDA_GRAPHS_OPTION = Option(
    "cuda_graphs", "--cuda-graphs", "torch or tensorrt on a GPU: replay captured CUDA graphs per shape (opt-in)"
)


@dataclass(frozen=True)
class BackendSpec:
    """What a backend is, for the tools that open it (see the module docstring)."""

    name: str
    cls: str  # the backend class, in the spec's module
    summary: str
    loads: str  # "engine_dir" (exported graphs or engines) or "checkpoint" (the PyTorch model)
    placement: str  # "cpu", "gpu", or "device" (where --device says)
    precisions: tuple[str, ...] = ("fp32",)
    options: tuple[Option, ...] = ()
    probe: str | None = None  # a function of the module: () -> one line; raises when unusable
    module: str = field(default="", compare=False)

    def label(self, precision: str) -> str:
        """How tables name this backend at ``precision`` (``openvino-bf16``; fp32 is the plain name)."""
        return self.name if precision == "fp32" else f"{self.name}-{precision}"

    def backend_class(self) -> Any:
        return getattr(importlib.import_module(self.module), self.cls)

    def run_probe(self) -> str:
        """The probe's line (raises what the probe raises)."""
        if self.probe is None:
            return "no probe"
        return str(getattr(importlib.import_module(self.module), self.probe)())


@dataclass(frozen=True)
class BackendRequest:
    """Everything a caller may ask of a backend; each backend reads what applies to it."""

    engine_dir: str | Path | None = None
    backbone: Any = None  # a config name, a JSON path or a SEDConfig (checkpoint backends)
    model: Any = None  # or a model already built (checkpoint backends; the benchmarks reuse one)
    weights: str | Path | None = None
    device: str = "cpu"
    pooling: int | None = None  # None: the engines' export pooling, or 1 (official evaluation) for a checkpoint
    image_size: int | None = None
    threads: int | None = None
    precision: str = "fp32"
    options: Mapping[str, Any] = field(default_factory=dict)


def register_backend(module: str) -> BackendSpec:
    """Add the backend whose module (holding ``SPEC`` and its class) is ``module``; returns its spec."""
    spec = _load(module)
    _MODULES[spec.name] = module
    _SPECS[spec.name] = spec
    return spec


def _load(module: str) -> BackendSpec:
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"backend module {module!r} cannot be imported: {exc}") from None
    spec = getattr(mod, "SPEC", None)
    if not isinstance(spec, BackendSpec):
        raise ConfigError(f"backend module {module!r} has no SPEC (a runtime.backends.registry.BackendSpec)")
    return BackendSpec(**{**spec.__dict__, "module": module})


def _entry_points() -> None:
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _MODULES:
            _MODULES[ep.name] = ep.value


def backend_specs() -> dict[str, BackendSpec]:
    """Every registered backend's spec, by name (their modules imported; their libraries not)."""
    _entry_points()
    for name, module in list(_MODULES.items()):
        if name not in _SPECS:
            _SPECS[name] = _load(module)
    return {name: _SPECS[name] for name in _MODULES}


def backend_spec(name: str) -> BackendSpec:
    """The spec of ``name`` (a plain name, not a label)."""
    specs = backend_specs() if name not in _SPECS else _SPECS
    if name not in specs:
        hint = " (import sed to register it)" if name == "torch" else ""
        raise ConfigError(f"unknown backend {name!r}{hint}; available: {sorted(backend_specs())}")
    return specs[name]


def parse_label(label: str) -> tuple[BackendSpec, str]:
    """``onnxruntime``, ``openvino-bf16`` ... -> (spec, precision)."""
    name, _, precision = label.partition("-")
    spec = backend_spec(name)
    precision = precision or "fp32"
    if precision not in spec.precisions:
        labels = ", ".join(spec.label(p) for p in spec.precisions)
        raise ConfigError(f"unknown backend label {label!r}: {spec.name} runs {labels}")
    return spec, precision


def all_labels() -> list[str]:
    """Every backend at every precision it runs, as tables name them."""
    return [s.label(p) for s in backend_specs().values() for p in s.precisions]


def all_options() -> dict[str, Option]:
    """Every backend option by keyword (for the command line; backends sharing one declare it alike)."""
    out: dict[str, Option] = {}
    for spec in backend_specs().values():
        for opt in spec.options:
            if out.setdefault(opt.keyword, opt) != opt:
                raise ConfigError(f"backend {spec.name} declares option {opt.keyword!r} unlike another backend")
    return out


def open_backend(label: str, request: BackendRequest | None = None) -> Any:
    """Create (not activate) the backend ``label`` names for ``request``, refusing one that cannot serve it.

    The one way every tool opens a backend: the label's precision and the request's must
    agree, the request's options must be the backend's own, an engine-directory backend
    needs ``engine_dir`` and a checkpoint backend ``backbone``; the backend then checks the
    rest (an engine directory exported with this pooling, size, backbone and checkpoint).
    """
    request = request or BackendRequest()
    spec, precision = parse_label(label)
    if request.precision != "fp32":
        if precision != "fp32" and precision != request.precision:
            raise ConfigError(f"--backend {label} and --precision {request.precision} disagree")
        precision = request.precision
    if precision not in spec.precisions:
        raise ConfigError(
            f"--precision {precision} does not apply to --backend {spec.name} (it runs {', '.join(spec.precisions)})"
        )
    own = {o.keyword for o in spec.options}
    for keyword, value in request.options.items():
        if value is not None and keyword not in own:
            users = [s.name for s in backend_specs().values() if keyword in {o.keyword for o in s.options}]
            flag = all_options()[keyword].flag if users else keyword
            raise ConfigError(f"{flag} applies to --backend {' or '.join(users) or 'none'} only")
    if spec.loads == "engine_dir" and request.engine_dir is None:
        raise ConfigError(f"--engine-dir is required with --backend {spec.name} (make one with 'sed-trt export')")
    if spec.loads == "checkpoint" and request.backbone is None and request.model is None:
        raise ConfigError(f"--backbone is required with --backend {spec.name}")
    if spec.loads == "checkpoint" and request.engine_dir is not None:
        raise ConfigError(f"--engine-dir does not apply to --backend {spec.name} (it runs the PyTorch model)")
    options = {k: v for k, v in request.options.items() if v is not None and k in own}
    resolved = BackendRequest(**{**request.__dict__, "precision": precision, "options": options})
    backend = spec.backend_class().from_request(resolved)
    return backend


def probe_all() -> list[tuple[BackendSpec, bool, str]]:
    """Every backend's probe: (spec, usable here, its line or why not)."""
    out = []
    for spec in backend_specs().values():
        try:
            out.append((spec, True, spec.run_probe()))
        except SedTrtError as exc:
            out.append((spec, False, str(exc)))
        except Exception as exc:  # a broken install raises anything
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            out.append((spec, False, f"{type(exc).__name__}: {first}"))
    return out
