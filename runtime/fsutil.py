"""Files written and trusted safely: content hashes, atomic writes, output-path checks.

One home for what every writer needs: a result file appears complete or not at all
(temporary file in the same directory, then ``os.replace``), with the permissions the
user's umask gives any new file, and outputs are checked before any work so a run
never overwrites its own input or fails after half its files were written.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from runtime.errors import ConfigError


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """Content hash (hex sha256) of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def current_umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], object], *, mode: int = 0o666) -> Path:
    """Call ``write(tmp_path)``, then rename the temporary file over ``path``.

    The file gets ``mode & ~umask`` (``mkstemp`` alone would leave 0600), and the temporary
    file is removed on every failure path, interrupts included.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.resolve().parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode & ~current_umask())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def is_within(path: str | Path, directory: str | Path) -> bool:
    """Whether ``path`` (links resolved) lies inside ``directory``."""
    try:
        Path(path).resolve().relative_to(Path(directory).resolve())
    except ValueError:
        return False
    return True


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(
    outputs: Mapping[str, str | Path | None], inputs: Mapping[str, str | Path | None] | None = None
) -> None:
    """Refuse, before any work, outputs that cannot be written or would clobber something.

    ``outputs`` and ``inputs`` map a flag (for the message) to a path or None. An output
    must not be a directory, must not be any input (a run must never overwrite what it
    reads) or another output, and its directory must exist and be writable.
    """
    named = [(flag, Path(p)) for flag, p in outputs.items() if p is not None]
    sources = [(flag, Path(p)) for flag, p in (inputs or {}).items() if p is not None]
    for i, (flag, path) in enumerate(named):
        if path.is_dir():
            raise ConfigError(f"{flag} {str(path)!r} is a directory; give a file name")
        parent = path.resolve().parent
        if not parent.is_dir():
            raise ConfigError(f"{flag} {str(path)!r}: directory {str(parent)!r} does not exist")
        if not os.access(parent, os.W_OK):
            raise ConfigError(f"{flag} {str(path)!r}: directory {str(parent)!r} is not writable")
        for src_flag, src in sources:
            if _same_file(path, src):
                raise ConfigError(
                    f"{flag} {str(path)!r} is the same file as {src_flag}: refusing to overwrite an input"
                )
        for other_flag, other in named[:i]:
            if _same_file(path, other):
                raise ConfigError(f"{flag} and {other_flag} name the same file {str(path)!r}")


def check_writable_dir(path: str | Path, flag: str) -> None:
    """Refuse, before any work, an output directory whose nearest existing ancestor is not writable."""
    p = Path(path).resolve()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} {str(path)!r} exists and is not a directory")
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{flag} {str(path)!r}: {str(probe)!r} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {str(path)!r}: {str(probe)!r} is not writable")
