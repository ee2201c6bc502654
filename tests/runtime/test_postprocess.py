"""The host kernel and the labels graph against brute force (torch resize of every map, then argmax)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sed_trt.runtime.backends.base import Backend
from sed_trt.runtime.image import source_positions
from sed_trt.runtime.io_spec import ExportLimits, ModelDims
from sed_trt.runtime.postprocess import label_dtype, labels_from_probs
from sed_trt.runtime.predictor import Predictor
from sed_trt.sed.backend import TorchOps
from sed_trt.sed.graphs import graph_outputs
from sed_trt.sed.postprocess import labels_from_probs_torch


def _smooth_probs(rng: np.random.Generator, t: int, h: int, w: int, cell: int = 8) -> np.ndarray:
    """Sigmoid maps with regions and boundaries, like a decoder's (random maps are all boundary)."""
    z = torch.from_numpy(rng.standard_normal((1, t, max(1, h // cell), max(1, w // cell))).astype(np.float32) * 3)
    return torch.sigmoid(F.interpolate(z, size=(h, w), mode="bicubic", align_corners=False))[0].numpy()


def _brute(probs: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    return labels_from_probs_torch(torch.from_numpy(probs), out_hw).numpy()


@pytest.mark.parametrize(
    "t,hw,out_hw",
    [
        (150, (192, 192), (480, 640)),  # upsampling, cells of 2-3 pixels
        (150, (192, 192), (1500, 2000)),  # large photo
        (24, (192, 192), (192, 192)),  # same size
        (37, (48, 48), (100, 150)),
        (20, (192, 192), (97, 61)),  # downsampling: many cells hold no pixel
        (5, (192, 192), (1, 1)),
        (3, (1, 1), (5, 7)),  # one cell
        (300, (24, 24), (50, 1000)),  # 9-bit labels, extreme aspect
    ],
)
def test_labels_equal_brute_force(t, hw, out_hw):
    probs = _smooth_probs(np.random.default_rng(t), t, *hw)
    got = labels_from_probs(probs, out_hw)
    want = _brute(probs, out_hw)
    assert got.shape == out_hw and got.dtype == label_dtype(t)
    assert (got == want).mean() >= 0.9999


def test_uniform_random_maps_and_exact_ties_go_to_the_lowest_class():
    rng = np.random.default_rng(0)
    probs = rng.random((40, 48, 48), dtype=np.float32)  # every cell contested
    assert (labels_from_probs(probs, (300, 200)) == _brute(probs, (300, 200))).mean() >= 0.9999
    tied = np.repeat(probs[:1], 3, axis=0)
    tied[0] *= 0.5  # class 0 loses everywhere; classes 1 and 2 are equal: argmax says 1
    assert (labels_from_probs(tied, (90, 70)) == 1).all()
    assert (_brute(tied, (90, 70)) == 1).all()


def test_class_ids_map_survivors_to_the_vocabulary():
    probs = _smooth_probs(np.random.default_rng(3), 12, 24, 24)
    kept = np.array([0, 3, 5, 7, 11, 12, 13, 20, 21, 22, 300, 399])
    got = labels_from_probs(probs, (60, 80), kept)
    np.testing.assert_array_equal(got, kept[_brute(probs, (60, 80))])
    assert got.dtype == np.uint16
    assert labels_from_probs(probs, (60, 80), kept, dtype=np.int32).dtype == np.int32


@pytest.mark.parametrize("threads", [1, 3])
def test_threads_give_the_same_labels_in_bounded_memory(threads):
    probs = _smooth_probs(np.random.default_rng(1), 64, 96, 96)
    one = labels_from_probs(probs, (500, 700), threads=1)
    np.testing.assert_array_equal(labels_from_probs(probs, (500, 700), threads=threads), one)
    tracemalloc.start()
    labels_from_probs(probs, (3000, 4000), threads=threads)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # the uint8 labels (12 MB) and small tables; brute force holds 3 GB (the kernel's own
    # scratch, a (2, w, T) slab per thread, is numba's and bounded by construction)
    assert peak < 3000 * 4000 + (4 << 20), peak / 2**20


@pytest.mark.parametrize("n_in,n_out", [(192, 427), (192, 640), (24, 768), (1000, 192), (7, 7)])
def test_source_positions_reproduce_torch_linear_resize(n_in, n_out):
    x = torch.rand(n_in, dtype=torch.float32)  # float32 weights, as torch computes them for float32 maps
    i0, lam = source_positions(n_out, n_in)
    i1 = np.minimum(i0 + 1, n_in - 1)
    ours = (1 - lam) * x.numpy()[i0] + lam * x.numpy()[i1]
    ref = F.interpolate(x[None, None], size=n_out, mode="linear", align_corners=False)[0, 0]
    # float32 source positions: torch rounds them differently by an ulp (~8e-6 at 64)
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-5)


class LabelsBackend(Backend):
    """A device-resident backend on CPU tensors that runs only the labels graph (sed.graphs)."""

    name = "labels-only"
    device_resident = True
    text_fingerprint = ""

    def __init__(self, side: int, limits: ExportLimits | None) -> None:
        super().__init__()
        self.dims = ModelDims(48, 80, 128, (64, 32, 16), (32, 16, 8), (32, 16, 8), 4, side // 8, side * 4)
        self.limits, self.pooling, self.ops, self.active = limits, 1, TorchOps(), True

    def _run(self, graph, feeds):
        spec = self.specs[graph]
        return dict(zip(spec.output_names, graph_outputs(None, graph, [feeds[n] for n in spec.input_names], pooling=1)))


def _device_labels(probs: np.ndarray, ids: np.ndarray, out_hw, limits=None) -> np.ndarray:
    """The predictor's device path (the labels graph over bands, tiles and class chunks) on CPU tensors."""
    backend = LabelsBackend(probs.shape[-1], limits)
    pred = Predictor(backend, class_chunk=None if limits is None else limits.class_chunk)
    return pred.labels(torch.from_numpy(probs)[None], ids, out_hw, 1000)


@pytest.mark.parametrize(
    "t,hw,out_hw,limits",
    [
        (150, (192, 192), (480, 640), None),
        (40, (48, 48), (300, 200), ExportLimits(class_chunk=7, label_rows=16, label_cols=64)),
        (20, (192, 192), (97, 61), ExportLimits(class_chunk=4, label_rows=5, label_cols=13)),
    ],
)
def test_labels_graph_equals_brute_force_and_host_kernel(t, hw, out_hw, limits):
    """The device form (bands of rows, tiles of columns, chunks of classes with a running
    maximum) run on CPU tensors; on a GPU the same graph runs in torch or TensorRT."""
    rng = np.random.default_rng(t)
    probs = _smooth_probs(rng, t, *hw) if t != 40 else rng.random((t, *hw), dtype=np.float32)
    ids = np.sort(rng.choice(1000, size=t, replace=False))
    got = _device_labels(probs, ids, out_hw, limits)
    assert got.dtype == np.uint16
    assert (got == ids[_brute(probs, out_hw)]).mean() >= 0.99999
    assert (got == labels_from_probs(probs, out_hw, ids)).mean() >= 0.9999


@pytest.mark.parametrize("out_hw", [(480, 640), (97, 61), (5, 7), (1500, 2000)])
def test_near_tied_maps_equal_brute_force(out_hw):
    """Random-weight models give classes with nearly equal maps: every class is a candidate
    in every cell and the labels change every few pixels."""
    rng = np.random.default_rng(5)
    base = _smooth_probs(rng, 1, 96, 96)
    probs = (base + rng.normal(0, 5e-4, (60, 96, 96))).astype(np.float32)
    assert (labels_from_probs(probs, out_hw) == _brute(probs, out_hw)).mean() >= 0.9995


def test_a_nan_probability_gives_a_kept_class_not_garbage():
    """NaN never beats the running maximum: where a whole chunk is NaN the label is the first
    kept class's id (the first chunk's labels are initialised), on the device path and the host's."""
    rng = np.random.default_rng(2)
    probs = rng.random((6, 24, 24), dtype=np.float32)
    probs[:, :8] = np.nan  # the top third of the map
    ids = np.array([7, 11, 20, 31, 40, 52])
    limits = ExportLimits(class_chunk=4, label_rows=16, label_cols=64)
    for got in (_device_labels(probs, ids, (60, 50), limits), labels_from_probs(probs, (60, 50), ids)):
        assert set(np.unique(got)) <= set(ids.tolist())
        assert (got[:15] == ids[0]).all()  # rows whose every source value is NaN


def test_labels_graph_runs_at_one_shape_per_tile_and_ties_keep_the_lower_class():
    """The last band is padded and the last class chunk overlaps the one before, so every run
    of a tile has the same input shapes (engines never switch shapes inside a photo; CUDA
    graphs replay) and there are ceil(h / R) x ceil(T / N) runs; the overlap re-sees classes
    without changing a label, ties included (argmax's lower class)."""
    rng = np.random.default_rng(9)
    probs = rng.random((21, 24, 24), dtype=np.float32)
    probs[20] = probs[3]  # a tie across the overlap: class 3 (first chunk) must keep it
    probs[9] = probs[13]  # a tie inside the overlapping chunk
    ids = np.arange(100, 121)
    limits = ExportLimits(class_chunk=8, label_rows=16, label_cols=64)
    backend = LabelsBackend(24, limits)
    shapes = []
    run = backend._run
    backend._run = lambda graph, feeds: (
        shapes.append({k: tuple(v.shape) for k, v in feeds.items()}) or run(graph, feeds)
    )
    got = Predictor(backend, class_chunk=8).labels(torch.from_numpy(probs)[None], ids, (50, 40), 1000)
    assert len(shapes) == 4 * 3  # bands of 16 rows over 50, chunks [0, 8) [8, 16) [13, 21)
    assert all(s == shapes[0] for s in shapes), {str(s) for s in shapes}
    assert shapes[0]["probs"][1] == 8 and shapes[0]["rows"] == (16,)
    assert (got == labels_from_probs(probs, (50, 40), ids)).all()  # the host kernel: same ties, same rounding
    assert (got == ids[_brute(probs, (50, 40))]).mean() >= 0.99
