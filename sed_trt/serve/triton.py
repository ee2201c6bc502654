"""``sed-trt serve``: :class:`SegmentationService` instances behind a real NVIDIA Triton server.

PyTriton starts the tritonserver it bundles (HTTP, gRPC, Prometheus metrics, the KServe v2
protocol, dynamic batching) and routes each batch to one of the model instances. Handled
pitfalls: the interpreter's libpython must come first on LD_LIBRARY_PATH for Triton's Python
backend stub when Python is not the system one (set here for the child process); every
server needs its own ports (checked free before start); the workspace must not exist
beforehand (a fresh temporary one unless given); big images need /dev/shm (Triton passes
tensors through shared memory: its free space is checked and logged). The server reports
ready only once every instance has loaded its engines and run a warm-up prediction. SIGTERM
and SIGINT stop it gracefully: Triton finishes in-flight requests, then exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import sysconfig
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import BackendUnavailableError, ConfigError
from sed_trt.serve.service import INPUTS, MODEL_NAME, OUTPUTS, SegmentationService

log = logging.getLogger("sed_trt")


@dataclass(frozen=True)
class ServerConfig:
    """Ports, batching and instances of one server."""

    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = 4
    queue_delay_us: int = 2000  # how long Triton waits to grow a batch
    instances: int = 1
    workspace: str | None = None
    exit_timeout_s: int = 30  # in-flight requests get this long on shutdown


def import_pytriton() -> Any:
    try:
        import pytriton.triton as pt
    except ImportError:
        raise BackendUnavailableError("serving needs PyTriton: pip install 'sed-trt[serve]'") from None
    return pt


def prepare_environment() -> None:
    """Put this interpreter's libpython first on LD_LIBRARY_PATH (Triton's Python stub loads it)."""
    libdir = sysconfig.get_config_var("LIBDIR")
    current = os.environ.get("LD_LIBRARY_PATH", "")
    if libdir and not current.startswith(libdir):
        os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{current}" if current else libdir


def check_ports(config: ServerConfig) -> None:
    """Refuse ports that are taken (Triton would fail later with a long log)."""
    ports = (config.http_port, config.grpc_port, config.metrics_port)
    if len(set(ports)) != 3:
        raise ConfigError(f"--http-port, --grpc-port and --metrics-port must differ, got {ports}")
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                raise ConfigError(
                    f"port {port} is in use: choose other --http-port/--grpc-port/--metrics-port"
                ) from None


def check_shm(min_free_mb: int = 256) -> None:
    """Warn when /dev/shm is small (Docker's default is 64 MB): Triton moves tensors through it."""
    with contextlib.suppress(OSError):
        free = shutil.disk_usage("/dev/shm").free / 2**20
        if free < min_free_mb:
            log.warning("/dev/shm has %.0f MB free: large images may fail (docker run --shm-size=1g)", free)


def _tensors(defs: Sequence[Any], tensor_cls: Any) -> list[Any]:
    return [tensor_cls(name=d.name, dtype=d.dtype, shape=d.shape, optional=d.optional) for d in defs]


def serve(make_service: Callable[[], SegmentationService], config: ServerConfig) -> None:
    """Build ``config.instances`` services (each loads and warms up its backend), then serve until stopped."""
    pt = import_pytriton()
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    if config.workspace and Path(config.workspace).exists():
        raise ConfigError(f"--workspace {config.workspace!r} exists: PyTriton needs a path it can create")
    check_ports(config)
    check_shm()
    prepare_environment()
    services = []
    for i in range(config.instances):
        log.info("loading and warming up instance %d/%d", i + 1, config.instances)
        service = make_service()
        service.warm_up()
        services.append(service)
    triton_config = pt.TritonConfig(
        http_port=config.http_port,
        grpc_port=config.grpc_port,
        metrics_port=config.metrics_port,
        exit_timeout_secs=config.exit_timeout_s,
    )
    with pt.Triton(config=triton_config, workspace=config.workspace) as triton:
        triton.bind(
            model_name=MODEL_NAME,
            infer_func=services if len(services) > 1 else services[0],
            inputs=_tensors(INPUTS, Tensor),
            outputs=_tensors(OUTPUTS, Tensor),
            config=ModelConfig(
                max_batch_size=config.max_batch,
                batcher=DynamicBatcher(max_queue_delay_microseconds=config.queue_delay_us),
            ),
            strict=True,
        )

        def stop(signum: int, frame: object) -> None:
            log.info("signal %d: finishing in-flight requests, then stopping", signum)
            triton.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        print(
            f"serving model {MODEL_NAME!r} with {config.instances} instance(s): http :{config.http_port}, "
            f"grpc :{config.grpc_port}, metrics :{config.metrics_port}/metrics",
            flush=True,
        )
        triton.serve()
    print("server stopped", flush=True)
