"""mIoU: a hand-computed fixture, and evaluation of a predictor over a dataset."""

from __future__ import annotations

import numpy as np
import pytest

from sed_trt.runtime.datasets import IGNORE
from sed_trt.runtime.evaluate import ConfusionMatrix, compute_metrics, format_table


def test_hand_computed_miou() -> None:
    # 4 classes; class 3 never in the ground truth but predicted once; 2 ignored pixels
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, IGNORE, IGNORE]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 1, 3], [2, 0, 0, 0]])
    conf = ConfusionMatrix(4)
    conf.update(pred, gt)
    # conf[gt, pred]: gt0 -> pred 0,1,0,0; gt1 -> 1,1,1,3; gt2 -> 2,0; ignored pixels dropped
    expected = np.array([[3, 1, 0, 0], [0, 3, 0, 1], [1, 0, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(conf.matrix, expected)
    m = compute_metrics(conf)
    # IoU = tp / (gt + pred - tp): class0 3/(4+4-3), class1 3/(4+4-3), class2 1/(2+1-1); class3 absent
    np.testing.assert_allclose(m.iou[:3], [60.0, 60.0, 50.0])
    assert np.isnan(m.iou[3]) and np.isnan(m.acc[3])
    assert m.miou == pytest.approx((60 + 60 + 50) / 3)
    np.testing.assert_allclose(m.acc[:3], [75.0, 75.0, 50.0])
    assert m.macc == pytest.approx(200 / 3)
    assert m.pacc == pytest.approx(70.0)  # 7 of 10 labelled pixels
    assert m.fwiou == pytest.approx(0.4 * 60 + 0.4 * 60 + 0.2 * 50)
    table = format_table(m, ["a", "b", "c", "d"])
    assert "| a | 60.00 | 75.00 | 4 |" in table and "| d |" not in table and "mIoU 56.67" in table


def test_perfect_and_accumulated() -> None:
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, size=(2, 16, 16))
    conf = ConfusionMatrix(5)
    for g in gt:
        conf.update(g, g)
    m = compute_metrics(conf)
    assert m.miou == 100.0 and m.pacc == 100.0
    assert m.pixels.sum() == gt.size


def test_shape_mismatch_and_empty() -> None:
    conf = ConfusionMatrix(2)
    with pytest.raises(ValueError, match="differ in size"):
        conf.update(np.zeros((2, 2), int), np.zeros((2, 3), int))
    conf.update(np.zeros((2, 2), int), np.full((2, 2), IGNORE))
    with pytest.raises(ValueError, match="no labelled pixel"):
        compute_metrics(conf)


def test_eval_against_another_backends_labels(small_engine_dir, tmp_path, capsys):
    """A reduced-precision path measured as mIoU against fp32 predictions taken as ground truth:
    `predict --save-labels` writes NAME.labels.png, and eval reads them with --label-ext
    .labels.png beside photos of any usual extension. The same backend scores 100 %."""
    import json

    import numpy as np
    from PIL import Image

    from sed_trt.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i, ext in enumerate((".png", ".jpg", ".png")):
        Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 56, 3), dtype=np.uint8)).save(photos / f"p{i}{ext}")
    engine = ["--engine-dir", str(small_engine_dir), "--classes", "voc20", "--quiet"]
    assert main(["predict", *engine, "--image", str(photos), "--out-dir", str(tmp_path / "ref"), "--save-labels"]) == 0
    assert sorted(p.name for p in (tmp_path / "ref").glob("*.labels.png")) == [f"p{i}.labels.png" for i in range(3)]
    rows = {}
    for backend in ("onnxruntime", "openvino"):
        out = tmp_path / f"{backend}.json"
        args = ["eval", "--backend", backend, *engine, "--images", str(photos), "--labels", str(tmp_path / "ref")]
        assert main([*args, "--label-ext", ".labels.png", "--out-json", str(out)]) == 0
        rows[backend] = json.loads(out.read_text())
    capsys.readouterr()
    assert rows["onnxruntime"]["images"] == 3 and rows["onnxruntime"]["pACC"] == rows["onnxruntime"]["mIoU"] == 100
    assert 99 <= rows["openvino"]["pACC"] <= 100  # another fp32 runtime: near-ties may flip
