"""Semantic-segmentation datasets in their standard on-disk layouts (numpy + Pillow, no torch).

Layouts are those written by the official preparation scripts of SED (inherited from
CAT-Seg / detectron2), under a root given by ``--data-root`` or ``$DETECTRON2_DATASETS``
(default ``datasets``). Labels are contiguous class ids; each dataset has one ignore value.
Internally every label map is int64 with ignored pixels set to :data:`IGNORE` (-1).

A sample is a label file and the image with the same stem: label folders hold only the
split's files (e.g. PASCAL Context val), image folders may hold more (VOC2010/JPEGImages).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sed_trt.runtime.errors import DatasetError, ImageError
from sed_trt.runtime.image import load_image

IGNORE = -1


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset's images and labels live under the root, and how to read them."""

    name: str
    vocabulary: str  # a built-in vocabulary name or a class file
    image_dir: str
    label_dir: str
    ignore_label: int
    image_ext: str = ".jpg"
    label_ext: str = ".png"


BUILTIN_DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "coco_stuff_train",
            "coco171",
            "coco-stuff/images/train2017",
            "coco-stuff/annotations_detectron2/train2017",
            255,
        ),
        DatasetSpec(
            "coco_stuff_val", "coco171", "coco-stuff/images/val2017", "coco-stuff/annotations_detectron2/val2017", 255
        ),
        DatasetSpec(
            "ade150",
            "ade150",
            "ADEChallengeData2016/images/validation",
            "ADEChallengeData2016/annotations_detectron2/validation",
            255,
        ),
        DatasetSpec(
            "ade847",
            "ade847",
            "ADE20K_2021_17_01/images_detectron2/validation",
            "ADE20K_2021_17_01/annotations_detectron2/validation",
            65535,
            label_ext=".tif",
        ),
        DatasetSpec(
            "voc20", "voc20", "VOCdevkit/VOC2012/JPEGImages", "VOCdevkit/VOC2012/annotations_detectron2/val", 255
        ),
        DatasetSpec(
            "pc59", "pc59", "VOCdevkit/VOC2010/JPEGImages", "VOCdevkit/VOC2010/annotations_detectron2/pc59_val", 255
        ),
        DatasetSpec(
            "pc459",
            "pc459",
            "VOCdevkit/VOC2010/JPEGImages",
            "VOCdevkit/VOC2010/annotations_detectron2/pc459_val",
            459,
            label_ext=".tif",
        ),
    )
}


def default_data_root() -> Path:
    """``$DETECTRON2_DATASETS`` (the official convention) or ``./datasets``."""
    return Path(os.environ.get("DETECTRON2_DATASETS", "datasets"))


IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")  # what a custom dataset's images may be


