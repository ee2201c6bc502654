"""Datasets in their standard layouts: pairing, label decoding, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sed_trt.runtime.datasets import BUILTIN_DATASETS, IGNORE, open_dataset, read_label
from sed_trt.runtime.errors import DatasetError
from tests.synthetic import write_split


def _layout(root: Path, name: str, n: int = 3, **kw: object) -> None:
    spec = BUILTIN_DATASETS[name]
    dtype = np.uint16 if spec.label_ext == ".tif" else np.uint8
    write_split(
        root,
        spec.image_dir,
        spec.label_dir,
        n,
        seed=1,
        label_ext=spec.label_ext,
        ignore=spec.ignore_label,
        label_dtype=dtype,
        **kw,
    )


@pytest.mark.parametrize("name", sorted(BUILTIN_DATASETS))
def test_builtin_layouts(tmp_path: Path, name: str) -> None:
    _layout(tmp_path, name)
    ds = open_dataset(name, root=tmp_path)
    assert (
        len(ds) == 3
        and ds.num_classes
        == {
            "coco_stuff_train": 171,
            "coco_stuff_val": 171,
            "ade150": 150,
            "ade847": 847,
            "voc20": 20,
            "pc59": 59,
            "pc459": 459,
        }[name]
    )
    image, label = ds.load(0)
    assert image.dtype == np.uint8 and image.shape[2] == 3 and label.shape == image.shape[:2]
    assert (label == IGNORE).any() and set(np.unique(label[label != IGNORE])) <= {0, 1, 2, 3}


def test_sixteen_bit_tif_ignore_values(tmp_path: Path) -> None:
    # ADE-847 ignores 65535, PC-459 ignores 459 (a valid id elsewhere); id 846 must survive
    arr = np.array([[0, 846, 65535], [459, 3, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "a.tif")
    np.testing.assert_array_equal(read_label(tmp_path / "a.tif", 65535, 847), [[0, 846, IGNORE], [459, 3, IGNORE]])
    arr = np.array([[0, 458, 459]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "b.tif")
    np.testing.assert_array_equal(read_label(tmp_path / "b.tif", 459, 459), [[0, 458, IGNORE]])


def test_images_folder_may_hold_more_than_the_split(tmp_path: Path) -> None:
    _layout(tmp_path, "pc59", n=4)
    spec = BUILTIN_DATASETS["pc59"]
    (tmp_path / spec.label_dir / "img00003.png").unlink()
    assert len(open_dataset("pc59", root=tmp_path)) == 3


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist; set --data-root"):
        open_dataset("ade150", root=tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="image folder .* does not exist"):
        open_dataset("ade150", root=tmp_path)
    with pytest.raises(DatasetError, match="unknown dataset"):
        open_dataset("cityscapes", root=tmp_path)
    with pytest.raises(DatasetError, match="needs --images, --labels and --classes"):
        open_dataset(None, images=tmp_path)
    _layout(tmp_path, "voc20")
    spec = BUILTIN_DATASETS["voc20"]
    (tmp_path / spec.image_dir / "img00001.jpg").unlink()
    with pytest.raises(DatasetError, match="1 of 3 labels have no image"):
        open_dataset("voc20", root=tmp_path)
    # a label id beyond the vocabulary: wrong dataset or wrong class list
    bad = tmp_path / "bad"
    write_split(bad, "im", "lab", 1, seed=0)
    ds = open_dataset(None, images=bad / "im", labels=bad / "lab", classes="a,b")
    with pytest.raises(DatasetError, match=r"outside 0\.\.1"):
        ds.label(0)
    (bad / "lab" / "img00000.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="cannot read label"):
        ds.label(0)
    rgb = tmp_path / "rgb"
    (rgb / "lab").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(rgb / "lab" / "x.png")
    with pytest.raises(DatasetError, match="single-channel"):
        read_label(rgb / "lab" / "x.png", 255, 3)


def test_custom_dataset_and_env_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_split(tmp_path / "mine", "images", "labels", 2, seed=3)
    ds = open_dataset(
        None, images=tmp_path / "mine" / "images", labels=tmp_path / "mine" / "labels", classes="red,green,blue,yellow"
    )
    assert ds.classes == ["red", "green", "blue", "yellow"] and len(ds) == 2
    _layout(tmp_path, "ade150", n=2)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    assert len(open_dataset("ade150")) == 2
