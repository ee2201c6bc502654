"""Host pre-processing against detectron2 conventions."""

from __future__ import annotations

import pytest
from PIL import Image

from sed_trt.runtime.errors import ImageError
from sed_trt.runtime.image import load_image, shortest_edge_size


def test_shortest_edge_sizes():
    assert shortest_edge_size(427, 640) == (640, 959)
    assert shortest_edge_size(480, 640) == (640, 853)
    assert shortest_edge_size(100, 1000) == (256, 2560)  # long side capped at 2560


def test_bad_images(tmp_path):
    Image.new("L", (8, 8)).save(tmp_path / "gray.png")
    (tmp_path / "junk.png").write_bytes(b"nope")
    with pytest.raises(ImageError, match="mode 'L'"):
        load_image(tmp_path / "gray.png")
    with pytest.raises(ImageError, match="not a readable image"):
        load_image(tmp_path / "junk.png")
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "none.png")
