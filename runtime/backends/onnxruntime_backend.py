"""ONNX Runtime backend: runs the exported graphs with numpy only (no torch at run time)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sed_trt.runtime.backends.base import EngineDirBackend, NumpyOps
from sed_trt.runtime.backends.registry import BackendSpec, Option
from sed_trt.runtime.errors import BackendUnavailableError

SPEC = BackendSpec(
    name="onnxruntime",
    cls="OnnxRuntimeBackend",
    summary="the exported ONNX graphs in ONNX Runtime on the CPU (numpy only, no torch)",
    loads="engine_dir",
    placement="cpu",
    precisions=("fp32", "fp16", "int8", "fp8"),  # the graphs of export --fp16 / --int8 / --fp8 (fp8: emulated)
    options=(
        Option(
            "mem_arena",
            "--ort-arena",
            "onnxruntime: one CPU memory arena shared by its graphs' sessions (default on: faster; --no-ort-arena saves memory)",
            kind="toggle",
        ),
        Option(
            "spin",
            "--ort-spin",
            "onnxruntime: let its threads spin-wait between runs (default off: the graphs run one after "
            "another, each session with its own threads, and spinning ones steal the cores from the next)",
            kind="toggle",
        ),
    ),
    probe="probe",
)


def probe() -> str:
    """ONNX Runtime's version and providers (and a warning when both CPU and GPU packages are installed)."""
    from importlib import metadata

    import onnxruntime as ort

    installed = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.version(dist)
            installed.append(dist)
        except metadata.PackageNotFoundError:
            pass
    clash = " | WARNING: both onnxruntime and onnxruntime-gpu are installed; keep one" if len(installed) > 1 else ""
    return f"{ort.__version__}, providers {ort.get_available_providers()}{clash}"


class OnnxRuntimeBackend(EngineDirBackend):
    """One ``InferenceSession`` per graph of an engine directory."""

    name = "onnxruntime"

    @property
    def label(self) -> str:
        return SPEC.label(self.graph_precision)

    def __init__(
        self,
        engine_dir: str | Path,
        *,
        providers: list[str] | None = None,
        threads: int | None = None,
        mem_arena: bool = True,
        spin: bool = False,
        precision: str = "fp32",
        backbone: str | None = None,
    ) -> None:
        super().__init__(engine_dir, backbone=backbone)
        # fp16: the mixed-precision graphs of ``export --fp16`` (what fp16 TensorRT engines are built
        # from), to measure their accuracy on the CPU; ONNX Runtime adds casts where it lacks fp16 kernels.
        # int8: the Q/DQ graphs of ``export --int8`` (ONNX Runtime fuses each pair around a Conv/MatMul
        # into an int8 kernel). fp8: the E4M3 Q/DQ graphs of ``export --fp8`` (what fp8 TensorRT engines
        # are built from) with their numerics emulated: each pair rounds to E4M3 and back, the products
        # run in fp32 (TensorRT accumulates fp8 products in fp32 too). For their error, not their speed.
        self.manifest.graphs_for(precision)  # refuse an export without those graphs now, not at activate
        self.graph_precision = precision
        # ONNX Runtime's CPU arena: faster, with chunk-sized buffers kept between runs (the
        # benchmark docs give the measured cost); mem_arena=False for the leanest run.
        self.mem_arena = mem_arena
        self.spin = spin
        self.ops = NumpyOps()
        self.providers = providers or ["CPUExecutionProvider"]
        self.threads = threads
        self._options: Any = None
        self._fp8_options: Any = None

    def _prepare(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailableError(
                "the onnxruntime backend needs onnxruntime: pip install onnxruntime"
            ) from None
        unknown = [p for p in self.providers if p not in ort.get_available_providers()]
        if unknown:
            raise BackendUnavailableError(
                f"ONNX Runtime providers {unknown} are not available here (available: {ort.get_available_providers()})"
            )
        self._options = self._session_options(ort, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        # fp8: ONNX Runtime's graph optimisations move Transposes onto the float8 tensors between a
        # Q/DQ pair, which the graph's opset (20) does not type for float8 (Transpose takes it from
        # opset 21): loading fails. Unoptimised, each node runs as written (emulation).
        self._fp8_options = (
            self._session_options(ort, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
            if self.graph_precision == "fp8"
            else None
        )

    def _session_options(self, ort: Any, level: Any) -> Any:
        """The options every graph's session shares, at graph optimisation ``level``."""
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        options.enable_cpu_mem_arena = self.mem_arena
        if self.threads:
            options.intra_op_num_threads = self.threads
        # Spin-waiting off (ONNX Runtime's session config keys, onnxruntime_session_options_config_keys.h):
        # every graph is its own session with its own threads, run one after another; threads left
        # spinning after a run took the cores from the next session (measured: decoder stages 2x
        # slower than torch on 2 cores; with spinning off, about equal).
        if self.mem_arena:  # one arena for all the graphs' sessions (see _register_shared_arena)
            _register_shared_arena(ort)
            options.add_session_config_entry("session.use_env_allocators", "1")
        if not self.spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        return options

    def _load(self, graph: str, path: Path, data: bytes) -> Any:
        import onnxruntime as ort

        fp8 = self._fp8_options is not None and graph in self.manifest.fp8_graphs
        session = ort.InferenceSession(data, self._fp8_options if fp8 else self._options, providers=self.providers)
        self.check_graph_inputs(graph, {i.name: list(i.shape) for i in session.get_inputs()})
        return session

    def placement(self) -> dict[str, object]:
        return {"device": self.providers[0], "threads": self.threads}

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.specs[graph]
        outs = self._runners[graph].run(spec.output_names, {n: feeds[n] for n in spec.input_names})
        return dict(zip(spec.output_names, outs))


_SHARED_ARENA: list[bool] = []


def _register_shared_arena(ort: Any) -> None:
    """One CPU arena for every session of the process, grown by what each request needs
    (kSameAsRequested, not the default's doubling). Each graph is its own session, and with an
    arena each (release 0.2) every one kept its own high-water buffers: measured on 2-core AMD EPYC,
    folder mode over 20 photos took 565 MB instead of 813 MB at the same speed, and 200 photos
    6.7 % more than 20 (per-session arenas: +12 %, still growing past 20)."""
    if _SHARED_ARENA:
        return
    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    cfg = ort.OrtArenaCfg({"arena_extend_strategy": 1})  # kSameAsRequested
    ort.create_and_register_allocator(info, cfg)
    _SHARED_ARENA.append(True)
