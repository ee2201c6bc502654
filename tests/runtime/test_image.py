"""Host pre/post-processing against torch and detectron2 conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from runtime.errors import ImageError
from runtime.image import bilinear_matrix, labels_from_probs, load_image, shortest_edge_size
from sed.postprocess import labels_from_probs_torch


def test_shortest_edge_sizes():
    assert shortest_edge_size(427, 640) == (640, 959)
    assert shortest_edge_size(480, 640) == (640, 853)
    assert shortest_edge_size(100, 1000) == (256, 2560)  # long side capped at 2560


@pytest.mark.parametrize("n_in,n_out", [(192, 427), (192, 640), (24, 768), (1000, 192)])
def test_bilinear_matrix_equals_torch(n_in, n_out):
    x = torch.rand(n_in, 3, dtype=torch.float64)
    ref = F.interpolate(x.T[None], size=n_out, mode="linear", align_corners=False)[0].T
    np.testing.assert_allclose(bilinear_matrix(n_out, n_in).astype(np.float64) @ x.numpy(), ref.numpy(), atol=1e-5)


def test_labels_host_equals_torch_and_respects_subset():
    rng = np.random.default_rng(0)
    probs = rng.random((37, 48, 48)).astype(np.float32)
    host = labels_from_probs(probs, (100, 150), chunk=5)
    ref = labels_from_probs_torch(torch.from_numpy(probs), (100, 150)).numpy()
    assert (host == ref).mean() > 0.999
    probs[::2] = 0
    sub = labels_from_probs(probs, (100, 150), classes=np.arange(1, 37, 2))
    assert (sub % 2 == 1).all()


def test_bad_images(tmp_path):
    Image.new("L", (8, 8)).save(tmp_path / "gray.png")
    (tmp_path / "junk.png").write_bytes(b"nope")
    with pytest.raises(ImageError, match="mode 'L'"):
        load_image(tmp_path / "gray.png")
    with pytest.raises(ImageError, match="not a readable image"):
        load_image(tmp_path / "junk.png")
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "none.png")
