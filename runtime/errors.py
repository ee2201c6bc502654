"""Typed errors shared by the whole toolchain.

Library code raises these; the ``sed-trt`` command turns them into one-line messages
and a non-zero exit status. Every class derives from :class:`SedTrtError`.
"""

from __future__ import annotations


class SedTrtError(Exception):
    """Base class for every user-facing error of sed-trt."""


class ConfigError(SedTrtError, ValueError):
    """An unknown backbone, a malformed model config or an invalid option."""


class CheckpointError(SedTrtError, ValueError):
    """A missing, unreadable or mismatched weights file."""


class VocabularyError(SedTrtError, ValueError):
    """An empty, duplicated or unreadable class vocabulary."""


class ImageError(SedTrtError, ValueError):
    """An unreadable or non-RGB input image."""


class EngineError(SedTrtError, RuntimeError):
    """An engine directory (or engine) that is missing, corrupt, incomplete or built for something else."""


class ExportError(SedTrtError, RuntimeError):
    """Exporting graphs or building engines failed (exporter, parser check, validation, builder)."""


class InputError(SedTrtError, ValueError):
    """Arrays handed to a graph that break the I/O contract (names, dtypes, shapes)."""


class StateError(SedTrtError, RuntimeError):
    """An object used out of order (a backend before activate(), a predictor without vocabulary)."""


class BackendUnavailableError(SedTrtError, RuntimeError):
    """A backend whose packages or hardware are not present on this machine."""


class DeviceError(SedTrtError, RuntimeError):
    """A CUDA call failed (out of device memory, a lost device...)."""


class ServeError(SedTrtError, RuntimeError):
    """A server request failed: the server is unreachable or refused the request (its one-line reason)."""


class WriteError(SedTrtError, OSError):
    """A result could not be written (disk full, no permission, ...); nothing partial is left."""


class DatasetError(SedTrtError, ValueError):
    """A missing or malformed dataset on disk."""


class TrainingError(SedTrtError, RuntimeError):
    """Training diverged (a non-finite loss) or cannot continue."""


def install_hint(extra: str) -> str:
    """How to add an optional part, said the same way everywhere: sed-trt installs from its source
    tree (it is not on a package index), and each optional part is an extra of it."""
    return f"make install EXTRAS={extra} (in a sed-trt checkout; pip: pip install '.[{extra}]')"


OFFICIAL_WEIGHTS_HINT = (
    "the official SED weights (SED-B, SED-L) are published on Google Drive, linked from the README of "
    "github.com/xb534/SED; download the file and pass its local path"
)
