"""``sed-trt``: a thin command line over library functions, one module per subcommand.

Every library error (:class:`sed_trt.runtime.errors.SedTrtError`) becomes one line on stderr and
exit status 2; nothing is written unless the work succeeded. Library warnings (logger
``sed_trt``) are printed as ``[sed-trt] WARNING: ...``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Any, NoReturn

import sed_trt.sed  # noqa: F401  (registers the torch backend; torch itself loads only when used)
from sed_trt import __version__
from sed_trt.cli import bench, compare, doctor, evaluate, export, predict, serve, train
from sed_trt.cli.args import HelpFormatter, StoreOnce
from sed_trt.runtime.errors import SedTrtError, install_hint
from sed_trt.runtime.fsutil import reset_cache_warnings

SUBCOMMANDS = (predict, export, compare, evaluate, train, bench, serve, doctor)

# The extra that brings each optional library: a subcommand that needs one it lacks says so in
# one line (the base install runs the ONNX Runtime path only).
EXTRA_OF_MODULE = {
    "torch": "torch",
    "torchvision": "torch",
    "open_clip": "torch",
    "onnx": "torch",
    "onnxscript": "torch",
    "openvino": "openvino",
    "tensorrt": "trt",
    "cuda": "trt",
    "polygraphy": "trt",
    "onnxconverter_common": "trt",
    "tritonclient": "serve",
    "pytriton": "serve",
    "matplotlib": "bench",
}


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line (``sed-trt predict: error: ... (see --help)``), exit status 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", None, StoreOnce)  # single-value flags refuse a repeat
        self.register("action", "store", StoreOnce)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="sed-trt", description="Fast, faithful SED open-vocabulary segmentation.", formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"sed-trt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (redirections included)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def configure_logging() -> None:
    """Library warnings as ``[sed-trt] WARNING: ...`` lines on stderr (``--quiet`` hides progress only)."""
    logger = logging.getLogger("sed_trt")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[sed-trt] %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.WARNING)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where SIGINT would be: the same cleanup (temporary files, staging directories)."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    reset_cache_warnings()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.func(args) or 0)
    except SedTrtError as exc:
        print(f"sed-trt: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print("sed-trt: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM  # 143, as a shell reports a process SIGTERM ended
    except KeyboardInterrupt:
        print("sed-trt: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(
            "sed-trt: error: out of memory (try a smaller vocabulary, --topk, or a machine with more memory)",
            file=sys.stderr,
        )
        return 2
    except ImportError as exc:
        extra = EXTRA_OF_MODULE.get((exc.name or "").split(".")[0])
        if extra is None:
            return _internal_error(exc)
        print(
            f"sed-trt: error: sed-trt {args.command} needs the {extra} extra ({exc.name} is not installed): {install_hint(extra)}",
            file=sys.stderr,
        )
        return 2
    except Exception as exc:
        return _internal_error(exc)


def debug_requested() -> bool:
    """``SED_TRT_DEBUG`` set to anything but empty, 0, false, no or off."""
    return os.environ.get("SED_TRT_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")


def _internal_error(exc: BaseException) -> int:
    """A bug: one line for the user, the traceback on request."""
    if debug_requested():
        raise exc
    first = str(exc).splitlines()[0] if str(exc) else ""
    print(
        f"sed-trt: internal error: {type(exc).__name__}: {first} (set SED_TRT_DEBUG=1 for the traceback)",
        file=sys.stderr,
    )
    return 1
