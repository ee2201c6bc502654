"""Write ``tests/data/parity/sed_tiny_linear`` from the full official vector (see tests/parity.py).

python -m tests.make_parity_data [FULL_VECTOR_DIR]   (default: ../shared/parity/sed_tiny_linear)
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

from tests.parity import TOKEN_KEY, load_expected

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "parity" / "sed_tiny_linear"


def used_tokens(classes: list[str]) -> np.ndarray:
    """Every token id the parity prompts (official templates, synonyms included) contain."""
    from sed_trt.runtime.tokenizer import ClipTokenizer
    from sed_trt.runtime.vocab import IMAGENET_TEMPLATES, build_prompts

    prompts, _ = build_prompts(classes, IMAGENET_TEMPLATES)
    tokens, _ = ClipTokenizer().tokenize(prompts)
    return np.unique(tokens)


def main(source: Path) -> None:
    import torch

    meta = json.loads((source / "meta.json").read_text())
    OUT.mkdir(parents=True, exist_ok=True)
    expected = load_expected(source)
    expected = {
        k: v.astype(np.uint8) if k.endswith("labels") or k.startswith("labels") else v for k, v in expected.items()
    }
    np.savez_compressed(OUT / "expected.npz", **expected)
    state = torch.load(source / "checkpoint.pth", map_location="cpu", weights_only=True)["model"]
    arrays = {k: v.numpy() for k, v in state.items()}
    rows = used_tokens(meta["classes"])
    table = arrays.pop(TOKEN_KEY)
    arrays.update(
        __token_rows__=rows,
        __token_values__=table[rows],
        __token_shape__=np.array(table.shape),
        __order__=np.array(json.dumps(list(state))),
    )
    np.savez_compressed(OUT / "checkpoint.npz", **arrays)
    shutil.copyfile(source / "image.png", OUT / "image.png")
    shutil.copytree(source / "cfg", OUT / "cfg", dirs_exist_ok=True)
    (OUT / "meta.json").write_text(
        json.dumps({**meta, "trimmed": True, "source": "official SED db20d93 (../shared/parity)"}, indent=2) + "\n"
    )
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total / 2**20:.1f} MB; {len(rows)} token rows of {table.shape[0]})")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "parity" / "sed_tiny_linear")
