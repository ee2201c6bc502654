"""Labels from probabilities: bilinear resize + argmax, evaluated only where a class can win.

The official post-processing resizes every class map (T, h, w) to the photo (H0, W0) with
bilinear interpolation (align_corners=False) and takes the argmax over T. Brute force costs
T x H0 x W0. An output pixel is a convex combination of the 4 corners of one low-resolution
cell, so in that cell a class whose largest corner is below the largest smallest-corner of
any class can never win. This module evaluates, cell by cell, only the classes that can
(the *candidates*): a cell with one candidate is labelled without arithmetic, the others
are interpolated for their candidates alone. The result equals brute force up to float
rounding, with ties going to the lowest class index as ``argmax`` does; the cost is a pass
over (T, h, w) plus work proportional to the contested cells, nearly independent of T and
of the photo's size.
"""

from __future__ import annotations

import numpy as np

# Work blocks (class chunks of the corner pass, batches of contested cells) stay below this.
BLOCK_BYTES = 32 << 20
# Candidates are kept down to this far below the cell's threshold, so float rounding in the
# interpolation can never make a pruned class the winner.
TOLERANCE = 1e-6
# Past this many candidates per cell on average, the line-envelope form is cheaper.
ENVELOPE_CANDIDATES = 8


def label_dtype(num_classes: int) -> np.dtype:
    """The smallest unsigned integer type that holds the labels of ``num_classes`` classes."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if num_classes <= np.iinfo(dt).max + 1:
            return np.dtype(dt)
    raise ValueError(f"{num_classes} classes do not fit a 32-bit label")


def source_positions(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output index: the low-resolution cell (i0, its upper corner min(i0 + 1, n - 1)) and
    the weight of that upper corner, as torch's bilinear (align_corners=False) computes them."""
    scale = np.float32(in_size / out_size)
    src = np.maximum(scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), 0)
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    lam: np.ndarray = (src - i0.astype(np.float32)).astype(np.float32)
    lam[i0 == in_size - 1] = 0  # the last cell has one corner row: all weight on it
    return i0, lam


def _corner_reduce(p: np.ndarray, op: np.ufunc) -> np.ndarray:
    """``op`` (np.maximum or np.minimum) of each cell's 4 corners: (c, h, w) -> (c, h, w)."""
    rows = op(p, np.concatenate([p[:, 1:], p[:, -1:]], axis=1))  # with the row below (the last repeated)
    return op(rows, np.concatenate([rows[:, :, 1:], rows[:, :, -1:]], axis=2))


