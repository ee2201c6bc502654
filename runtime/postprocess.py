"""Labels from probabilities on the host: bilinear resize + argmax, evaluated only where it decides.

The official post-processing resizes every class map (T, h, w) to the photo (H0, W0) with
bilinear interpolation (align_corners=False) and takes the argmax over T: T x H0 x W0 work
and a (T, H0, W0) array. Here a compiled kernel (numba) labels the photo cell by cell of the
low-resolution grid, with the same arithmetic as torch's bilinear kernel and ties to the
lowest class, as argmax does:

- *Candidates.* An output pixel is a convex combination of the 4 corners of its cell, so a
  class whose largest corner is below the largest smallest-corner of any class can never
  win there. A cell with one candidate is labelled without arithmetic.
- *Runs.* Along an output row inside one cell, every class's value is linear in the column
  weight, so the winner at both ends of a run of pixels wins the whole run (the upper
  envelope of lines is convex); a run whose ends disagree is split in two, recursively.

Memory is the label map plus a (2, w, T) slab per thread, never (T, H0, W0). Work is a pass
over (T, h, w) plus, per output pixel that decides a boundary, one evaluation of its cell's
candidates: nearly independent of T and of the photo's size for trained models, and within
a few evaluations per pixel for near-tied maps (random weights), where every class is a
candidate everywhere. Device backends use the ``labels`` graph instead (runtime.io_spec).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from sed_trt.runtime.image import source_positions

# Candidates are kept down to this far below the cell's threshold, so float rounding in the
# interpolation can never make a pruned class the winner.
TOLERANCE = 1e-6


def label_dtype(num_classes: int) -> np.dtype:
    """The smallest unsigned integer type that holds the labels of ``num_classes`` classes."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if num_classes <= np.iinfo(dt).max + 1:
            return np.dtype(dt)
    raise ValueError(f"{num_classes} classes do not fit a 32-bit label")


def _kernel() -> Any:
    from sed_trt.runtime._label_kernel import compile_kernel  # numba loads on first use

    return compile_kernel()


def labels_from_probs(
    probs: np.ndarray,
    out_hw: tuple[int, int],
    classes: np.ndarray | None = None,
    *,
    dtype: np.dtype | type | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """Argmax over T of the probabilities (T, h, w) resized to ``out_hw``; (H0, W0) labels.

    Args:
        probs: (T, h, w) float sigmoid probabilities.
        out_hw: original image size (H0, W0).
        classes: optional (T,) class id of each map (e.g. the CER survivors' ids in the
            vocabulary); the labels are these ids. Default: 0..T-1.
        dtype: label type (default: the smallest that holds the largest id).
        threads: worker threads over bands of cell rows (default: the CPUs this process may use).
    """
    probs = np.ascontiguousarray(probs, dtype=np.float32)
    t, h, w = probs.shape
    h0, w0 = out_hw
    ids = np.arange(t) if classes is None else np.asarray(classes, dtype=np.int64)
    if len(ids) != t:
        raise ValueError(f"{len(ids)} class ids for {t} probability maps")
    out_dtype = np.dtype(dtype) if dtype is not None else label_dtype(int(ids.max(initial=0)) + 1)
    iy, ly = source_positions(h0, h)  # H0
    ix, lx = source_positions(w0, w)  # W0
    ys = np.searchsorted(iy, np.arange(h + 1))  # output rows of cell row r: ys[r]:ys[r+1]
    xs = np.searchsorted(ix, np.arange(w + 1))
    out = np.empty((h0, w0), dtype=out_dtype)
    rows = np.flatnonzero(np.diff(ys) > 0)  # cell rows holding output rows
    workers = max(1, min(threads or len(os.sched_getaffinity(0)), len(rows)))
    # Interleaved bands (cell row i to worker i mod n) balance rows of unequal cost.
    bands = [np.ascontiguousarray(rows[i::workers]) for i in range(workers)]
    kernel = _kernel()
    args = (ys, ly, xs, lx, ids.astype(out_dtype), np.float32(TOLERANCE), out)
    if workers == 1:
        kernel(probs, bands[0], *args)
    else:
        with ThreadPoolExecutor(workers) as pool:  # the kernel releases the GIL
            list(pool.map(lambda band: kernel(probs, band, *args), bands))
    return out


def label_areas(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ids present in a label map and their pixel counts, in id order (a histogram, no sort)."""
    counts = np.bincount(labels.ravel())
    ids = np.flatnonzero(counts)
    return ids, counts[ids]
