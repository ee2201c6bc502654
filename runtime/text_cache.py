"""Text features from a vocabulary: tokenize, encode in batches, pool synonyms, cache.

Shared by every backend: the backend supplies only ``encode(tokens) -> embeddings``.
Features are cached in memory and on disk, keyed by the text-tower fingerprint, the
templates and the exact class strings, because text encoding dominates start-up for
large vocabularies (847 classes x 80 templates x synonyms ~ 70k prompts).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sed_trt.runtime.errors import EngineError, VocabularyError
from sed_trt.runtime.fsutil import atomic_write, warn_cache_unwritable, write_npz
from sed_trt.runtime.progress import Progress
from sed_trt.runtime.tokenizer import ClipTokenizer, trim_tokens
from sed_trt.runtime.vocab import IMAGENET_TEMPLATES, build_prompts, pool_text_embeddings

EncodeFn = Callable[[np.ndarray], np.ndarray]

log = logging.getLogger("sed_trt")


class TextFeatureCache:
    """(T, P, E) float32 text features in memory and, if ``directory`` is set, on disk.

    A disk entry is ``text/KEY.npz`` holding the features and a JSON header with the key,
    the producer's identity and the sha256 of the feature bytes. An entry that cannot be
    read, or whose header, checksum, shape or values are wrong, is discarded with a
    warning and recomputed; a cache that cannot be written is a warning, never a failure.
    Writers use a temporary file and ``os.replace``, so concurrent runs are safe.

    Both stores are bounded, for servers that meet a new vocabulary with every request: at
    most ``memory_bytes`` of features in memory and ``disk_bytes`` on disk, the least
    recently used evicted first (a disk entry's use refreshes its modification time). The
    vocabulary in use is never evicted from memory, whatever its size.
    """

    FORMAT = 2

    def __init__(
        self, directory: str | Path | None = None, *, memory_bytes: int = 512 << 20, disk_bytes: int = 4 << 30
    ) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.memory_bytes = memory_bytes
        self.disk_bytes = disk_bytes
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()

    @property
    def nbytes(self) -> int:
        """Bytes of features held in memory."""
        return sum(v.nbytes for v in self._memory.values())

    def _remember(self, key: str, features: np.ndarray) -> None:
        self._memory[key] = features
        self._memory.move_to_end(key)
        while len(self._memory) > 1 and self.nbytes > self.memory_bytes:
            self._memory.popitem(last=False)

    def _evict_disk(self) -> None:
        """Delete the least recently used disk entries beyond ``disk_bytes``."""
        if self.directory is None:
            return
        entries = []
        for p in (self.directory / "text").glob("*.npz"):
            with contextlib.suppress(OSError):
                st = p.stat()
                entries.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in entries)
        for _, size, p in sorted(entries):
            if total <= self.disk_bytes:
                break
            with contextlib.suppress(OSError):
                p.unlink()
                total -= size

    @staticmethod
    def key(fingerprint: str, classes: list[str], templates: tuple[str, ...] = IMAGENET_TEMPLATES) -> str:
        """Hash of the text tower, the templates and the class strings."""
        payload = json.dumps(
            {"model": fingerprint, "templates": list(templates), "classes": classes}, ensure_ascii=False
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]

    def _path(self, key: str) -> Path | None:
        return None if self.directory is None else self.directory / "text" / f"{key}.npz"

    def _discard(self, path: Path, reason: str) -> None:
        log.warning("text-feature cache entry %s is unusable (%s): recomputing it", path, reason)
        with contextlib.suppress(OSError):
            path.unlink()

    def get(self, key: str, *, shape: tuple[int, ...] | None = None) -> np.ndarray | None:
        """The cached features for ``key`` if present and intact (and of ``shape`` when given)."""
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(str(data["header"]))
                features = np.array(data["features"])
        except Exception as exc:  # any unreadable entry (truncated zip, bad JSON, missing array)
            self._discard(path, f"unreadable: {type(exc).__name__}")
            return None
        problem = _entry_problem(header, features, key)
        if problem:
            self._discard(path, problem)
            return None
        if shape is not None and tuple(features.shape) != tuple(shape):
            # an intact entry another model may use (the key covers the text tower): kept, not served
            log.warning("text-feature cache entry %s has shape %s, expected %s: not used", path, features.shape, shape)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # used now: the last the disk eviction takes
        self._remember(key, features)
        return features

    def put(self, key: str, features: np.ndarray, *, producer: str = "") -> None:
        """Store ``features`` in memory and, if possible, on disk (failure: a warning)."""
        features = np.ascontiguousarray(features, dtype=np.float32)
        self._remember(key, features)
        path = self._path(key)
        if path is None:
            return
        header = {
            "format": self.FORMAT,
            "key": key,
            "producer": producer,
            "shape": list(features.shape),
            "sha256": _digest(features),
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda tmp: _save_entry(tmp, header, features))
            self._evict_disk()
        except OSError as exc:  # WriteError included: a full disk costs the cache entry, not the run
            warn_cache_unwritable(path.parent, exc)


def _digest(features: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(features, dtype=np.float32).tobytes()).hexdigest()


def _save_entry(tmp: str, header: dict, features: np.ndarray) -> None:
    write_npz(tmp, {"header": np.array(json.dumps(header)), "features": features}, compress=False)


def _entry_problem(header: object, features: np.ndarray, key: str) -> str:
    """Why a disk entry cannot be trusted ('' if it can)."""
    if not isinstance(header, dict) or header.get("format") != TextFeatureCache.FORMAT:
        return "unknown format"
    if header.get("key") != key:
        return "stored under another key"
    if features.dtype != np.float32 or list(features.shape) != header.get("shape"):
        return f"dtype/shape {features.dtype} {features.shape} differ from its header"
    if header.get("sha256") != _digest(features):
        return "checksum mismatch"
    if not np.isfinite(features).all():
        return "non-finite values"
    return ""


def encode_vocabulary(
    encode: EncodeFn,
    tokenizer: ClipTokenizer,
    classes: list[str],
    *,
    num_templates: int = len(IMAGENET_TEMPLATES),
    batch_size: int = 256,
    progress: bool = False,
) -> np.ndarray:
    """Text features (T, P, E) of ``classes`` with the official templates and synonym pooling."""
    templates = IMAGENET_TEMPLATES[:num_templates]
    for name in classes:  # a byte count per name first: refusing a huge name takes milliseconds
        if tokenizer.fits(name) is False:
            raise VocabularyError(
                f"class name {name[:60]!r} cannot fit CLIP's {tokenizer.context_length} tokens; shorten it"
            )
    prompts, counts = build_prompts(classes, templates)
    tokens, truncated = tokenizer.tokenize(prompts)
    if truncated:
        owner = np.repeat(np.arange(len(classes)), [len(templates) * c for c in counts])
        bad = sorted({int(owner[r]) for r in truncated})
        names = ", ".join(repr(classes[i][:60]) for i in bad[:3])
        raise VocabularyError(
            f"{len(bad)} class name(s) make prompts longer than CLIP's {tokenizer.context_length} tokens ({names}); "
            "they would be cut silently, so shorten them"
        )
    bar = Progress(len(prompts), "text encoder", enabled=progress)
    chunks = []
    for start in range(0, len(prompts), batch_size):
        batch = trim_tokens(tokens[start : start + batch_size])
        chunks.append(np.asarray(encode(batch), dtype=np.float32))
        bar.update(len(batch))
    return pool_text_embeddings(np.concatenate(chunks, axis=0), counts, num_templates)


def cached_text_features(
    encode: EncodeFn,
    tokenizer: ClipTokenizer,
    classes: list[str],
    *,
    fingerprint: str,
    cache: TextFeatureCache | None,
    num_templates: int = len(IMAGENET_TEMPLATES),
    embed_dim: int | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> np.ndarray:
    """:func:`encode_vocabulary` behind the cache; features are checked before they are stored."""
    templates = IMAGENET_TEMPLATES[:num_templates]
    key = TextFeatureCache.key(fingerprint, classes, templates)
    shape = None if embed_dim is None else (len(classes), num_templates, embed_dim)
    if cache is not None:
        hit = cache.get(key, shape=shape)
        if hit is not None:
            return hit
    feats = encode_vocabulary(
        encode, tokenizer, classes, num_templates=num_templates, batch_size=batch_size, progress=progress
    )
    if shape is not None and feats.shape != shape:
        raise EngineError(f"the text encoder returned features of shape {feats.shape}, expected {shape}")
    if not np.isfinite(feats).all():
        raise EngineError(
            "the text encoder produced non-finite features (corrupt weights or graph?); nothing was cached"
        )
    if cache is not None:
        cache.put(key, feats, producer=fingerprint)
    return feats
