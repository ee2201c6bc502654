"""The official parity vector, as the tests read it: trimmed, and the same trim for what they compute.

The full vector (``../shared/parity/sed_tiny_linear``: official outputs of the tiny model) is
50 MB; the repository carries ``tests/data/parity/sed_tiny_linear``, made from it by
``python -m tests.make_parity_data``: every array the tests compare, subsampled where a
map is large (every 2nd pixel of the 192x192 maps, every 4th of the 768x768 canvas...), and
the checkpoint with only the token-embedding rows the parity prompts use (the others are
regenerated from a fixed seed: no parity output reads them). Tests compare ``trim(name, x)``
of what they compute with ``expected[name]``, so either vector works (``SED_PARITY_DIR``).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

EVERY = slice(None)
# name (or prefix) -> the index that trims an array of that name
TRIMS: dict[str, tuple[slice, ...]] = {
    "canvas": (EVERY, slice(None, None, 4), slice(None, None, 4)),
    "res4": (slice(None, None, 4),),
    "res5": (slice(None, None, 4),),
    "cost_map": (slice(None, None, 8),),
    "logits_pool": (EVERY, slice(None, None, 2), slice(None, None, 2)),
    "aux_96": (EVERY, slice(None, None, 2), slice(None, None, 2)),
    "cer_k": (EVERY, slice(None, None, 2), slice(None, None, 2)),  # cer_k{k}_probs
}
TOKEN_KEY = "sem_seg_head.predictor.clip_model.token_embedding.weight"
TOKEN_SEED = 20261204


def trim(name: str, array: np.ndarray) -> np.ndarray:
    """``array`` as the vendored vector stores ``name`` (probability maps of any backend included)."""
    array = np.asarray(array)
    if name.endswith("labels") or name.endswith("_labels") or name.startswith("labels"):
        return array
    for key, index in TRIMS.items():
        if name.startswith(key) and not name.endswith("_kept") and not name.endswith("_labels"):
            return array[index]
    return array


def load_expected(directory: Path) -> dict[str, np.ndarray]:
    """The expected arrays of a vector directory, trimmed (a trimmed vector is returned as is)."""
    meta = json.loads((directory / "meta.json").read_text())
    with np.load(directory / "expected.npz") as data:
        expected = {k: data[k] for k in data.files}
    if meta.get("trimmed"):
        return expected
    return {k: trim(k, v) for k, v in expected.items()}


def write_checkpoint(directory: Path, out: Path) -> Path:
    """The checkpoint of a vector directory as a .pth file at ``out`` (rebuilt from a trimmed
    vector's ``checkpoint.npz``; a full vector's ``checkpoint.pth`` is used where it lies)."""
    if (directory / "checkpoint.pth").is_file():
        return directory / "checkpoint.pth"
    import torch

    with np.load(directory / "checkpoint.npz") as data:
        state = {k: data[k] for k in data.files}
    rows, values = state.pop("__token_rows__"), state.pop("__token_values__")
    shape = tuple(state.pop("__token_shape__"))
    fill = np.random.default_rng(TOKEN_SEED).normal(0.0, float(values.std()), shape).astype(np.float32)
    fill[rows] = values
    state[TOKEN_KEY] = fill
    order = json.loads(str(state.pop("__order__")))
    torch.save({"model": {k: torch.from_numpy(np.array(state[k], order="C")) for k in order}, "iteration": 0}, out)
    return out


def npz_size(path: Path) -> int:
    with zipfile.ZipFile(path) as z:
        return sum(i.compress_size for i in z.infolist())
