"""Array ops on torch tensors (CPU or CUDA): CER stays on the device, only survivor ids come back."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from runtime.backends.base import ArrayOps
from runtime.postprocess import BLOCK_BYTES, TOLERANCE, label_dtype, source_positions


def torch_topk_union(logits: torch.Tensor, k: int) -> torch.Tensor:
    """runtime.cer's top-k union on the device: sorted int64 indices (T',) of (B, T, H, W) logits."""
    top = logits.topk(k, dim=1).indices  # B K H W
    keep = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
    keep[top.flatten()] = True
    return keep.nonzero().squeeze(1)


class TorchOps(ArrayOps):
    """torch tensors on one device; ``stream`` (CUDA) orders our ops with the engines'."""

    def __init__(self, device: str | torch.device = "cpu", stream: torch.cuda.Stream | None = None) -> None:
        self.device = torch.device(device)
        self.stream = stream

    def from_numpy(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device, non_blocking=False)

    def to_numpy(self, x: torch.Tensor) -> np.ndarray:
        return x.detach().cpu().numpy()

    def empty(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.empty(shape, dtype=torch.float32, device=self.device)

    def zeros(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.zeros(shape, dtype=torch.float32, device=self.device)

    def take(self, x: torch.Tensor, idx: np.ndarray, axis: int) -> torch.Tensor:
        return x.index_select(axis, torch.from_numpy(np.asarray(idx, dtype=np.int64)).to(x.device)).contiguous()

    def topk_union(self, logits: torch.Tensor, k: int) -> np.ndarray:
        return torch_topk_union(logits, k).cpu().numpy()  # the one small device-to-host read per stage

    def labels(self, probs: torch.Tensor, kept: np.ndarray, out_hw: tuple[int, int], num_classes: int) -> np.ndarray:
        if self.device.type == "cpu":  # already on the host: the numpy forms (with the envelope form)
            return super().labels(probs, kept, out_hw, num_classes)
        return torch_labels(probs[0], np.asarray(kept), out_hw, label_dtype(num_classes))

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def torch_labels(probs: torch.Tensor, ids: np.ndarray, out_hw: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    """runtime.postprocess's candidate argmax on the device: (T, h, w) maps -> host (H0, W0) ids.

    The same rule as the host version (a class whose largest cell corner is below the cell's
    largest smallest corner cannot win there); contested cells are resolved in batches of
    bounded scratch memory, padded to their largest candidate count. Only the label map leaves
    the device.
    """
    t, h, w = probs.shape
    dev = probs.device
    iy_np, ly_np = source_positions(out_hw[0], h)
    ix_np, lx_np = source_positions(out_hw[1], w)
    iy, ix = torch.from_numpy(iy_np).to(dev), torch.from_numpy(ix_np).to(dev)

    def corners(p: torch.Tensor, op: Any) -> torch.Tensor:  # c h w -> c h w
        rows = op(p, torch.cat([p[:, 1:], p[:, -1:]], dim=1))
        return op(rows, torch.cat([rows[:, :, 1:], rows[:, :, -1:]], dim=2))

    chunk = max(1, BLOCK_BYTES // (4 * 4 * h * w))
    thr = torch.stack([corners(probs[a : a + chunk], torch.minimum).amax(0) for a in range(0, t, chunk)]).amax(0)
    cand = torch.cat([corners(probs[a : a + chunk], torch.maximum) >= thr - TOLERANCE for a in range(0, t, chunk)])
    count = cand.sum(0).flatten()  # h*w
    first = cand.to(torch.uint8).argmax(0).flatten()  # the lowest candidate: the label of a one-candidate cell
    dev_ids = torch.from_numpy(ids.astype(np.int64)).to(dev)
    labels = dev_ids[first].view(h, w)[iy][:, ix]  # H0 W0
    ys = torch.searchsorted(iy, torch.arange(h + 1, device=dev))  # output rows of cell row r: ys[r]:ys[r+1]
    xs = torch.searchsorted(ix, torch.arange(w + 1, device=dev))
    used = torch.zeros(h, w, dtype=torch.bool, device=dev)
    used[iy.unique()[:, None], ix.unique()[None, :]] = True
    cells = ((count > 1) & used.flatten()).nonzero().squeeze(1)  # n contested cells
    per_batch = max(1, BLOCK_BYTES // (6 * 4 * int((ys[1:] - ys[:-1]).max()) * int((xs[1:] - xs[:-1]).max())))
    for g in range(0, len(cells), per_batch):  # contested cells in batches of bounded scratch memory
        batch = cells[g : g + per_batch]
        order = torch.where(cand.flatten(1)[:, batch], torch.arange(t, device=dev)[:, None], t)  # T n
        k = int(count[batch].max())
        cand_ids = order.sort(dim=0).values[:k].T  # n K ascending; past a cell's count: t
        cand_ids = torch.where(cand_ids < t, cand_ids, cand_ids[:, :1])  # padding repeats the first
        r, c = batch // w, batch % w
        r1, c1 = (r + 1).clamp(max=h - 1), (c + 1).clamp(max=w - 1)
        ny, nx = ys[r + 1] - ys[r], xs[c + 1] - xs[c]
        yy = ys[r][:, None] + torch.minimum(torch.arange(int(ny.max()), device=dev)[None], ny[:, None] - 1)  # n Ry
        xx = xs[c][:, None] + torch.minimum(torch.arange(int(nx.max()), device=dev)[None], nx[:, None] - 1)  # n Rx
        wy1 = torch.from_numpy(ly_np).to(dev)[yy][:, :, None]  # n Ry 1
        wx1 = torch.from_numpy(lx_np).to(dev)[xx][:, None, :]  # n 1 Rx
        best = torch.full((len(batch), yy.shape[1], xx.shape[1]), -float("inf"), device=dev)
        won = torch.zeros(best.shape, dtype=torch.int64, device=dev)
        for j in range(k):  # running maximum, strict: ties keep the lower class
            cj = cand_ids[:, j]

            def at(rows: torch.Tensor, cols: torch.Tensor, cj: torch.Tensor = cj) -> torch.Tensor:
                return probs[cj, rows, cols][:, None, None].float()  # n 1 1

            value = (1 - wy1) * ((1 - wx1) * at(r, c) + wx1 * at(r, c1)) + wy1 * (
                (1 - wx1) * at(r1, c) + wx1 * at(r1, c1)
            )
            better = value > best
            best = torch.where(better, value, best)
            won = torch.where(better, cj[:, None, None], won)
        labels[yy[:, :, None], xx[:, None, :]] = dev_ids[won]
    return labels.cpu().numpy().astype(dtype)
