"""The README's Python block runs as written (on the tiny model exported where it expects ConvNeXt-B)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT

pytestmark = pytest.mark.parity


def test_the_readme_python_block_runs(small_engine_dir, tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    assert blocks, "the README has no Python block"
    (tmp_path / "engines").mkdir()
    shutil.copytree(small_engine_dir, tmp_path / "engines" / "convnext_b")
    rng = np.random.default_rng(0)
    for name in ("street.jpg", "a.jpg", "b.jpg"):
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(tmp_path / name)
    res = subprocess.run([sys.executable, "-c", blocks[0]], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "{" in res.stdout  # areas() printed
