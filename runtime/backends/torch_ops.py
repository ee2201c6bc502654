"""Array ops on torch tensors (CPU or CUDA): CER stays on the device, only survivor ids come back."""

from __future__ import annotations

import numpy as np
import torch

from runtime.backends.base import ArrayOps


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

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
