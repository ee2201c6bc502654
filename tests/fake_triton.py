"""A fake of the part of Triton's Python-backend API (``triton_python_backend_utils``) sed-trt uses.

Tensors and requests are plain holders; a BLS request (``InferenceRequest(...).exec()``) runs
the named model's ONNX graph in ONNX Runtime, standing in for the ``tensorrt_plan`` model of
a ``bls`` repository, so the orchestration code runs on the CPU.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import numpy as np


def make(graphs: dict[str, Path] | None = None, prefix: str = "sed_") -> types.ModuleType:
    """A fake ``triton_python_backend_utils`` whose BLS calls run ``graphs`` (model name -> ONNX file)."""
    import onnxruntime as ort

    pb = types.ModuleType("triton_python_backend_utils")
    sessions: dict[str, Any] = {}
    pb.CALLS = []

    class Tensor:
        def __init__(self, name: str, array: np.ndarray) -> None:
            self._name, self._array = name, np.asarray(array)

        def name(self) -> str:
            return self._name

        def as_numpy(self) -> np.ndarray:
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
        def __init__(self, model_name: str, requested_output_names: list[str], inputs: list[Tensor]) -> None:
            self.model_name, self.requested_output_names, self.inputs = model_name, requested_output_names, inputs

        def exec(self) -> InferenceResponse:
            pb.CALLS.append(self.model_name)
            graph = self.model_name.removeprefix(prefix)
            if graphs is None or graph not in graphs:
                return InferenceResponse(
                    [], TritonError(f"Request for unknown model: '{self.model_name}' is not found")
                )
            if graph not in sessions:
                sessions[graph] = ort.InferenceSession(str(graphs[graph]), providers=["CPUExecutionProvider"])
            outs = sessions[graph].run(self.requested_output_names, {t.name(): t.as_numpy() for t in self.inputs})
            return InferenceResponse([Tensor(n, o) for n, o in zip(self.requested_output_names, outs)])

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
    pb.get_output_tensor_by_name, pb.get_input_tensor_by_name = get_output_tensor_by_name, get_input_tensor_by_name
    return pb
