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
    """The service a settings file describes, on ``device`` (warmed up)."""
    import sed  # noqa: F401  (registers the torch backend)
    from runtime.backends import BackendRequest, open_backend
    from runtime.text_cache import TextFeatureCache
    from sed_trt.serve.service import SegmentationService

    backbone: Any = settings.get("backbone")
    if backbone is not None and settings.get("image_size"):
        import dataclasses

        from sed.config import load_config

        backbone = dataclasses.replace(load_config(backbone), image_size=int(settings["image_size"]))
    request = BackendRequest(
        engine_dir=settings.get("engine_dir"),
        backbone=backbone,
        weights=settings.get("weights"),
        device=device,
        precision=settings.get("precision", "fp32"),
        threads=settings.get("threads"),
        options=settings.get("options", {}),
    )
    if settings["backend"] == "triton-bls":  # the bls form: each graph its own plan model
        from sed_trt.serve.bls import TritonBLSBackend

        backend = TritonBLSBackend(settings["engine_dir"])
    else:
        backend = open_backend(settings["backend"], request)
    cache_dir = settings.get("cache_dir")
    cache = TextFeatureCache(
        cache_dir,
        memory_bytes=int(settings.get("cache_memory_mb", 512)) << 20,
        disk_bytes=int(settings.get("cache_disk_mb", 4096)) << 20,
    )
    service = SegmentationService(
        backend,
        topk=settings.get("topk"),
        cache=cache,
        class_chunk=settings.get("class_chunk"),
        max_batch=int(settings.get("max_batch", 1)),
    )
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
            tmp = self.path.with_suffix(".tmp")
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
        from runtime.errors import SedTrtError

        config = json.loads(args["model_config"])
        settings_path = Path(config["parameters"]["settings"]["string_value"])
        if not settings_path.is_absolute():
            settings_path = Path(args["model_repository"]) / settings_path
        settings = json.loads(settings_path.read_text())
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
