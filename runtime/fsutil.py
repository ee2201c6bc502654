"""Files written and trusted safely: content hashes, atomic writes, output-path checks.

One home for what every writer needs: a result file appears complete or not at all
(temporary file in the same directory, then ``os.replace``), with the permissions the
user's umask gives any new file, and outputs are checked before any work so a run
never overwrites its own input or fails after half its files were written.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import stat
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np

from sed_trt.runtime.errors import ConfigError, WriteError

TEMP_NAME_EXTRA = 14  # atomic_write's temporary name: "." + name + ".XXXXXXXX.tmp"

log = logging.getLogger("sed_trt")
_UNWRITABLE_WARNED = threading.Event()


def default_cache_dir() -> Path:
    """sed-trt's one cache directory: ``$SED_TRT_CACHE``, else ``$XDG_CACHE_HOME/sed-trt``, else
    ``~/.cache/sed-trt``. Text features (``text/``), compiled label kernels (``numba/``) and
    OpenVINO blobs (``openvino/``) live under it; an empty variable counts as unset."""
    env = os.environ.get("SED_TRT_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "sed-trt"


def warn_cache_unwritable(path: str | Path, exc: BaseException) -> None:
    """One warning per process for a cache that cannot be written (the run goes on uncached):
    a read-only install or an unwritable HOME is one line, not one per cache or per entry."""
    if _UNWRITABLE_WARNED.is_set():
        return
    _UNWRITABLE_WARNED.set()
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    log.warning(
        "cannot write the cache at %s (%s); continuing without it (set SED_TRT_CACHE to a writable directory)",
        path,
        reason,
    )


def reset_cache_warnings() -> None:
    """Warn again (a new command-line run in the same process)."""
    _UNWRITABLE_WARNED.clear()


def writable_cache_dir(sub: str) -> Path | None:
    """``default_cache_dir() / sub``, created and checked writable; ``None`` (one warning per
    process) where it cannot be: a service account without a home, a read-only file system."""
    path = default_cache_dir() / sub
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        warn_cache_unwritable(path, exc)
        return None
    return path


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

    The file gets ``mode & ~umask`` (``mkstemp`` alone would leave 0600), the temporary file
    is removed on every failure path, interrupts included, and an operating-system failure
    (a full disk, no permission) is a :class:`WriteError` naming the file. A symbolic link to
    a regular file is written through: its target is replaced, the link kept.
    """
    target = Path(path)
    if target.is_symlink() and target.resolve().is_file():
        target = target.resolve()
    try:
        fd, tmp = tempfile.mkstemp(dir=target.resolve().parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise WriteError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode & ~current_umask())
        os.replace(tmp, target)
    except OSError as exc:
        raise WriteError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return Path(path)


def write_npz(path: str | Path, arrays: Mapping[str, np.ndarray], *, compress: bool = True) -> None:
    """numpy's .npz format written to ``path`` exactly (np.savez appends ".npz" to other names),
    with every file closed on failure (no stray traceback from a half-written archive).
    Deflate level 1: label maps and probabilities compress nearly as well as at the default
    level 6, three to four times faster (what bounds a folder run's writers)."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    level = 1 if compress else None
    with zipfile.ZipFile(path, "w", compression=method, compresslevel=level, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)


def require_regular_file(path: str | Path, what: str, error: type[Exception]) -> Path:
    """``path`` if it is an existing regular file (links followed), else ``error`` in one line:
    a FIFO or device would block or stream forever, a directory is not a file."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise error(f"{what} {str(path)!r} does not exist") from None
    except OSError as exc:
        raise error(f"{what} {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise error(f"{what} {str(path)!r} is a directory")
    if not stat.S_ISREG(mode):
        raise error(f"{what} {str(path)!r} is not a regular file (a FIFO, socket or device)")
    return p


def is_within(path: str | Path, directory: str | Path) -> bool:
    """Whether ``path`` (links resolved) lies inside ``directory``."""
    try:
        Path(path).resolve().relative_to(Path(directory).resolve())
    except ValueError:
        return False
    return True


def _same_file(a: Path, b: Path) -> bool:
    if real_path(a, str(a)) == real_path(b, str(b)):
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
        real_path(path, flag)  # a loop of links is one line
        if path.is_dir():
            raise ConfigError(f"{flag} {str(path)!r} is a directory; give a file name")
        if path.exists() and not path.is_file():
            raise ConfigError(
                f"{flag} {str(path)!r} is not a regular file (a device, FIFO or socket): results go to files only"
            )
        parent = path.resolve().parent
        if not parent.is_dir():
            raise ConfigError(f"{flag} {str(path)!r}: directory {str(parent)!r} does not exist")
        if not os.access(parent, os.W_OK):
            raise ConfigError(f"{flag} {str(path)!r}: directory {str(parent)!r} is not writable")
        name_max = _name_max(parent)
        if len(path.name.encode("utf-8", "surrogateescape")) + TEMP_NAME_EXTRA > name_max:
            raise ConfigError(
                f"{flag}: the file name is {len(path.name.encode('utf-8', 'surrogateescape'))} bytes; "
                f"at most {name_max - TEMP_NAME_EXTRA} here (it is written under a longer temporary name first)"
            )
        for src_flag, src in sources:
            if _same_file(path, src):
                raise ConfigError(
                    f"{flag} {str(path)!r} is the same file as {src_flag}: refusing to overwrite an input"
                )
        for other_flag, other in named[:i]:
            if _same_file(path, other):
                raise ConfigError(f"{flag} and {other_flag} name the same file {str(path)!r}")


def _name_max(directory: Path) -> int:
    try:
        return int(os.pathconf(directory, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def check_writable_dir(path: str | Path, flag: str) -> None:
    """Refuse, before any work, an output directory whose nearest existing ancestor is not writable."""
    p = real_path(path, flag)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} {str(path)!r} exists and is not a directory")
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{flag} {str(path)!r}: {str(probe)!r} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {str(path)!r}: {str(probe)!r} is not writable")


def real_path(path: str | Path, flag: str, error: type[Exception] = ConfigError) -> Path:
    """``path`` with its links followed (``current -> v2`` is ``v2``), or ``error`` in one line for a
    loop of links: the one place paths given by a user are resolved."""
    try:
        return Path(path).resolve(strict=False)
    except (RuntimeError, OSError) as exc:  # Python's "Symlink loop", ELOOP
        raise error(f"{flag} {str(path)!r}: cannot follow its links ({exc})") from None


@contextlib.contextmanager
def staged_directory(final: str | Path, flag: str) -> Iterator[Path]:
    """Write a new directory whole or not at all: yields a hidden sibling to fill, which replaces
    ``final`` (absent or empty) when the block ends; on any failure it is removed and ``final``
    left as it was. An operating-system failure (a full disk, no permission) is a
    :class:`WriteError` naming ``flag``'s path."""
    final = real_path(final, flag)
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise ConfigError(f"{flag} {str(final)!r} is not empty: it goes into a new or empty directory")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.staging-{os.getpid()}-"))
    except OSError as exc:
        raise WriteError(f"cannot write {flag} {str(final)!r}: {exc.strerror or exc}") from None
    try:
        yield staging
        os.chmod(staging, 0o777 & ~current_umask())
        if final.exists():
            final.rmdir()
        os.rename(staging, final)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        where = exc.filename if getattr(exc, "filename", None) else final
        raise WriteError(f"cannot write {flag} {str(final)!r} ({where}): {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
