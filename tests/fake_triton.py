"""A fake of the part of Triton's Python-backend API (``triton_python_backend_utils``) sed-trt uses.

Tensors and requests are plain holders; a BLS request (``InferenceRequest(...).exec()``) runs
the named model's ONNX graph in ONNX Runtime, standing in for the ``tensorrt_plan`` model of
a ``bls`` repository, so the orchestration code runs on the CPU.

As strict as the real stub where sed-trt meets it (python_backend README, "Business Logic
Scripting"; src/infer_request.cc, src/pb_tensor.cc):
- BLS runs only inside ``execute``: ``exec()`` elsewhere (``initialize``, ``finalize``) raises
  "BLS is only supported during the 'execute' function." Tests call ``execute`` inside
  ``pb.executing()``, as Triton does.
- The ``tensorrt_plan`` models are ``KIND_GPU``: without ``preferred_memory`` of CPU memory a BLS
  output stays on the GPU, and ``as_numpy()`` raises "Tensor is stored in GPU and cannot be
  converted to NumPy."
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def make(graphs: dict[str, Path] | None = None, prefix: str = "sed_") -> types.ModuleType:
    """A fake ``triton_python_backend_utils`` whose BLS calls run ``graphs`` (model name -> ONNX file)."""
    import onnxruntime as ort

    pb = types.ModuleType("triton_python_backend_utils")
    sessions: dict[str, Any] = {}
    pb.CALLS = []
    pb.TRITONSERVER_MEMORY_CPU, pb.TRITONSERVER_MEMORY_CPU_PINNED, pb.TRITONSERVER_MEMORY_GPU = 0, 1, 2
    state = {"executing": False}

    class PythonBackendException(Exception):  # the stub's own type (not a SedTrtError)
        pass

    @contextlib.contextmanager
    def executing() -> Iterator[None]:
        """Triton calling the model's ``execute``: the only place BLS may run."""
        state["executing"] = True
        try:
            yield
        finally:
            state["executing"] = False

    class PreferredMemory:
        def __init__(self, preferred_memory_type: int, preferred_device_id: int = 0) -> None:
            self.preferred_memory_type, self.preferred_device_id = preferred_memory_type, preferred_device_id

    class Tensor:
        def __init__(self, name: str, array: np.ndarray, *, on_gpu: bool = False) -> None:
            self._name, self._array, self._on_gpu = name, np.asarray(array), on_gpu

        def name(self) -> str:
            return self._name

        def is_cpu(self) -> bool:
            return not self._on_gpu

        def as_numpy(self) -> np.ndarray:
            if self._on_gpu:
                raise PythonBackendException("Tensor is stored in GPU and cannot be converted to NumPy.")
            return self._array

    class TritonError:
        def __init__(self, message: str) -> None:
            self._message = message

        def message(self) -> str:
            return self._message

    class InferenceResponse:
        def __init__(self, output_tensors: list[Tensor], error: TritonError | None = None) -> None:
            self.output_tensors, self._error = output_tensors, error

        def has_error(self) -> bool:
            return self._error is not None

        def error(self) -> TritonError | None:
            return self._error

    class InferenceRequest:
        def __init__(
            self,
            model_name: str,
            requested_output_names: list[str],
            inputs: list[Tensor],
            preferred_memory: PreferredMemory | None = None,
        ) -> None:
            self.model_name, self.requested_output_names, self.inputs = model_name, requested_output_names, inputs
            self.preferred_memory = preferred_memory

        def exec(self) -> InferenceResponse:
            if not state["executing"]:
                raise PythonBackendException("BLS is only supported during the 'execute' function.")
            pb.CALLS.append(self.model_name)
            graph = self.model_name.removeprefix(prefix)
            if graphs is None or graph not in graphs:
                return InferenceResponse(
                    [], TritonError(f"Request for unknown model: '{self.model_name}' is not found")
                )
            if graph not in sessions:
                sessions[graph] = ort.InferenceSession(str(graphs[graph]), providers=["CPUExecutionProvider"])
            outs = sessions[graph].run(self.requested_output_names, {t.name(): t.as_numpy() for t in self.inputs})
            cpu = self.preferred_memory is not None and self.preferred_memory.preferred_memory_type in (
                pb.TRITONSERVER_MEMORY_CPU,
                pb.TRITONSERVER_MEMORY_CPU_PINNED,
            )
            tensors = [Tensor(n, o, on_gpu=not cpu) for n, o in zip(self.requested_output_names, outs)]
            return InferenceResponse(tensors)

    def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
        return next((t for t in response.output_tensors if t.name() == name), None)

    class Request:  # what Triton hands execute(): input tensors by name
        def __init__(self, tensors: dict[str, np.ndarray]) -> None:
            self.tensors = [Tensor(n, a) for n, a in tensors.items()]

    def get_input_tensor_by_name(request: Request, name: str) -> Tensor | None:
        return next((t for t in request.tensors if t.name() == name), None)

    pb.Tensor, pb.TritonError, pb.InferenceResponse, pb.InferenceRequest = (
        Tensor,
        TritonError,
        InferenceResponse,
        InferenceRequest,
    )
    pb.Request = Request
    pb.PreferredMemory, pb.PythonBackendException, pb.executing = PreferredMemory, PythonBackendException, executing
    pb.get_output_tensor_by_name, pb.get_input_tensor_by_name = get_output_tensor_by_name, get_input_tensor_by_name
    return pb
