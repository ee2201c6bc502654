"""What ``--image`` names, expanded into inputs with their output names.

An argument is a file, a quoted glob (``'photos/**/*.jpg'``), a directory (its images,
recursively, sorted) or ``@list.txt`` (one path per line, relative to the list's folder).
Each input gets an output stem relative to the directory, glob root or list folder it came
from (``DIR/sub/a.jpg`` -> ``sub/a``), so ``--out-dir OUT`` mirrors the input tree. Two inputs
that would write the same output are refused before any work.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from sed_trt.runtime.errors import ConfigError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ts"})
MAX_LIST_BYTES = 64 << 20


@dataclass(frozen=True)
class InputFile:
    """One input file and its output stem (``sub/photo``); ``video`` for a video file."""

    path: Path
    name: str
    video: bool = False


def _is_pattern(arg: str) -> bool:
    """A glob to expand (a file whose name merely holds a wildcard is a file)."""
    return glob.has_magic(arg) and not Path(arg).exists()


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _stem(path: Path, root: Path | None) -> str:
    """``path`` relative to ``root`` without its suffix (the file's name alone outside it)."""
    if root is not None:
        try:
            rel = path.resolve().relative_to(root.resolve())
            return rel.with_suffix("").as_posix()
        except ValueError:
            pass
    return path.stem


def _walk(directory: Path) -> list[Path]:
    """Images and videos under ``directory``, recursively, sorted; symlink loops are not followed."""
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:  # a link back up the tree
            dirnames.clear()
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames.sort()
        for name in filenames:
            p = Path(dirpath) / name
            if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES and not name.startswith("."):
                found.append(p)
    return sorted(found)


def _glob_root(pattern: str) -> Path:
    """The folder before the first wildcard of ``pattern``."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _read_list(arg: str) -> tuple[list[str], Path]:
    path = Path(arg[1:])
    try:
        if path.stat().st_size > MAX_LIST_BYTES:
            raise ConfigError(f"--image {arg}: the list is larger than {MAX_LIST_BYTES >> 20} MB")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--image {arg}: cannot read the list ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--image {arg}: the list is not UTF-8 text") from None
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("#")], path.parent


def expand_inputs(args: list[str]) -> list[InputFile]:
    """The inputs ``--image`` arguments name, in order (a directory's or a glob's sorted).

    A missing file is kept (it fails alone, as one line, when read); a directory, a glob or a
    list that names nothing is a :class:`ConfigError`, as are two inputs with one output name.
    """
    out: list[InputFile] = []
    for arg in args:
        if arg.startswith("@") and len(arg) > 1:
            entries, base = _read_list(arg)
            for entry in entries:
                p = Path(entry) if Path(entry).is_absolute() else base / entry
                out.append(InputFile(p, _stem(p, base), is_video(p)))
            continue
        path = Path(arg)
        if path.is_dir():
            files = _walk(path)
            if not files:
                raise ConfigError(f"--image {arg}: the directory holds no image or video")
            out += [InputFile(p, _stem(p, path), is_video(p)) for p in files]
        elif _is_pattern(arg):
            root = _glob_root(arg)
            files = sorted(Path(p) for p in glob.glob(arg, recursive=True) if Path(p).is_file())
            if not files:
                raise ConfigError(f"--image {arg!r}: the pattern matches no file")
            out += [InputFile(p, _stem(p, root), is_video(p)) for p in files]
        else:
            out.append(InputFile(path, path.stem, is_video(path)))
    names: dict[str, Path] = {}
    for item in out:
        if item.name in names and names[item.name] != item.path:
            raise ConfigError(
                f"--image: {str(names[item.name])!r} and {str(item.path)!r} would write the same outputs ({item.name}.*); "
                "give them from one directory or glob root"
            )
        names[item.name] = item.path
    return out


def is_many(args: list[str]) -> bool:
    """Whether ``--image`` names a set of inputs (several, a directory, a glob, a list or a video)
    rather than one photo (which keeps ``--out`` / ``--save-npz``)."""
    if len(args) != 1:
        return True
    arg = args[0]
    return arg.startswith("@") or Path(arg).is_dir() or _is_pattern(arg) or is_video(arg)
