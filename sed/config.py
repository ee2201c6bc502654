"""Frozen configuration of SED: one dataclass per component, variants as JSON files.

A model config is an open_clip model-config JSON (``embed_dim``, ``vision_cfg`` with a timm
ConvNeXt trunk, ``text_cfg``), the format of open_clip's own ``model_configs/``. The
decoder hyper-parameters are those of both released SED models; the encoder-guidance
widths come from the trunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from sed_trt.runtime.errors import ConfigError
from sed_trt.runtime.jsonutil import read_json

# Backbone presets: our name -> (config file, open_clip model name, official CLIP_PRETRAINED tag).
PRESETS: dict[str, tuple[str, str]] = {
    "convnext_b": ("convnext_base_w_320", "laion_aesthetic_s13b_b82k"),
    "convnext_l": ("convnext_large_d_320", "laion2b_s29b_b131k_ft_soup"),
}
_TOP_LEVEL_KEYS = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "custom_text"}


@dataclass(frozen=True)
class ClipConfig:
    """The open_clip CLIP (ConvNeXt image tower + text tower) that SED builds on."""

    name: str
    embed_dim: int
    vision_cfg: dict[str, Any]
    text_cfg: dict[str, Any]
    quick_gelu: bool = False

    @property
    def context_length(self) -> int:
        return int(self.text_cfg.get("context_length", 77))


@dataclass(frozen=True)
class DecoderConfig:
    """Gradual fusion decoder (and cost-map embedding) hyper-parameters."""

    num_templates: int = 80
    hidden_dim: int = 128
    decoder_dims: tuple[int, int, int] = (64, 32, 16)
    guidance_proj_dims: tuple[int, int, int] = (32, 16, 8)
    corr_guidance_dims: tuple[int, int, int] = (32, 16, 8)
    kernel_size: int = 9
    num_heads: int = 4
    train_pooling: int = 2


@dataclass(frozen=True)
class SEDConfig:
    """A whole SED model: CLIP, decoder and input geometry."""

    clip: ClipConfig
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    image_size: int = 768

    @property
    def name(self) -> str:
        return self.clip.name


def _configs_dir() -> Path:
    return Path(str(resources.files("sed_trt.sed") / "configs"))


def list_models() -> list[str]:
    """Registered model names (presets first)."""
    extra = sorted(p.stem for p in _configs_dir().glob("*.json") if p.stem not in PRESETS)
    return [*PRESETS, *extra]


def clip_config_from_dict(name: str, d: dict[str, Any]) -> ClipConfig:
    """Validate an open_clip model-config dict; unknown keys are an error."""
    unknown = set(d) - _TOP_LEVEL_KEYS
    if unknown:
        raise ConfigError(
            f"model config {name!r} has unknown keys {sorted(unknown)}; allowed: {sorted(_TOP_LEVEL_KEYS)}"
        )
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in d:
            raise ConfigError(f"model config {name!r} lacks {key!r}")
    vision = dict(d["vision_cfg"])
    trunk = str(vision.get("timm_model_name", ""))
    if "convnext" not in trunk:
        raise ConfigError(f"model config {name!r}: SED needs a timm ConvNeXt trunk, got timm_model_name={trunk!r}")
    if vision.get("timm_pool", "") not in ("", "avg"):
        raise ConfigError(f"model config {name!r}: timm_pool must be '' (got {vision.get('timm_pool')!r})")
    if vision.get("timm_proj") not in ("linear", "mlp"):
        raise ConfigError(
            f"model config {name!r}: timm_proj must be 'linear' or 'mlp' (got {vision.get('timm_proj')!r})"
        )
    return ClipConfig(
        name=name,
        embed_dim=int(d["embed_dim"]),
        vision_cfg=vision,
        text_cfg=dict(d["text_cfg"]),
        quick_gelu=bool(d.get("quick_gelu", False)),
    )


def load_config(name_or_path: str | Path) -> SEDConfig:
    """A registered model name (``convnext_b``, ``convnext_l``, ``sed_tiny_linear``...) or a JSON path."""
    text = str(name_or_path)
    path = Path(text)
    if text.endswith(".json") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"model config file {text!r} does not exist")
        name = path.stem
    elif text in list_models():
        name = text
        path = _configs_dir() / f"{text}.json"
    else:
        raise ConfigError(
            f"unknown model {text!r}; available: {list_models()} or a path to an open_clip model-config JSON"
        )
    d = read_json(path, what=f"model config {str(path)!r}")
    if not isinstance(d, dict):
        raise ConfigError(f"model config {str(path)!r} must be a JSON object")
    return SEDConfig(clip=clip_config_from_dict(name, d))
