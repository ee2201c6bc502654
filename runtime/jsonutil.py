"""The one JSON reader for every file the project reads: bounded in size and in depth.

A vocabulary file, a manifest, a deployment (the Triton model's ``settings.json``), a model
config: a hostile or damaged file is refused in one line (:class:`ConfigError`) before it costs
memory (a 2 GB manifest is not read whole) or a ``RecursionError`` (deeply nested arrays).
Special files (a FIFO, ``/dev/zero``) are refused before they are opened for reading.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from sed_trt.runtime.errors import ConfigError, SedTrtError

MAX_JSON_BYTES = 64 << 20  # the largest JSON file the project reads (ADE-847's vocabulary is 15 kB)
MAX_JSON_DEPTH = 64  # the deepest nesting any of its formats has is 4


def _depth(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON text (brackets inside strings ignored)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def loads_bounded(
    text: str, *, what: str, max_depth: int = MAX_JSON_DEPTH, error: type[SedTrtError] = ConfigError
) -> Any:
    """``json.loads`` that refuses nesting deeper than ``max_depth`` in one line naming ``what``."""
    if text.count("[") + text.count("{") > max_depth and _depth(text) > max_depth:
        raise error(f"cannot read {what}: JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except RecursionError:
        raise error(f"cannot read {what}: JSON nested too deeply") from None
    except ValueError as exc:
        raise error(f"cannot read {what}: not valid JSON ({exc})") from None


def read_json(
    path: str | Path,
    *,
    what: str | None = None,
    max_bytes: int = MAX_JSON_BYTES,
    error: type[SedTrtError] = ConfigError,
) -> Any:
    """Read a JSON file: a regular file of at most ``max_bytes``, UTF-8, bounded in depth (else ``error``)."""
    path = Path(path)
    what = what or str(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise error(f"cannot read {what}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"cannot read {what}: not a regular file")
    if st.st_size > max_bytes:
        raise error(f"cannot read {what}: {st.st_size} bytes, more than the {max_bytes} a JSON file may have here")
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"cannot read {what}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:  # grew since the stat
        raise error(f"cannot read {what}: more than the {max_bytes} bytes a JSON file may have here")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"cannot read {what}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return loads_bounded(text, what=what, error=error)
