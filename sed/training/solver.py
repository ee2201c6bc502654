"""Loss, parameter groups, learning-rate schedule and gradient clipping of the official recipe."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sed_trt.runtime.datasets import IGNORE

# detectron2's norm_module_types: these get weight_decay_norm (0). timm's LayerNorm2d is an
# nn.LayerNorm; the decoder's channels-last LayerNorm is not, so it keeps weight decay.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


@dataclass(frozen=True)
class SolverConfig:
    """AdamW + cosine schedule + full-model gradient clipping (SED's configs)."""

    base_lr: float = 2e-4
    clip_multiplier: float = 0.01  # visual tower lr = base_lr * this
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0
    weight_decay_embed: float = 0.0
    max_iter: int = 80_000
    clip_grad_norm: float = 0.01


def freeze_text_tower(model: nn.Module) -> None:
    """The CLIP text tower and logit scale are frozen; the visual tower is fine-tuned."""
    for name, p in model.clip_model.named_parameters():
        if not name.startswith("visual."):
            p.requires_grad_(False)


def param_groups(model: nn.Module, cfg: SolverConfig) -> list[dict[str, object]]:
    """One group per trainable tensor with its lr and weight decay (detectron2 build_optimizer)."""
    groups, seen = [], set()
    for module_name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            lr = cfg.base_lr * (cfg.clip_multiplier if module_name.startswith("clip_model") else 1.0)
            wd = cfg.weight_decay
            if isinstance(module, NORM_TYPES):
                wd = cfg.weight_decay_norm
            elif isinstance(module, nn.Embedding):
                wd = cfg.weight_decay_embed
            groups.append(
                {
                    "params": [p],
                    "lr": lr,
                    "initial_lr": lr,
                    "weight_decay": wd,
                    "name": f"{module_name}.{pname}".lstrip("."),
                }
            )
    return groups


def build_optimizer(model: nn.Module, cfg: SolverConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.base_lr, weight_decay=cfg.weight_decay)


def cosine_factor(iteration: int, max_iter: int) -> float:
    """WarmupCosineLR without warm-up: 0.5 (1 + cos(pi t / T)), reaching 0 at T."""
    return 0.5 * (1.0 + math.cos(math.pi * min(iteration, max_iter) / max_iter))


def set_lr(optimizer: torch.optim.Optimizer, iteration: int, max_iter: int) -> float:
    """Set every group's lr for ``iteration``; returns the base group's factor."""
    f = cosine_factor(iteration, max_iter)
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] * f
    return f


def clip_gradients(model: nn.Module, max_norm: float) -> float:
    """Full-model L2 gradient clipping; returns the norm before clipping."""
    params = [p for p in model.parameters() if p.grad is not None]
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


def sed_loss(outputs: tuple[torch.Tensor, ...], labels: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
    """BCE-with-logits on the final and the three auxiliary outputs (``TrainLogits.in_loss_order()``).

    Each output (B, T, h, w) is upsampled bilinearly to the label size (B, H, W); targets are
    one-hot over T; ignored pixels keep an all-zero target (the official behaviour).
    """
    valid = labels != IGNORE
    # (B, H, W) ids -> (B, T, H, W) one-hot, zero rows at ignored pixels
    target = F.one_hot(torch.where(valid, labels, 0), num_classes).permute(0, 3, 1, 2).to(outputs[0].dtype)
    target = target * valid.unsqueeze(1)
    size = labels.shape[-2:]
    losses = {}
    for i, out in enumerate(outputs):
        up = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        losses[f"loss_sem_seg_{i}"] = F.binary_cross_entropy_with_logits(up, target)
    return losses
