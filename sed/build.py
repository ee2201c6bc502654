"""Building SED models: ``build_sed`` is the only place that reads a config."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from runtime.errors import ConfigError
from sed.checkpoint import load_clip_weights, load_sed_checkpoint
from sed.config import SEDConfig, load_config
from sed.modeling.clip_encoder import build_clip, trunk_widths
from sed.modeling.decoder import GradualFusionDecoder
from sed.modeling.sed import SED


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


def load_sed(backbone: SEDConfig | str | Path, weights: str | Path | None = None, *, clip_weights: str | Path | None = None, device: str = "cpu", warn_random: bool = True) -> SED:
    """Build, load weights (SED checkpoint, or CLIP weights for training) and switch to eval.

    Without any weights the model keeps random weights: fine for speed, useless for
    predictions, and said so on stderr.
    """
    model = build_sed(backbone)
    if weights is not None:
        load_sed_checkpoint(model, weights)
    elif clip_weights is not None:
        load_clip_weights(model, clip_weights)
    elif warn_random:
        print(
            "[sed-trt] WARNING: no --weights given: the model has RANDOM weights (fine for speed, useless for predictions)",
            file=sys.stderr,
        )
    return model.to(torch.device(device)).eval()
