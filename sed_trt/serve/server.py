"""Run a model repository in ``tritonserver``: the one on PATH (NVIDIA's container), else the
binary that PyTriton's wheel bundles with its Python backend.

Handled pitfalls: the bundled binary needs its Python-backend stub for this interpreter in
the backend directory and this interpreter's libpython and the wheel's libraries on
LD_LIBRARY_PATH (set for the child only); every server needs its own ports (checked free
before start; several servers run side by side); readiness is strict (models load, and the
``sed`` model warms up, before ``/v2/health/ready`` answers 200); the child gets SIGTERM if
this process dies. On SIGTERM or SIGINT the server drains: Triton stops taking connections
and finishes what it is executing, and as soon as the ``sed`` instances report nothing in
flight the server is stopped (Triton alone would wait for idle keep-alive connections until
its exit timeout). The backend directory copy is removed on every exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from sed_trt.runtime.errors import BackendUnavailableError, ConfigError, ServeError, install_hint
from sed_trt.serve.triton_model import STATE_DIR_ENV

log = logging.getLogger("sed_trt")
IDLE_GRACE_S = 5.0  # after the last request in flight, before a stop stops waiting for idle connections


@dataclass(frozen=True)
class ServerConfig:
    """Ports and shutdown of one server."""

    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    exit_timeout_s: int = 60  # the longest a stop waits for requests in flight
    ready_timeout_s: int = 900  # the longest start-up (loading and warming up every instance)


def check_ports(config: ServerConfig) -> None:
    """Refuse ports that are taken or repeated (Triton would fail later with a long log)."""
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
    """Warn when /dev/shm is small (Docker's default is 64 MB): the Python backend passes tensors through it."""
    with contextlib.suppress(OSError):
        free = shutil.disk_usage("/dev/shm").free / 2**20
        if free < min_free_mb:
            log.warning("/dev/shm has %.0f MB free: large images may fail (docker run --shm-size=1g)", free)


def find_tritonserver(state_dir: Path) -> tuple[list[str], dict[str, str]]:
    """The command prefix and environment that start Triton with a working Python backend."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])  # the Python stub must import sed_trt
    env["PYTHONPATH"] = f"{package_root}:{env['PYTHONPATH']}" if env.get("PYTHONPATH") else package_root
    env[STATE_DIR_ENV] = str(state_dir)
    on_path = shutil.which("tritonserver")
    if on_path:  # NVIDIA's container: its own backends
        return [on_path], env
    try:
        from pytriton.utils.distribution import get_libs_path, get_root_module_path, get_stub_path
    except ImportError:
        raise BackendUnavailableError(
            f"no tritonserver: run in NVIDIA's Triton container, or {install_hint('serve')} (PyTriton's wheel bundles one)"
        ) from None
    dist = get_root_module_path() / "tritonserver"
    backends = state_dir / "backends"
    shutil.copytree(dist / "backends", backends)
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    try:
        shutil.copy(get_stub_path(version), backends / "python" / "triton_python_backend_stub")
    except Exception:
        raise BackendUnavailableError(f"PyTriton's wheel has no Python-backend stub for Python {version}") from None
    libs = [sysconfig.get_config_var("LIBDIR") or "", str(get_libs_path())]
    env["LD_LIBRARY_PATH"] = ":".join([*(p for p in libs if p), env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"  # the stub finds this environment's Python
    return [str(dist / "bin" / "tritonserver"), f"--backend-directory={backends}"], env


def tritonserver_probe() -> str:
    """Which tritonserver ``sed-trt serve`` would start (doctor's line), without starting it."""
    on_path = shutil.which("tritonserver")
    if on_path:
        return f"{on_path} (on PATH)"
    try:
        from pytriton.utils.distribution import get_root_module_path
    except ImportError:
        raise BackendUnavailableError(
            f"no tritonserver on PATH and no PyTriton: run in NVIDIA's Triton container, or {install_hint('serve')}"
        ) from None
    binary = get_root_module_path() / "tritonserver" / "bin" / "tritonserver"
    if not binary.is_file():
        raise BackendUnavailableError(f"PyTriton is installed but its tritonserver binary is missing ({binary})")
    return f"{binary} (PyTriton {metadata.version('nvidia-pytriton')})"


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):  # Linux: SIGTERM to the child when this process dies
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)


