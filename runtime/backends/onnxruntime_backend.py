"""ONNX Runtime backend: runs the exported graphs with numpy only (no torch at run time)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.backends.base import EngineDirBackend, NumpyOps
from runtime.errors import BackendUnavailableError, EngineError


class OnnxRuntimeBackend(EngineDirBackend):
    """One ``InferenceSession`` per graph of an engine directory."""

    name = "onnxruntime"

    def __init__(self, engine_dir: str | Path, *, providers: list[str] | None = None, threads: int | None = None, backbone: str | None = None) -> None:
        super().__init__(engine_dir, backbone=backbone)
        self.ops = NumpyOps()
        self.providers = providers or ["CPUExecutionProvider"]
        self.threads = threads
        self._sessions: dict[str, object] = {}

    def activate(self) -> OnnxRuntimeBackend:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailableError("the onnxruntime backend needs onnxruntime: pip install onnxruntime") from None
        unknown = [p for p in self.providers if p not in ort.get_available_providers()]
        if unknown:
            raise BackendUnavailableError(f"ONNX Runtime providers {unknown} are not available here (available: {ort.get_available_providers()})")
        self.verify()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            opts.intra_op_num_threads = self.threads
        for name, rel in self.manifest.graphs.items():
            try:
                self._sessions[name] = ort.InferenceSession(str(self.engine_dir / rel), opts, providers=self.providers)
            except Exception as exc:
                raise EngineError(f"ONNX Runtime cannot load {rel!r}: {str(exc).splitlines()[0][:200]}") from None
        self.active = True
        return self

    def deactivate(self) -> None:
        self._sessions.clear()
        self.active = False

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.specs[graph]
        outs = self._sessions[graph].run(spec.output_names, {n: feeds[n] for n in spec.input_names})  # type: ignore[attr-defined]
        return dict(zip(spec.output_names, outs))