def labels_from_probs(
    probs: np.ndarray,
    out_hw: tuple[int, int],
    classes: np.ndarray | None = None,
    *,
    block_bytes: int = BLOCK_BYTES,
    dtype: np.dtype | type | None = None,
) -> np.ndarray:
    """Argmax over T of the probabilities (T, h, w) resized to ``out_hw``; (H0, W0) labels.

    Args:
        probs: (T, h, w) float sigmoid probabilities.
        out_hw: original image size (H0, W0).
        classes: optional (T,) class id of each map (e.g. the CER survivors' ids in the
            vocabulary); the labels are these ids. Default: 0..T-1.
        block_bytes: bound on the scratch memory of one work block.
        dtype: label type (default: the smallest that holds the largest id).
    """
    probs = np.asarray(probs, dtype=np.float32)
    t, h, w = probs.shape
    h0, w0 = out_hw
    ids = np.arange(t) if classes is None else np.asarray(classes, dtype=np.int64)
    if len(ids) != t:
        raise ValueError(f"{len(ids)} class ids for {t} probability maps")
    out_dtype = np.dtype(dtype) if dtype is not None else label_dtype(int(ids.max(initial=0)) + 1)
    iy, ly = source_positions(h0, h)  # H0
    ix, lx = source_positions(w0, w)  # W0
    used = np.zeros((h, w), dtype=bool)  # cells holding at least one output pixel
    used[np.unique(iy)[:, None], np.unique(ix)[None, :]] = True

    # Pass 1: each cell's threshold, the largest smallest-corner over the classes.
    chunk = max(1, block_bytes // (4 * 4 * h * w))
    thr = np.full((h, w), -np.inf, dtype=np.float32)
    for a in range(0, t, chunk):
        np.maximum(thr, _corner_reduce(probs[a : a + chunk], np.minimum).max(axis=0), out=thr)
    thr -= TOLERANCE
    # Pass 2: the candidates of every used cell, as (class, cell) pairs in class order.
    cand_cls, cand_cell = [], []
    for a in range(0, t, chunk):
        c, cell = np.nonzero(((_corner_reduce(probs[a : a + chunk], np.maximum) >= thr) & used).reshape(-1, h * w))
        cand_cls.append(c + a)
        cand_cell.append(cell)
    cls = np.concatenate(cand_cls)
    cell = np.concatenate(cand_cell)
    out_ids = ids.astype(out_dtype)
    if len(cell) > ENVELOPE_CANDIDATES * used.sum():  # near-tied classes: most cells contested by many
        return labels_by_envelopes(probs, out_ids, out_hw, block_bytes=block_bytes)
    order = np.argsort(cell, kind="stable")  # by cell; classes stay ascending within a cell
    cls, cell = cls[order], cell[order]
    count = np.bincount(cell, minlength=h * w)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])

    # Uncontested cells take their one candidate; the label map is their gather.
    cell_label = np.zeros(h * w, dtype=out_dtype)
    single = count == 1
    cell_label[single] = out_ids[cls[start[single]]]
    labels = np.take(cell_label.reshape(h, w)[iy], ix, axis=1)  # H0 W0

    # Contested cells: interpolate their candidates over their pixels, in batches.
    ys = np.searchsorted(iy, np.arange(h + 1))  # output rows of cell row r: ys[r]:ys[r+1]
    xs = np.searchsorted(ix, np.arange(w + 1))
    contested = np.flatnonzero(count > 1)
    if len(contested):
        per_cell = max(1, block_bytes // (6 * 4 * int(np.diff(ys).max()) * int(np.diff(xs).max())))
        kcount = count[contested]
        # Buckets of similar candidate counts (padded to a power of two) keep padding small.
        bucket = np.ceil(np.log2(kcount)).astype(np.int64)
        for b in np.unique(bucket):
            group = contested[bucket == b]
            k = 1 << int(b)
            for g in range(0, len(group), per_cell):
                _resolve(probs, labels, out_ids, group[g : g + per_cell], k, cls, start, count, (ys, xs), (ly, lx))
    return labels


def _resolve(
    probs: np.ndarray,
    labels: np.ndarray,
    ids: np.ndarray,
    cells: np.ndarray,
    k: int,
    cls: np.ndarray,
    start: np.ndarray,
    count: np.ndarray,
    bounds: tuple[np.ndarray, np.ndarray],
    weights: tuple[np.ndarray, np.ndarray],
) -> None:
    """Write the labels (``ids`` of the winners) of ``cells`` (n,), each with at most ``k``
    candidates, into ``labels``."""
    h, w = probs.shape[1:]
    ys, xs = bounds
    ly, lx = weights
    r, c = cells // w, cells % w  # n
    slot = np.arange(k)
    pos = np.minimum(slot[None, :], count[cells][:, None] - 1)  # n K: padding repeats the last candidate
    cand = cls[start[cells][:, None] + pos]  # n K, ascending
    r1, c1 = np.minimum(r + 1, h - 1), np.minimum(c + 1, w - 1)
    p00, p01 = probs[cand, r[:, None], c[:, None]], probs[cand, r[:, None], c1[:, None]]  # n K
    p10, p11 = probs[cand, r1[:, None], c[:, None]], probs[cand, r1[:, None], c1[:, None]]
    # Pixels of each cell, padded by repeating the last one (same index, same value).
    ny, nx = ys[r + 1] - ys[r], xs[c + 1] - xs[c]  # n
    yy = ys[r][:, None] + np.minimum(np.arange(int(ny.max()))[None, :], ny[:, None] - 1)  # n Ry
    xx = xs[c][:, None] + np.minimum(np.arange(int(nx.max()))[None, :], nx[:, None] - 1)  # n Rx
    wy1 = ly[yy][:, :, None]  # n Ry 1
    wx1 = lx[xx][:, None, :]  # n 1 Rx
    wy0, wx0 = 1 - wy1, 1 - wx1
    best = np.full((len(cells), yy.shape[1], xx.shape[1]), -np.inf, dtype=np.float32)  # n Ry Rx
    won = np.zeros(best.shape, dtype=np.int32)
    corners = [x[..., None, None] for x in (p00, p01, p10, p11, cand)]  # n K 1 1 each
    for j in range(k):  # a running maximum over the slots: strict, so ties keep the lower class
        q00, q01, q10, q11, cj = (x[:, j] for x in corners)  # n 1 1
        value = wy0 * (wx0 * q00 + wx1 * q01) + wy1 * (wx0 * q10 + wx1 * q11)  # n Ry Rx
        better = value > best
        np.copyto(best, value, where=better)
        np.copyto(won, cj.astype(np.int32), where=better)
    labels[yy[:, :, None], xx[:, None, :]] = ids[won]


def label_areas(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ids present in a label map and their pixel counts, in id order (a histogram, no sort)."""
    counts = np.bincount(labels.ravel())
    ids = np.flatnonzero(counts)
    return ids, counts[ids]


def labels_by_envelopes(
    probs: np.ndarray, ids: np.ndarray, out_hw: tuple[int, int], *, block_bytes: int = BLOCK_BYTES
) -> np.ndarray:
    """The same labels for maps where every class is a candidate (near-tied classes): per output
    column, along each low-resolution row interval a class's value is a line in the row weight,
    so the winners are the upper envelope of T lines, found a breakpoint at a time; cost
    T x h x W0 per envelope segment instead of T x H0 x W0."""
    t, h, w = probs.shape
    h0, w0 = out_hw
    iy, ly = source_positions(h0, h)
    ix, lx = source_positions(w0, w)
    ix1 = np.minimum(ix + 1, w - 1)
    ys = np.searchsorted(iy, np.arange(h + 1))
    rows = np.flatnonzero(np.diff(ys) > 0)  # cell rows holding output rows
    labels = np.empty((h0, w0), dtype=ids.dtype)
    band = max(1, block_bytes // (4 * 4 * t * w0))
    for b in range(0, len(rows), band):
        r = rows[b : b + band]  # nb
        p0, p1 = probs[:, r], probs[:, np.minimum(r + 1, h - 1)]  # T nb w
        u0 = (1 - lx) * p0[:, :, ix] + lx * p0[:, :, ix1]  # T nb W0: the row above, resized along x
        u1 = (1 - lx) * p1[:, :, ix] + lx * p1[:, :, ix1]
        slope = u1 - u0
        lmax = np.array([ly[ys[i] : ys[i + 1]].max() for i in r], dtype=np.float32)  # nb
        win = u0.argmax(axis=0)  # nb W0: the winner at weight 0 (lowest index on ties)
        segments = [(np.zeros(win.shape, np.float32), win)]
        live = np.ones(win.shape, dtype=bool)
        while live.any():
            at = np.nonzero(live)  # the columns whose envelope may go on
            a, d = u0[:, at[0], at[1]], slope[:, at[0], at[1]]  # T n
            cur, wn = segments[-1][0][at], segments[-1][1][at]
            aw, dw = a[wn, np.arange(len(wn))], d[wn, np.arange(len(wn))]
            with np.errstate(divide="ignore", invalid="ignore"):
                cross = np.where(d > dw, (aw - a) / (d - dw), np.inf)  # where each steeper line overtakes
            cross = np.where(cross > cur, cross, np.inf)
            nxt = cross.argmin(axis=0)
            lnext = cross[nxt, np.arange(len(nxt))]
            go = lnext <= lmax[at[0]]
            start = np.full(win.shape, np.inf, dtype=np.float32)
            winner = segments[-1][1].copy()
            start[at[0][go], at[1][go]] = lnext[go]
            winner[at[0][go], at[1][go]] = nxt[go]
            live[at[0][~go], at[1][~go]] = False
            if go.any():
                segments.append((start, winner))
        for j, i in enumerate(r):
            weights = ly[ys[i] : ys[i + 1], None]  # rows of this cell row, 1
            lab = np.broadcast_to(segments[0][1][j], (len(weights), w0)).copy()
            for start, winner in segments[1:]:
                np.copyto(lab, winner[j], where=weights >= start[j])
            labels[ys[i] : ys[i + 1]] = ids[lab]
    return labels