STATE_PREFIX = "sed-trt-serve-"  # + pid + "-": the state directory of one `sed-trt serve` process
SHM_PREFIX = "sed-trt-"  # + pid + "-": the Python backend's shared-memory regions of its Triton
SHM_DIR = Path("/dev/shm")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep_stale(temp_dir: Path | None = None, shm_dir: Path = SHM_DIR) -> list[Path]:
    """Remove what killed servers left (SIGKILL runs no clean-up): state directories and the
    Python backend's shared-memory regions named after a process that no longer exists. Returns
    what it removed. A live server's (or another user's) files are never touched."""
    removed = []
    for folder, prefix in ((Path(temp_dir or tempfile.gettempdir()), STATE_PREFIX), (shm_dir, SHM_PREFIX)):
        with contextlib.suppress(OSError):
            for path in folder.glob(f"{prefix}*-*"):
                pid = path.name[len(prefix) :].split("-", 1)[0]
                if not pid.isdigit() or _alive(int(pid)):
                    continue
                with contextlib.suppress(OSError):
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
                    removed.append(path)
    if removed:
        log.info("removed %d files of servers that were killed: %s", len(removed), ", ".join(p.name for p in removed))
    return removed


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
            return r.status == 200
    except Exception:
        return False


def in_flight(state_dir: Path) -> int | None:
    """Requests the ``sed`` instances are executing (None: no instance reports)."""
    counts = []
    for path in state_dir.glob("inflight.*"):
        with contextlib.suppress(OSError, ValueError):
            counts.append(int(path.read_text() or 0))
    return sum(counts) if counts else None


def serve_repository(repository: str | Path, config: ServerConfig, *, on_ready: str | None = None) -> int:
    """Serve ``repository`` until SIGTERM/SIGINT; returns Triton's exit status (0 after a clean drain)."""
    from sed_trt.serve.repository import check_repository

    repository = Path(repository)
    check_repository(repository)  # what would make the stub fail to start: one line now, not a wait
    check_ports(config)
    check_shm()
    sweep_stale()
    state_dir = Path(tempfile.mkdtemp(prefix=f"{STATE_PREFIX}{os.getpid()}-"))
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    proc: subprocess.Popen | None = None
    try:
        prefix, env = find_tritonserver(state_dir)
        cmd = [
            *prefix,
            f"--model-repository={repository.resolve()}",
            f"--http-port={config.http_port}",
            f"--grpc-port={config.grpc_port}",
            f"--metrics-port={config.metrics_port}",
            f"--exit-timeout-secs={config.exit_timeout_s}",
            "--strict-readiness=true",
            "--model-control-mode=none",
            # Regions named after this process, so the next server removes them if this one is killed
            f"--backend-config=python,shm-region-prefix-name={SHM_PREFIX}{os.getpid()}-",
        ]
        proc = subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent)
        start = time.monotonic()
        while not ready(config.http_port):
            if proc.poll() is not None:
                raise ServeError(f"tritonserver exited with status {proc.returncode} while loading (see its log above)")
            if stop.is_set():
                return _drain(proc, state_dir, config)
            if time.monotonic() - start > config.ready_timeout_s:
                raise ServeError(f"the server was not ready after {config.ready_timeout_s} s")
            time.sleep(0.25)
        print(
            on_ready
            or f"serving {repository} on http :{config.http_port}, grpc :{config.grpc_port}, metrics :{config.metrics_port}/metrics",
            flush=True,
        )
        while proc.poll() is None and not stop.is_set():
            stop.wait(0.5)
        if proc.poll() is not None:
            raise ServeError(f"tritonserver exited with status {proc.returncode}")
        return _drain(proc, state_dir, config)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(state_dir, ignore_errors=True)


def _drain(proc: subprocess.Popen, state_dir: Path, config: ServerConfig) -> int:
    """Stop Triton once what it is executing is done (at most ``exit_timeout_s``)."""
    log.info("stopping: finishing the requests in flight")
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + config.exit_timeout_s
    idle_since: float | None = None
    while proc.poll() is None and time.monotonic() < deadline:
        busy = in_flight(state_dir)
        if busy == 0:
            idle_since = idle_since or time.monotonic()
            # Nothing in flight for a while: the responses are out. Triton gets a few seconds to
            # unload the models itself; past them only idle keep-alive connections hold it.
            if time.monotonic() - idle_since >= IDLE_GRACE_S:
                proc.kill()
                break
        else:
            idle_since = None
        time.sleep(0.1)
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    print("server stopped", flush=True)
    return 0
