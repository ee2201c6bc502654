"""CER, category early rejection: which classes go on to the next decoder stage.

The official rule, in one place for the model and every backend: keep the classes that are
in the per-pixel top-k of some pixel of some image (union over pixels and the batch); with
no k, or k >= T, keep them all. A class is in a pixel's top-k when its logit reaches that
pixel's k-th largest: classes tied with the k-th are all kept (the official argsort leaves
the choice among ties unspecified; this makes it deterministic and the same on every
backend). Device backends run the same rule as a graph (``sed_trt.sed.graphs.cer_keep``).
"""

from __future__ import annotations

import numpy as np

from sed_trt.runtime.errors import ConfigError

# The largest CER k: the CER graphs take the k-th largest logit from a TopK of at most this many
# classes (TensorRT caps TopK's K at 3840; SED's own setting is 8). One limit for every backend.
MAX_CER_TOPK = 256


def check_topk(topk: int | None) -> None:
    """CER's k: None (no rejection) or 1..MAX_CER_TOPK, else one line."""
    if topk is not None and not 1 <= topk <= MAX_CER_TOPK:
        raise ConfigError(f"--topk {topk}: CER keeps the classes of each pixel's top-k for k from 1 to {MAX_CER_TOPK}")


def keeps_all(topk: int | None, num_classes: int) -> bool:
    """Whether the rule keeps every class (no rejection asked for, or k >= T)."""
    return topk is None or topk >= num_classes


def topk_union(logits: np.ndarray, k: int) -> np.ndarray:
    """Sorted indices of the classes in some pixel's top-k of (B, T, H, W) logits (numpy)."""
    kth = -np.partition(-logits, k - 1, axis=1)[:, k - 1 : k]  # B 1 H W, the k-th largest
    return np.flatnonzero((logits >= kth).any(axis=(0, 2, 3)))
