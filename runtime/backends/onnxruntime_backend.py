"""ONNX Runtime backend: runs the exported graphs with numpy only (no torch at run time)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends.base import EngineDirBackend, NumpyOps
from runtime.errors import BackendUnavailableError


class OnnxRuntimeBackend(EngineDirBackend):
    """One ``InferenceSession`` per graph of an engine directory."""

    name = "onnxruntime"

    @property
    def label(self) -> str:
        return self.name if self.graph_precision == "fp32" else f"{self.name}-{self.graph_precision}"

    def __init__(
        self,
        engine_dir: str | Path,
        *,
        providers: list[str] | None = None,
        threads: int | None = None,
        mem_arena: bool = True,
        precision: str = "fp32",
        backbone: str | None = None,
    ) -> None:
        super().__init__(engine_dir, backbone=backbone)
        # fp16: the mixed-precision graphs of ``export --fp16`` (what fp16 TensorRT engines are built
        # from), to measure their accuracy on the CPU; ONNX Runtime adds casts where it lacks fp16 kernels.
        self.manifest.graphs_for(precision)  # refuse an export without fp16 graphs now, not at activate
        self.graph_precision = precision
        # ONNX Runtime's CPU arena, measured on ConvNeXt-B, 768 px (2-core EPYC). With whole-vocabulary
        # graphs (release 0.1) it tripled peak RSS (12.4 GB at 150 classes). With class-chunked
        # decoding its buffers are chunk-sized: 4.0 GB at 150 classes and 5.4 GB at 847 (2.2 and
        # 4.6-4.8 GB without it), and 1.3-1.4x faster. On by default; mem_arena=False for the leanest run.
        self.mem_arena = mem_arena
        self.ops = NumpyOps()
        self.providers = providers or ["CPUExecutionProvider"]
        self.threads = threads
        self._options: Any = None

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
        self._options = ort.SessionOptions()
        self._options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._options.enable_cpu_mem_arena = self.mem_arena
        if self.threads:
            self._options.intra_op_num_threads = self.threads

    def _load(self, graph: str, path: Path) -> Any:
        import onnxruntime as ort

        return ort.InferenceSession(str(path), self._options, providers=self.providers)

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.specs[graph]
        outs = self._runners[graph].run(spec.output_names, {n: feeds[n] for n in spec.input_names})
        return dict(zip(spec.output_names, outs))
