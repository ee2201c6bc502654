"""Building SED models: ``build_sed`` is the only place that reads a config."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from sed_trt.runtime.errors import BackendUnavailableError, ConfigError
from sed_trt.sed.checkpoint import load_clip_weights, load_sed_checkpoint
from sed_trt.sed.config import SEDConfig, load_config
from sed_trt.sed.modeling.clip_encoder import build_clip, trunk_widths
from sed_trt.sed.modeling.decoder import GradualFusionDecoder
from sed_trt.sed.modeling.sed import SED


def build_sed(cfg: SEDConfig | str | Path) -> SED:
    """A SED model with random weights for a config, a registered name or a JSON path."""
    if not isinstance(cfg, SEDConfig):
        cfg = load_config(cfg)
    clip = build_clip(cfg.clip)
    res2, res3, res4, _ = trunk_widths(clip)
    if cfg.decoder.num_templates != 80:
        raise ConfigError("SED's cost-map guidance requires P = 80 prompt templates")
    decoder = GradualFusionDecoder(cfg.decoder, encoder_dims=(res4, res3, res2))
    return SED(cfg, clip_model=clip, decoder=decoder)


log = logging.getLogger("sed_trt")


def resolve_device(device: str | torch.device) -> torch.device:
    """A usable torch device, or a one-line error (unknown name, no CUDA, index out of range)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device {device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                f"--device {device}: no CUDA GPU is available here (torch.cuda.is_available() is False)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        try:
            torch.empty(0, device=dev)
        except Exception:
            raise BackendUnavailableError(f"--device {device}: this torch build cannot use it") from None
    return dev


def load_sed(
    backbone: SEDConfig | str | Path,
    weights: str | Path | None = None,
    *,
    clip_weights: str | Path | None = None,
    device: str = "cpu",
    warn_random: bool = True,
    seed: int = 0,
) -> SED:
    """Build, load weights (SED checkpoint, or CLIP weights for training) and switch to eval.

    Without any weights the model keeps random weights drawn from ``seed`` (so the torch
    backend and an export without ``--weights`` agree): fine for speed, useless for
    predictions, and said so as a warning. The global RNG is left untouched.
    """
    dev = resolve_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_sed(backbone)
    if weights is not None:
        load_sed_checkpoint(model, weights)
    elif clip_weights is not None:
        load_clip_weights(model, clip_weights)
    elif warn_random:
        log.warning("no --weights given: the model has RANDOM weights (fine for speed, useless for predictions)")
    return model.to(dev).eval()
