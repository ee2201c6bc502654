"""Colour overlay of a label map with a legend of the classes present."""

from __future__ import annotations

import numpy as np

from runtime.vocab import display_name


def palette(n: int) -> np.ndarray:
    """Deterministic, well-spread colours (n, 3) uint8 (golden-ratio hues)."""
    import colorsys

    cols = [colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65 + 0.35 * ((i // 7) % 2), 0.95 - 0.25 * ((i // 3) % 2)) for i in range(n)]
    return (np.array(cols) * 255).astype(np.uint8)


def overlay(image: np.ndarray, labels: np.ndarray, classes: list[str], *, alpha: float = 0.5, max_legend: int = 40) -> np.ndarray:
    """Blend class colours over ``image`` and append a legend panel (sorted by area)."""
    from PIL import Image, ImageDraw, ImageFont

    colors = palette(len(classes))
    blended = (image.astype(np.float32) * (1 - alpha) + colors[labels].astype(np.float32) * alpha).astype(np.uint8)
    ids, counts = np.unique(labels, return_counts=True)
    order = ids[np.argsort(-counts)][:max_legend]
    font = ImageFont.load_default()
    row = 16
    width = 220
    h = max(image.shape[0], row * (len(order) + 1) + 8)
    canvas = Image.new("RGB", (image.shape[1] + width, h), (255, 255, 255))
    canvas.paste(Image.fromarray(blended), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0 = image.shape[1] + 8
    draw.text((x0, 4), "classes present", fill=(0, 0, 0), font=font)
    for i, c in enumerate(order, 1):
        y = 4 + i * row
        draw.rectangle([x0, y + 2, x0 + 12, y + 12], fill=tuple(int(v) for v in colors[c]))
        pct = 100.0 * counts[ids == c][0] / labels.size
        draw.text((x0 + 18, y), f"{display_name(classes[c])[:24]} {pct:.1f}%", fill=(0, 0, 0), font=font)
    return np.asarray(canvas)
