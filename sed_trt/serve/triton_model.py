"""The ``sed`` model of a Triton model repository: Triton's Python backend runs this class.

A repository written by ``sed-trt triton-repo`` holds ``sed/1/model.py``, which imports it,
and ``sed/settings.json`` (what to open: backend label, engine directory or checkpoint,
precision, CER default, cache sizes). ``initialize`` opens the backend on the instance's
device, sets up the service and runs one warm-up prediction, so Triton marks the model
ready (and, with strict readiness, the server) only once it answers. ``execute`` turns
Triton's requests into :class:`~sed_trt.serve.service.SegmentationService` requests and its
rows back into responses; every failure is an ``error`` output of one line.

The instance counts the requests it is executing in ``$SED_TRT_STATE_DIR/inflight.PID``,
so ``sed-trt serve`` can stop Triton as soon as they are done (Triton itself waits for idle
keep-alive connections until its exit timeout).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

STATE_DIR_ENV = "SED_TRT_STATE_DIR"


def _pb_utils() -> Any:
    import triton_python_backend_utils as pb_utils  # provided by Triton's Python backend

    return pb_utils


def open_service(settings: dict[str, Any], device: str) -> Any:
    """The service a settings file (a :class:`~sed_trt.runtime.deployment.Deployment` as JSON)
    describes, on ``device`` (warmed up)."""
    import sed_trt.sed  # noqa: F401  (registers the torch backend)
    from sed_trt.runtime.deployment import Deployment
    from sed_trt.serve.repository import BLS_LABEL
    from sed_trt.serve.service import SegmentationService

    deployment = Deployment.from_dict(settings).replace(device=device)
    if deployment.backend == BLS_LABEL:  # the bls form: each graph its own plan model
        from sed_trt.runtime.errors import ConfigError
        from sed_trt.serve.bls import TritonBLSBackend

        if deployment.engine_dir is None:
            raise ConfigError(f"settings: backend {BLS_LABEL} needs engine_dir")
        backend = TritonBLSBackend(deployment.engine_dir)
    else:
        backend = deployment.open_backend()
    service = SegmentationService(
        backend,
        topk=deployment.topk,
        cache=deployment.text_cache(),
        class_chunk=deployment.class_chunk,
        max_batch=deployment.batch_size or 1,
        max_pixels=deployment.max_pixels,
    )
    if deployment.backend != BLS_LABEL:  # BLS runs only inside execute: the bls form warms up on its first request
        service.warm_up()
    return service


class InFlight:
    """The number of requests this instance is executing, in a file the launcher reads."""

    def __init__(self) -> None:
        directory = os.environ.get(STATE_DIR_ENV)
        self.path = Path(directory) / f"inflight.{os.getpid()}" if directory else None
        self.count = 0
        self._write()

    def _write(self) -> None:
        if self.path is not None:
            tmp = self.path.parent / f".{self.path.name}.tmp"  # this instance's own (inflight.PID)
            tmp.write_text(str(self.count))
            os.replace(tmp, self.path)

    def __enter__(self) -> InFlight:
        self.count += 1
        self._write()
        return self

    def __exit__(self, *exc: object) -> None:
        self.count -= 1
        self._write()


class TritonPythonModel:
    """Triton's Python-backend model interface over :class:`SegmentationService`."""

    def initialize(self, args: dict[str, Any]) -> None:
        from sed_trt.runtime.errors import SedTrtError

        config = json.loads(args["model_config"])
        settings_path = Path(config["parameters"]["settings"]["string_value"])
        if not settings_path.is_absolute():
            settings_path = Path(args["model_repository"]) / settings_path
        from sed_trt.runtime.jsonutil import read_json

        try:
            settings = read_json(settings_path, what=f"settings {str(settings_path)!r}", max_bytes=1 << 20)
        except SedTrtError as exc:
            raise RuntimeError(f"sed-trt: {exc}") from None
        device = "cpu"
        if args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args.get('model_instance_device_id', 0)}"
        try:
            self.service = open_service(settings, device)
        except SedTrtError as exc:  # Triton prints this; one line, what to fix
            raise RuntimeError(f"sed-trt: {exc}") from None
        self.inflight = InFlight()

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = _pb_utils()
        from sed_trt.serve.service import INPUTS

        with self.inflight:
            batch = []
            for request in requests:
                feeds: dict[str, Any] = {}
                for t in INPUTS:
                    tensor = pb.get_input_tensor_by_name(request, t.name)
                    feeds[t.name] = None if tensor is None else tensor.as_numpy()
                batch.append(feeds)
            results = self.service(batch)
            return [
                pb.InferenceResponse(
                    output_tensors=[pb.Tensor(name, _contiguous(value)) for name, value in out.items()]
                )
                for out in results
            ]

    def finalize(self) -> None:
        service = getattr(self, "service", None)
        if service is not None:
            service.backend.deactivate()
        inflight = getattr(self, "inflight", None)
        if inflight is not None and inflight.path is not None:
            inflight.path.unlink(missing_ok=True)


def _contiguous(value: np.ndarray) -> np.ndarray:
    return value if value.dtype == object else np.ascontiguousarray(value)
