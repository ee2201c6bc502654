"""A toy backend plug-in: one module with a SPEC and a class, registered by the tests alone.

It runs the exported graphs through ONNX Runtime under another name, with an option of its
own (``--toy-level``), and records every backend it builds, so the tests can see that each
tool opened it through the registry.
"""

from __future__ import annotations

from typing import Any

from sed_trt.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from sed_trt.runtime.backends.registry import BackendSpec, Option

SPEC = BackendSpec(
    name="toy",
    cls="ToyBackend",
    summary="ONNX Runtime under another name (tests only)",
    loads="engine_dir",
    placement="cpu",
    options=(Option("level", "--toy-level", "toy: a number it records", kind="value", type=int),),
    probe="probe",
)
BUILT: list[ToyBackend] = []


def probe() -> str:
    return "toy 1.0, always ready"


class ToyBackend(OnnxRuntimeBackend):
    name = "toy"

    def __init__(self, engine_dir: Any, *, level: int = 0, **kwargs: Any) -> None:
        super().__init__(engine_dir, **kwargs)
        self.level = level
        BUILT.append(self)

    @property
    def label(self) -> str:
        return SPEC.label(self.graph_precision)
