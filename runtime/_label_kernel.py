"""The compiled kernel of :mod:`sed_trt.runtime.postprocess` (imported on first use: numba loads in ~0.3 s).

The functions here are plain Python; :func:`compile_kernel` compiles them with numba, caching
the machine code under sed-trt's cache directory (``numba/``) rather than beside this file,
so a read-only install and an unwritable HOME work: where no cache can be written the kernel
is compiled uncached (one warning line), and a damaged cache is one warning and rebuilt.
A ``NUMBA_CACHE_DIR`` the user set is respected.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Any

import numpy as np

from sed_trt.runtime.errors import ConfigError
from sed_trt.runtime.fsutil import warn_cache_unwritable, writable_cache_dir

log = logging.getLogger("sed_trt")

# Bound by compile_kernel to the compiled winner: cell_rows calls it through this global name,
# which numba resolves when it compiles cell_rows.
winner: Any = None


def _winner(slab: np.ndarray, c: int, c1: int, cand: np.ndarray, n: int, a: Any, b: Any, buf: np.ndarray) -> int:
    """The lowest class of the largest value among ``cand[:n]`` at row weight a, column weight b."""
    one = np.float32(1)
    a0, b0 = one - a, one - b
    p00, p01, p10, p11 = slab[0, c], slab[0, c1], slab[1, c], slab[1, c1]
    if n == slab.shape[2]:  # every class: contiguous, vectorised
        for t in range(n):
            buf[t] = a0 * (b0 * p00[t] + b * p01[t]) + a * (b0 * p10[t] + b * p11[t])
        best = buf[0]
        for t in range(1, n):
            if buf[t] > best:
                best = buf[t]
        for t in range(n):
            if buf[t] == best:
                return t
        return 0
    won = cand[0]
    best = -np.inf
    for i in range(n):
        t = cand[i]
        v = a0 * (b0 * p00[t] + b * p01[t]) + a * (b0 * p10[t] + b * p11[t])
        if v > best:
            best, won = v, t
    return won


def _cell_rows(
    probs: np.ndarray,
    rows: np.ndarray,
    ys: np.ndarray,
    ly: np.ndarray,
    xs: np.ndarray,
    lx: np.ndarray,
    ids: np.ndarray,
    tol: float,
    out: np.ndarray,
) -> None:
    """Label the output rows of the cell rows ``rows`` of (T, h, w) maps into ``out``."""
    t, h, w = probs.shape
    slab = np.empty((2, w, t), np.float32)  # the cell row's two corner rows, classes last
    cand = np.empty((w, t), np.int32)
    count = np.empty(w, np.int64)
    buf = np.empty(t, np.float32)
    stack = np.empty(256, np.int64)
    for r in rows:
        r1 = min(r + 1, h - 1)
        for k in range(t):  # contiguous reads; the slab stays in cache
            for c in range(w):
                v0, v1 = probs[k, r, c], probs[k, r1, c]
                # A NaN never wins (as in the labels graph, where NaN > best is false): -inf here,
                # so every class stays a candidate and no candidate list is ever empty.
                slab[0, c, k] = v0 if v0 == v0 else -np.inf
                slab[1, c, k] = v1 if v1 == v1 else -np.inf
        for c in range(w):  # candidates: largest corner >= the largest smallest corner
            if xs[c] == xs[c + 1]:
                continue
            c1 = min(c + 1, w - 1)
            thr = -np.inf
            for k in range(t):
                low = min(min(slab[0, c, k], slab[0, c1, k]), min(slab[1, c, k], slab[1, c1, k]))
                thr = max(thr, low)
            thr -= tol
            n = 0
            for k in range(t):
                if max(max(slab[0, c, k], slab[0, c1, k]), max(slab[1, c, k], slab[1, c1, k])) >= thr:
                    cand[c, n] = k
                    n += 1
            count[c] = n
        for y in range(ys[r], ys[r + 1]):
            a = ly[y]
            for c in range(w):
                x0, x1 = xs[c], xs[c + 1] - 1
                if x1 < x0:
                    continue
                c1 = min(c + 1, w - 1)
                n = count[c]
                if n == 1:
                    out[y, x0 : x1 + 1] = ids[cand[c, 0]]
                    continue
                # Runs: a class winning at both ends of a run wins all of it; else split it.
                wl = winner(slab, c, c1, cand[c], n, a, lx[x0], buf)
                wr = winner(slab, c, c1, cand[c], n, a, lx[x1], buf) if x1 > x0 else wl
                out[y, x0] = ids[wl]
                out[y, x1] = ids[wr]
                stack[0], stack[1], stack[2], stack[3] = x0, x1, wl, wr
                sp = 4
                while sp > 0:
                    sp -= 4
                    lo, hi, wlo, whi = stack[sp], stack[sp + 1], stack[sp + 2], stack[sp + 3]
                    if hi - lo < 2:
                        continue
                    if wlo == whi:
                        out[y, lo + 1 : hi] = ids[wlo]
                        continue
                    mid = (lo + hi) // 2
                    wm = winner(slab, c, c1, cand[c], n, a, lx[mid], buf)
                    out[y, mid] = ids[wm]
                    stack[sp], stack[sp + 1], stack[sp + 2], stack[sp + 3] = lo, mid, wlo, wm
                    stack[sp + 4], stack[sp + 5], stack[sp + 6], stack[sp + 7] = mid, hi, wm, whi
                    sp += 8


def _guard_cache(dispatcher: Any, cache_dir: str) -> None:
    """Make a damaged cache entry a cache miss: one warning, the index emptied, the kernel rebuilt
    and saved again. numba loads entries with pickle and lets its errors escape (``Dispatcher._cache``
    is numba's cache object; where a numba release lacks it the guard is skipped)."""
    cache: Any = getattr(dispatcher, "_cache", None)
    load = getattr(cache, "load_overload", None)
    if load is None:
        return

    def guarded(sig: Any, target_context: Any) -> Any:
        try:
            return load(sig, target_context)
        except Exception as exc:
            log.warning("the compiled-kernel cache in %s is damaged (%s); rebuilding it", cache_dir, type(exc).__name__)
            # An empty index: the rebuilt kernel is saved over the damaged entry (where even the
            # index cannot be rewritten, the kernel is compiled uncached this time).
            with contextlib.suppress(Exception):
                cache.flush()
            return None

    cache.load_overload = guarded


_DAMAGE_WARNED = threading.Event()
_COMPILED: Any = None
_LOCK = threading.Lock()


def compile_kernel() -> Any:
    """The compiled ``cell_rows`` (compiled once per process; machine code cached on disk where possible)."""
    global _COMPILED, winner
    with _LOCK:
        if _COMPILED is not None:
            return _COMPILED
        try:
            from numba import njit
            from numba.core import config as numba_config
        except (ImportError, ValueError, RuntimeError) as exc:  # e.g. NUMBA_NUM_THREADS=0
            raise ConfigError(f"numba cannot start ({exc}); check the NUMBA_* environment variables") from None

        config: Any = numba_config
        user_dir = os.environ.get("NUMBA_CACHE_DIR")
        cache_dir = user_dir or (str(d) if (d := writable_cache_dir("numba")) is not None else None)
        saved = config.CACHE_DIR
        try:
            config.CACHE_DIR = cache_dir or ""  # numba's locator for a user-given cache directory
            try:
                compiled = [njit(cache=cache_dir is not None, nogil=True)(f) for f in (_winner, _cell_rows)]
            except RuntimeError as exc:  # numba: "cannot cache function ...: no locator available"
                warn_cache_unwritable(cache_dir or "numba's cache", exc)
                compiled, cache_dir = [njit(nogil=True)(f) for f in (_winner, _cell_rows)], None
        finally:
            config.CACHE_DIR = saved
        if cache_dir is not None:
            for dispatcher in compiled:
                _guard_cache(dispatcher, cache_dir)
        winner, _COMPILED = compiled
        return _COMPILED
