"""convnext_b / convnext_l build exactly the official checkpoint key layout (names and shapes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sed_trt.sed import build_sed, load_config
from sed_trt.sed.checkpoint import OFFICIAL_PREFIX, to_official_state_dict

# the official key names and shapes (a copy of ../shared/spec/official_state_dict_keys.json)
KEYS = Path(__file__).resolve().parents[1] / "data" / "spec" / "official_state_dict_keys.json"


def _official(backbone: str) -> dict[str, list[int]]:
    entry = json.loads(KEYS.read_text())[backbone]
    assert entry["num_keys"] == len(entry["keys"])
    return {k: list(v) for k, v in entry["keys"].items()}


@pytest.mark.parametrize("backbone,count", [("convnext_b", 608), ("convnext_l", 658)])
def test_state_dict_matches_official(backbone, count):
    with torch.device("meta"):
        model = build_sed(backbone)
    ours = {k: list(v.shape) for k, v in to_official_state_dict(model).items()}
    official = _official(backbone)
    assert len(ours) == count
    assert set(ours) == set(official), (
        f"missing {sorted(set(official) - set(ours))[:5]} extra {sorted(set(ours) - set(official))[:5]}"
    )
    bad = {k: (ours[k], official[k]) for k in ours if ours[k] != official[k]}
    assert not bad
    assert all(k.startswith(OFFICIAL_PREFIX) for k in ours)


def test_tiny_configs_keep_the_full_decoder_and_tiny_towers():
    """What keeps the suite fast is size, not a clock: CLIP towers of ~5 M parameters, SED-B's decoder."""
    full_decoder = sum(p.numel() for p in build_sed(load_config("convnext_b")).transformer.parameters())
    for name in ("sed_tiny_linear", "sed_tiny_mlp"):
        model = build_sed(load_config(name))
        assert sum(p.numel() for p in model.clip_model.parameters()) < 6_000_000, name
        assert sum(p.numel() for p in model.transformer.parameters()) <= full_decoder
