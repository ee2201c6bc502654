"""OpenVINO backend (CPU): runs the exported ONNX graphs with numpy only (no torch at run time).

OpenVINO picks bf16 by itself on CPUs with native bf16 (AMX, AVX512-BF16); here the
precision is always pinned: fp32 by default, bf16 only when asked for, and refused where
the CPU has no native bf16. bf16 runs the decoder graphs in bf16 and keeps the image encoder in
f32 (within the 2e-2 budget on full-size weights; ``--ov-bf16-encoder`` puts it in bf16 too, faster
and outside it); int8 runs the Q/DQ image encoder of ``export --int8``. One compiled model and one infer request per graph serve every
vocabulary size (dynamic T, no recompilation); compiled blobs are cached on disk so a
second start-up skips compilation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sed_trt.runtime.backends.base import EngineDirBackend, NumpyOps
from sed_trt.runtime.backends.registry import BackendSpec, Option
from sed_trt.runtime.errors import BackendUnavailableError, ConfigError, EngineError, install_hint
from sed_trt.runtime.fsutil import default_cache_dir as sed_trt_cache_dir
from sed_trt.runtime.io_spec import IMAGE_ENCODER

SPEC = BackendSpec(
    name="openvino",
    cls="OpenVINOBackend",
    summary="the exported ONNX graphs in OpenVINO on the CPU (bf16 where the CPU has it natively)",
    loads="engine_dir",
    placement="cpu",
    precisions=("fp32", "bf16", "int8"),
    options=(
        Option(
            "bf16_encoder",
            "--ov-bf16-encoder",
            "openvino bf16: the image encoder in bf16 too (faster; outside the 2e-2 budget and CER's "
            "kept sets on full-size ConvNeXt-B, docs/benchmarks.md)",
        ),
        Option(
            "release_memory",
            "--release-memory",
            "openvino: free each graph's buffers after it runs (less memory, slower)",
        ),
    ),
    probe="probe",
)
# ours -> OpenVINO's INFERENCE_PRECISION_HINT; int8 runs the Q/DQ graphs of export --int8 (OpenVINO
# turns each pair into a FakeQuantize and runs the product in int8), every other node in f32.
OV_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def default_cache_dir() -> Path:
    """Where compiled OpenVINO blobs go: ``openvino/`` in sed-trt's cache (``$SED_TRT_CACHE``)."""
    return sed_trt_cache_dir() / "openvino"


def import_openvino() -> Any:
    try:
        import openvino as ov
    except ImportError:
        raise BackendUnavailableError(f"the openvino backend needs OpenVINO: {install_hint('openvino')}") from None
    return ov


def native_bf16(core: Any) -> bool:
    """Whether the CPU computes bf16 natively (OpenVINO lists BF16 only for AMX / AVX512-BF16)."""
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def probe() -> str:
    """OpenVINO's version, the CPU and whether it has native bf16."""
    ov = import_openvino()
    core = ov.Core()
    return f"{ov.__version__}, CPU {core.get_property('CPU', 'FULL_DEVICE_NAME')}, native bf16: {native_bf16(core)}"


class OpenVINOBackend(EngineDirBackend):
    """One compiled model and infer request per graph of an engine directory, on the CPU."""

    name = "openvino"

    def __init__(
        self,
        engine_dir: str | Path,
        *,
        precision: str = "fp32",
        threads: int | None = None,
        cache_dir: str | Path | None = None,
        release_memory: bool = False,
        bf16_encoder: bool = False,
        backbone: str | None = None,
    ) -> None:
        super().__init__(engine_dir, backbone=backbone)
        if precision not in OV_PRECISIONS:
            raise ConfigError(f"--precision {precision!r} is not an OpenVINO precision; use fp32, bf16 or int8")
        self.precision = precision
        self.graph_precision = "int8" if precision == "int8" else "fp32"
        self.manifest.graphs_for(self.graph_precision)  # refuse an export without int8 graphs now
        self.threads = threads
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        # Free each graph's intermediate buffers after it ran: less peak memory, slower (the
        # benchmark docs give the measured trade-off).
        self.release_memory = release_memory
        if bf16_encoder and precision != "bf16":
            raise ConfigError("--ov-bf16-encoder applies to --precision bf16 only")
        # bf16 keeps the image encoder in f32 unless asked: measured on full-size synthetic ConvNeXt-B
        # (768 px, ADE-150), its bf16 alone changed CER's top-8 kept set, while the decoder graphs in
        # bf16 stayed within 2e-2 (1.94e-2) with the kept sets identical (docs/benchmarks.md).
        self.bf16_encoder = bf16_encoder
        self._compiled: dict[str, Any] = {}
        self.ops = NumpyOps()
        self.device = f"CPU ({self.precision})"
        self._core: Any = None
        self._config: dict[str, Any] = {}
        self._expected: Any = None
        self._f32: Any = None

    @property
    def label(self) -> str:
        return SPEC.label(self.precision)

    def config(self, core: Any) -> dict[str, Any]:
        """The compile options: precision pinned, latency mode, one stream, model cache."""
        if self.precision == "bf16" and not native_bf16(core):
            raise ConfigError(
                f"--precision bf16 needs a CPU with native bf16 (AMX or AVX512-BF16); {core.get_property('CPU', 'FULL_DEVICE_NAME')} has none: use fp32"
            )
        cfg: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": OV_PRECISIONS[self.precision],
            "EXECUTION_MODE_HINT": "PERFORMANCE" if self.precision == "bf16" else "ACCURACY",
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": "1",
        }
        if self.threads:
            cfg["INFERENCE_NUM_THREADS"] = int(self.threads)
        return cfg

    def _prepare(self) -> None:
        ov = import_openvino()
        self._core = ov.Core()
        self._config = self.config(self._core)
        self._expected = {"fp32": ov.Type.f32, "bf16": ov.Type.bf16, "int8": ov.Type.f32}[self.precision]
        self._f32 = ov.Type.f32
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            self._core.set_property({"CACHE_DIR": str(self.cache_dir)})
        except OSError:
            pass  # no cache: compile every start-up

    def _load(self, graph: str, path: Path, data: bytes) -> Any:
        model = self._core.read_model(data)  # the verified bytes (an ONNX model has no separate weights)
        config, expected = self._config, self._expected
        if self.precision == "bf16" and graph == IMAGE_ENCODER and not self.bf16_encoder:
            config = {**config, "INFERENCE_PRECISION_HINT": "f32", "EXECUTION_MODE_HINT": "ACCURACY"}
            expected = self._f32
        compiled = self._core.compile_model(model, "CPU", config)
        got = compiled.get_property("INFERENCE_PRECISION_HINT")
        if got != expected:
            raise EngineError(
                f"OpenVINO compiled {path.name!r} with precision {got}, not the requested {self.precision}"
            )
        self._compiled[graph] = compiled
        return compiled.create_infer_request()

    def deactivate(self) -> None:
        super().deactivate()
        self._compiled = {}

    def placement(self) -> dict[str, Any]:
        return {"device": self.device, "threads": self.threads}

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.specs[graph]
        request = self._runners[graph]
        request.infer({n: np.ascontiguousarray(feeds[n]) for n in spec.input_names})
        # The request's output buffers are reused by its next call: copy them out.
        out = {name: np.array(request.get_tensor(name).data) for name in spec.output_names}
        if self.release_memory:
            self._compiled[graph].release_memory()
        return out
