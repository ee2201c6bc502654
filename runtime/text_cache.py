"""Text features from a vocabulary: tokenize, encode in batches, pool synonyms, cache.

Shared by every backend: the backend supplies only ``encode(tokens) -> embeddings``.
Features are cached in memory and on disk, keyed by the text-tower fingerprint, the
templates and the exact class strings, because text encoding dominates start-up for
large vocabularies (847 classes x 80 templates x synonyms ~ 70k prompts).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from runtime.progress import Progress
from runtime.tokenizer import ClipTokenizer, trim_tokens
from runtime.vocab import IMAGENET_TEMPLATES, build_prompts, pool_text_embeddings

EncodeFn = Callable[[np.ndarray], np.ndarray]


def default_cache_dir() -> Path:
    """``$SED_TRT_CACHE`` or ``~/.cache/sed-trt``."""
    env = os.environ.get("SED_TRT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "sed-trt"


class TextFeatureCache:
    """(T, P, E) float32 text features in memory and, if ``directory`` is set, as .npy files."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._memory: dict[str, np.ndarray] = {}

    @staticmethod
    def key(fingerprint: str, classes: list[str], templates: tuple[str, ...] = IMAGENET_TEMPLATES) -> str:
        """Hash of the text tower, the templates and the class strings."""
        payload = json.dumps({"model": fingerprint, "templates": list(templates), "classes": classes}, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]

    def _path(self, key: str) -> Path | None:
        return None if self.directory is None else self.directory / "text" / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        if key in self._memory:
            return self._memory[key]
        path = self._path(key)
        if path is not None and path.is_file():
            try:
                arr = np.load(path)
            except (OSError, ValueError):
                return None  # a corrupt cache entry is recomputed
            self._memory[key] = arr
            return arr
        return None

    def put(self, key: str, features: np.ndarray) -> None:
        self._memory[key] = features
        path = self._path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write atomically so an interrupted run never leaves a truncated entry.
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.save(f, features)
        os.replace(tmp, path)


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
    prompts, counts = build_prompts(classes, templates)
    tokens = tokenizer(prompts)
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
    batch_size: int = 256,
    progress: bool = False,
) -> np.ndarray:
    """:func:`encode_vocabulary` behind the cache."""
    key = TextFeatureCache.key(fingerprint, classes, IMAGENET_TEMPLATES[:num_templates])
    if cache is not None:
        hit = cache.get(key)
        if hit is not None:
            return hit
    feats = encode_vocabulary(encode, tokenizer, classes, num_templates=num_templates, batch_size=batch_size, progress=progress)
    if cache is not None:
        cache.put(key, feats)
    return feats
