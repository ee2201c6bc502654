"""The ``bls`` repository form: each graph a ``tensorrt_plan`` model, orchestrated by BLS calls.

:class:`TritonBLSBackend` is a backend whose ``run`` is a Triton business-logic-scripting
request to the graph's own model (``sed_<graph>``), so the shared predictor (chunks, CER,
labels) drives Triton-scheduled TensorRT engines. Arrays travel as host numpy arrays between
calls (Triton copies them to and from the GPU per call); that is the form's cost against the
``python`` form, whose TensorRT backend keeps everything on the device. Written from
Triton's Python-backend API (``pb_utils.InferenceRequest(...).exec()``); tested in CI with a
fake of that API over ONNX Runtime, not on a real Triton with TensorRT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sed_trt.runtime.backends.base import EngineDirBackend, NumpyOps
from sed_trt.runtime.errors import EngineError
from sed_trt.serve.repository import BLS_PREFIX


class TritonBLSBackend(EngineDirBackend):
    """Runs each graph as a BLS request to its model in the same Triton server."""

    name = "triton-bls"
    device_resident = True  # CER and the labels run as plan models too: only their results come back
    verify_kinds = ()  # Triton loads (and owns) the plans
    text_file_kind = "engine"  # the text_encoder plan computes the features: the cache keys on its digest

    def __init__(self, engine_dir: str | Path, *, pb_utils: Any = None, prefix: str = BLS_PREFIX) -> None:
        super().__init__(engine_dir)
        self.ops = NumpyOps()
        self.prefix = prefix
        self._pb = pb_utils

    def activate(self) -> TritonBLSBackend:
        if self._pb is None:
            import triton_python_backend_utils as pb_utils  # Triton's Python backend provides it

            self._pb = pb_utils
        self.active = True
        return self

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pb = self._pb
        spec = self.specs[graph]
        request = pb.InferenceRequest(
            model_name=f"{self.prefix}{graph}",
            requested_output_names=spec.output_names,
            inputs=[pb.Tensor(n, np.ascontiguousarray(feeds[n])) for n in spec.input_names],
            # The plan models run on the GPU: their outputs stay there unless CPU memory is asked
            # for, and as_numpy() refuses a GPU tensor (python_backend README, BLS; Triton >= 23.04).
            preferred_memory=pb.PreferredMemory(pb.TRITONSERVER_MEMORY_CPU, 0),
        )
        response = request.exec()
        if response.has_error():
            raise EngineError(f"{self.prefix}{graph}: {response.error().message()}")
        return {n: pb.get_output_tensor_by_name(response, n).as_numpy() for n in spec.output_names}