def read_label(path: str | Path, ignore_label: int, num_classes: int) -> np.ndarray:
    """A label file (8/16-bit png or tif) -> int64 (H, W) with ignored pixels = IGNORE.

    Any other value outside ``[0, num_classes)`` is a malformed dataset.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I;16", "I;16L", "I;16B", "I;16S", "I", "F"):
                raise DatasetError(f"label {str(path)!r} has mode {im.mode!r}; expected a single-channel class-id map")
            arr = np.asarray(im)
    except FileNotFoundError:
        raise DatasetError(f"label {str(path)!r} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(f"cannot read label {str(path)!r}: {exc}") from None
    if arr.dtype.kind == "f" and (not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr))):
        raise DatasetError(f"label {str(path)!r} holds non-integer values")
    labels = arr.astype(np.int64)
    labels[labels == ignore_label] = IGNORE
    bad = (labels != IGNORE) & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        vals = np.unique(labels[bad])[:5].tolist()
        raise DatasetError(
            f"label {str(path)!r} has class ids {vals} outside 0..{num_classes - 1} (ignore value {ignore_label}); is it the right dataset?"
        )
    return labels


class SegDataset:
    """(image, label) pairs of one split, matched by file stem, in sorted order."""

    def __init__(
        self,
        image_dir: str | Path,
        label_dir: str | Path,
        *,
        classes: list[str],
        ignore_label: int,
        image_ext: str | None = ".jpg",
        label_ext: str = ".png",
        name: str = "custom",
    ) -> None:
        self.name = name
        self.image_dir = Path(image_dir)
        self.label_dir = Path(label_dir)
        self.classes = classes
        self.ignore_label = ignore_label
        for what, d in (("image", self.image_dir), ("label", self.label_dir)):
            if not d.is_dir():
                raise DatasetError(f"dataset {name!r}: {what} folder {str(d)!r} does not exist")
        # A label's name is its image's stem + label_ext, which may have several dots
        # (`predict --save-labels` writes NAME.labels.png: eval against another backend's labels).
        labels = sorted(p for p in self.label_dir.iterdir() if p.name.lower().endswith(label_ext.lower()))
        if not labels:
            raise DatasetError(f"dataset {name!r}: no {label_ext} label files in {str(self.label_dir)!r}")
        pairs: list[tuple[Path, Path]] = []
        missing: list[tuple[Path, Path]] = []
        for lab in labels:
            stem = lab.name[: -len(label_ext)]
            img = self._image_for(stem, image_ext)
            (pairs if img.is_file() else missing).append((img, lab))
        if missing:
            raise DatasetError(
                f"dataset {name!r}: {len(missing)} of {len(labels)} labels have no image, e.g. {str(missing[0][0])!r}"
            )
        self.samples: list[tuple[Path, Path]] = pairs

    def _image_for(self, stem: str, image_ext: str | None) -> Path:
        """The image of a label: ``stem + image_ext``, or (no extension given) the first of the
        usual photo extensions that exists."""
        if image_ext is not None:
            return self.image_dir / (stem + image_ext)
        for ext in IMAGE_EXTS:
            for candidate in (self.image_dir / (stem + ext), self.image_dir / (stem + ext.upper())):
                if candidate.is_file():
                    return candidate
        return self.image_dir / (stem + IMAGE_EXTS[0])

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def image(self, i: int) -> np.ndarray:
        """RGB uint8 (H, W, 3); grayscale/palette JPEGs (a few in COCO and ADE) are converted."""
        try:
            return load_image(self.samples[i][0], convert=True, max_pixels=None)
        except ImageError as exc:
            raise DatasetError(str(exc)) from None

    def label(self, i: int) -> np.ndarray:
        """int64 (H, W) class ids, IGNORE where unlabelled."""
        return read_label(self.samples[i][1], self.ignore_label, self.num_classes)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The image and its label map, checked to have the same size."""
        image, label = self.image(i), self.label(i)
        if image.shape[:2] != label.shape:
            raise DatasetError(
                f"{str(self.samples[i][1])!r}: label size {label.shape} differs from image size {image.shape[:2]}"
            )
        return image, label


def open_dataset(
    name: str | None = None,
    *,
    root: str | Path | None = None,
    images: str | Path | None = None,
    labels: str | Path | None = None,
    classes: str | None = None,
    ignore_label: int | None = None,
    image_ext: str | None = None,
    label_ext: str | None = None,
) -> SegDataset:
    """A built-in dataset under ``root``, or a custom one from ``images``/``labels`` folders.

    For a custom dataset ``classes`` (a vocabulary spec) is required; any argument given
    overrides the built-in spec's value (e.g. a fine-tuning set with its own class names).
    """
    from sed_trt.runtime.vocab import load_vocabulary

    if name is not None and name not in BUILTIN_DATASETS:
        raise DatasetError(
            f"unknown dataset {name!r}; built-in: {sorted(BUILTIN_DATASETS)} (or give --images, --labels and --classes)"
        )
    spec = BUILTIN_DATASETS.get(name) if name else None
    if spec is None and (images is None or labels is None or classes is None):
        raise DatasetError("a custom dataset needs --images, --labels and --classes (or name a built-in dataset)")
    base = Path(root) if root is not None else default_data_root()
    if spec is not None and images is None and labels is None and not base.is_dir():
        raise DatasetError(
            f"dataset root {str(base)!r} does not exist; set --data-root or $DETECTRON2_DATASETS (expected {spec.image_dir} and {spec.label_dir} under it)"
        )
    return SegDataset(
        images if images is not None else base / spec.image_dir,  # type: ignore[union-attr]
        labels if labels is not None else base / spec.label_dir,  # type: ignore[union-attr]
        classes=load_vocabulary(classes if classes is not None else spec.vocabulary),  # type: ignore[union-attr]
        ignore_label=ignore_label if ignore_label is not None else (spec.ignore_label if spec else 255),
        image_ext=image_ext or (spec.image_ext if spec else None),  # custom: any usual photo extension
        label_ext=label_ext or (spec.label_ext if spec else ".png"),
        name=name or "custom",
    )
