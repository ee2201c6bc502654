"""Synthetic segmentation datasets in the standard on-disk layouts, made by the tests.

Each image is a background region and a few rectangles, one class per region; a class is
a colour (with pixel noise), so a tiny model can learn the task in a few hundred steps.
A thin band of unlabelled pixels borders each rectangle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# Class id -> RGB colour. Ids are COCO-Stuff ids (0 person, 1 bicycle, 2 car, 3 motorcycle).
COLOURS = {0: (220, 40, 40), 1: (40, 200, 60), 2: (40, 60, 220), 3: (230, 210, 40)}


def make_sample(
    rng: np.random.Generator, h: int, w: int, class_ids: tuple[int, ...] = tuple(COLOURS), ignore: int = 255
) -> tuple[np.ndarray, np.ndarray]:
    """One (image uint8 (h, w, 3), label (h, w)) pair."""
    ids = list(class_ids)
    bg = int(rng.choice(ids))
    label = np.full((h, w), bg, dtype=np.int64)
    for _ in range(int(rng.integers(1, 4))):
        c = int(rng.choice([i for i in ids if i != bg]))
        rh, rw = int(rng.integers(h // 4, h // 2 + 1)), int(rng.integers(w // 4, w // 2 + 1))
        y, x = int(rng.integers(0, h - rh + 1)), int(rng.integers(0, w - rw + 1))
        label[max(y - 1, 0) : y + rh + 1, max(x - 1, 0) : x + rw + 1] = -1
        label[y : y + rh, x : x + rw] = c
    colours = np.array([COLOURS.get(i, (128, 128, 128)) for i in range(max(ids) + 1)], dtype=np.float64)
    image = colours[np.where(label < 0, bg, label)]
    image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
    label = np.where(label < 0, ignore, label)
    return image, label


def write_split(
    root: Path,
    image_dir: str,
    label_dir: str,
    n: int,
    *,
    seed: int,
    size: tuple[int, int] = (72, 96),
    label_ext: str = ".png",
    ignore: int = 255,
    label_dtype: type = np.uint8,
    stem: str = "img",
) -> list[str]:
    """Write ``n`` samples under ``root/image_dir`` (jpg) and ``root/label_dir``; returns the stems."""
    rng = np.random.default_rng(seed)
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    (root / label_dir).mkdir(parents=True, exist_ok=True)
    stems = []
    for i in range(n):
        h = size[0] + int(rng.integers(0, 9))
        image, label = make_sample(rng, h, size[1], ignore=ignore)
        name = f"{stem}{i:05d}"
        Image.fromarray(image).save(root / image_dir / f"{name}.jpg", quality=95)
        Image.fromarray(label.astype(label_dtype)).save(root / label_dir / f"{name}{label_ext}")
        stems.append(name)
    return stems


def write_calibration_photos(image: np.ndarray, out: Path, n: int, *, seed: int = 0) -> Path:
    """``n`` photos for int8 calibration made from ``image``: crops of 3/4 of it, mirrored every
    other one, with brightness changes and pixel noise (names in the order they are taken)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    h, w = image.shape[:2]
    for k in range(n):
        y, x = int(rng.integers(0, h // 4 + 1)), int(rng.integers(0, w // 4 + 1))
        crop = image[y : y + 3 * h // 4, x : x + 3 * w // 4]
        crop = crop[:, ::-1] if k % 2 else crop
        crop = np.clip(crop * rng.uniform(0.7, 1.3) + rng.normal(0, 6, crop.shape), 0, 255).astype(np.uint8)
        Image.fromarray(crop).save(out / f"calib{k:03d}.jpg", quality=92)
    return out
