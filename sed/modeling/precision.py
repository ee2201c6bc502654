"""fp32 islands under reduced precision: where bf16/fp16 would change decisions or accumulate error.

The torch backend runs the image encoder and decoder under ``torch.autocast`` when asked for
bf16 or fp16; the same parts stay fp32 as in the fp16 ONNX graphs (export.fp16): the norms,
the cost map's L2 normalisation, the running class-attention sums, and here also the output
and auxiliary heads, whose logits decide CER's kept sets and the labels. Outside autocast
(fp32 inference, training, export) every island is a no-op, so the exported graphs and the
official outputs are unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def fp32_island(x: torch.Tensor) -> Iterator[None]:
    """No autocast inside (feed it ``x.float()``); a no-op where autocast is off."""
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            yield
    else:
        yield


def _float_input(module: nn.Module, args: tuple) -> tuple | None:
    x = args[0] if args else None
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != torch.float32:
        return (x.float(), *args[1:])
    return None


def fp32_norms(model: nn.Module, norm_types: tuple[type, ...]) -> list[torch.utils.hooks.RemovableHandle]:
    """Make every norm of ``norm_types`` in ``model`` compute in fp32 (input cast up; layer and
    group norm keep fp32 inputs fp32 under autocast). Returns the hooks' handles to remove."""
    return [m.register_forward_pre_hook(_float_input) for m in model.modules() if isinstance(m, norm_types)]
