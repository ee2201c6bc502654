"""Loading official SED checkpoints and open_clip CLIP weights, strictly.

Official files are ``{"model": state_dict, ...}`` (detectron2) or a bare state dict with
keys ``sem_seg_head.predictor.clip_model.*`` and ``sem_seg_head.predictor.transformer.*``.
A missing, unexpected or mis-shaped key is an error that names the keys.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import cast

import torch
from torch import nn

from sed_trt.runtime.errors import OFFICIAL_WEIGHTS_HINT, CheckpointError
from sed_trt.runtime.fsutil import require_regular_file

OFFICIAL_PREFIX = "sem_seg_head.predictor."


def read_checkpoint(path: str | Path, what: str) -> Mapping[str, object]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} {str(path)!r} does not exist; {OFFICIAL_WEIGHTS_HINT}")
    require_regular_file(path, what, CheckpointError)  # a FIFO or device would block torch.load
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "unsupported global" not in str(exc).lower():  # torch's words for a refused Python object
            raise CheckpointError(
                f"cannot read {what} {str(path)!r}: not a PyTorch checkpoint (or a damaged one)"
            ) from None
        raise CheckpointError(
            f"refusing {what} {str(path)!r}: it holds Python objects besides tensors, and unpickling them could run code; "
            "save a plain state dict (torch.save(model.state_dict(), path))"
        ) from None
    except Exception as exc:  # torch raises many types for a bad file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read {what} {str(path)!r}: {reason[:200]}") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{what} {str(path)!r} holds a {type(obj).__name__}, expected a state dict")
    return obj


def extract_state_dict(obj: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """The tensors of ``{"model": sd}``, ``{"state_dict": sd}`` or a bare state dict."""
    for key in ("model", "state_dict"):
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]  # type: ignore[assignment]
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError("the file holds no tensors: not a model checkpoint")
    return sd


def remap_official_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official key layout -> this model's keys (drop ``sem_seg_head.predictor.`` and DDP's ``module.``)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        k = key[len("module.") :] if key.startswith("module.") else key
        k = k[len(OFFICIAL_PREFIX) :] if k.startswith(OFFICIAL_PREFIX) else k
        out[k] = value
    assert len(out) == len(sd), "key remapping collapsed distinct keys"
    return out


def to_official_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """This model's state dict in the official key layout (what our training saves)."""
    return {OFFICIAL_PREFIX + k: v for k, v in model.state_dict().items()}


def _format_keys(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}{', ...' if len(keys) > limit else ''} ({len(keys)} in all)"


def load_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], *, what: str) -> None:
    """Copy ``sd`` into ``module`` after checking names and shapes match one-to-one."""
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    mismatched = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    problems = []
    if missing:
        problems.append(f"missing keys: {_format_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_format_keys(unexpected)}")
    if mismatched:
        detail = [f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched]
        problems.append(f"shape mismatches: {_format_keys(detail, 4)}")
    if problems:
        raise CheckpointError(f"{what} does not match the model: " + "; ".join(problems))
    bad = sorted(k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise CheckpointError(
            f"{what} holds NaN or infinite values in {_format_keys(bad, 4)}: the file is corrupt or training diverged"
        )
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)


def load_sed_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load an official (or our own) SED checkpoint into ``model`` strictly."""
    sd = remap_official_state_dict(extract_state_dict(read_checkpoint(path, "SED checkpoint")))
    if not any(k.startswith("transformer.") for k in sd):
        raise CheckpointError(
            f"{str(path)!r} has no decoder weights (sem_seg_head.predictor.transformer.*): not a SED checkpoint"
            " (for CLIP initial weights use --clip-weights)"
        )
    load_strict(model, sd, what=f"SED checkpoint {str(path)!r}")


def load_clip_weights(model: nn.Module, path: str | Path) -> None:
    """Load open_clip CLIP weights (e.g. ``open_clip_pytorch_model.bin``) into ``model.clip_model``."""
    sd = extract_state_dict(read_checkpoint(path, "CLIP weights"))
    sd = {k[len("clip_model.") :] if k.startswith("clip_model.") else k: v for k, v in sd.items()}
    load_strict(cast(nn.Module, model.clip_model), sd, what=f"CLIP weights {str(path)!r}")


def text_tower_fingerprint(model: nn.Module) -> str:
    """sha256 over the text-tower tensors: the identity that cached text features depend on."""
    h = hashlib.sha256()
    for key, value in sorted(model.clip_model.state_dict().items()):
        if key.startswith("visual.") or key == "logit_scale":
            continue
        h.update(key.encode())
        h.update(value.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:32]
