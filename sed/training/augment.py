"""Training augmentation of the official mapper, in numpy + Pillow.

Order (MaskFormerSemanticDatasetMapper): ResizeShortestEdge(768 choice, max 2666) ->
random 768x768 crop -> SSD colour jitter -> horizontal flip -> pad to 768 with image 128
and label IGNORE. Every random draw comes from the ``numpy.random.Generator`` passed in,
so a sample's augmentation is a function of its seed (exact resume, any worker count).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sed_trt.runtime.datasets import IGNORE
from sed_trt.runtime.image import shortest_edge_size


@dataclass(frozen=True)
class AugmentConfig:
    """The official training augmentation (sizes in pixels)."""

    crop_size: int = 768
    min_sizes: tuple[int, ...] = (768,)
    max_size: int = 2666
    color_aug: bool = True
    flip: bool = True
    pad_value: int = 128
    brightness_delta: float = 32.0
    contrast: tuple[float, float] = (0.5, 1.5)
    saturation: tuple[float, float] = (0.5, 1.5)
    hue_delta: int = 18  # in OpenCV's 0..180 hue units, as the official transform


def resize_label_nearest(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a class-id map (pixel-centre sampling, as PIL NEAREST)."""
    h, w = label.shape
    oh, ow = size
    ys = np.minimum(((np.arange(oh) + 0.5) * h / oh).astype(np.int64), h - 1)
    xs = np.minimum(((np.arange(ow) + 0.5) * w / ow).astype(np.int64), w - 1)
    return label[ys[:, None], xs[None, :]]


def _convert(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def color_aug_ssd(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """SSD photometric distortion: brightness, then contrast before or after saturation+hue.

    Each part is applied with probability 1/2. HSV conversion uses Pillow (hue on a 0..255
    circle) where the official code uses OpenCV (0..180); the hue shift is scaled to match.
    """
    from PIL import Image

    def saturation_hue(img: np.ndarray) -> np.ndarray:
        if rng.integers(2):
            hsv = np.array(Image.fromarray(img).convert("HSV"))
            hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(*cfg.saturation))
            img = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))
        if rng.integers(2):
            hsv = np.array(Image.fromarray(img).convert("HSV"))
            shift = int(round(rng.integers(-cfg.hue_delta, cfg.hue_delta + 1) * 256 / 180))
            hsv[..., 0] = ((hsv[..., 0].astype(np.int64) + shift) % 256).astype(np.uint8)
            img = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))
        return img

    def contrast(img: np.ndarray) -> np.ndarray:
        return _convert(img, alpha=rng.uniform(*cfg.contrast)) if rng.integers(2) else img

    if rng.integers(2):
        image = _convert(image, beta=rng.uniform(-cfg.brightness_delta, cfg.brightness_delta))
    if rng.integers(2):
        image = saturation_hue(contrast(image))
    else:
        image = contrast(saturation_hue(image))
    return image


def augment(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 and (H, W) int64 -> (C, C, 3) uint8 and (C, C) int64, C = crop_size."""
    from PIL import Image

    h, w = label.shape
    short = int(rng.choice(cfg.min_sizes))
    nh, nw = shortest_edge_size(h, w, short, cfg.max_size)
    if (nh, nw) != (h, w):
        image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR))
        label = resize_label_nearest(label, (nh, nw))
    c = cfg.crop_size
    ch, cw = min(c, nh), min(c, nw)
    y0, x0 = int(rng.integers(nh - ch + 1)), int(rng.integers(nw - cw + 1))
    image, label = image[y0 : y0 + ch, x0 : x0 + cw], label[y0 : y0 + ch, x0 : x0 + cw]
    if cfg.color_aug:
        image = color_aug_ssd(np.ascontiguousarray(image), rng, cfg)
    if cfg.flip and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    out_img = np.full((c, c, 3), cfg.pad_value, dtype=np.uint8)
    out_lab = np.full((c, c), IGNORE, dtype=np.int64)
    out_img[:ch, :cw], out_lab[:ch, :cw] = image, label
    return out_img, out_lab
