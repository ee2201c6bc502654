"""Colour overlay of a label map with a legend of the classes present."""

from __future__ import annotations

import numpy as np

from sed_trt.runtime.postprocess import label_areas
from sed_trt.runtime.vocab import display_name


def palette(n: int) -> np.ndarray:
    """Deterministic, well-spread colours (n, 3) uint8 (golden-ratio hues)."""
    import colorsys

    cols = [
        colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65 + 0.35 * ((i // 7) % 2), 0.95 - 0.25 * ((i // 3) % 2))
        for i in range(n)
    ]
    return (np.array(cols) * 255).astype(np.uint8)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: scalable, keeps spaces
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def legend_entries(
    labels: np.ndarray, classes: list[str], *, max_legend: int = 40
) -> tuple[list[tuple[int, str]], int]:
    """(class index, "name 12.3%") for the classes present, largest area first, and how many were left out."""
    ids, counts = label_areas(labels)
    order = np.argsort(-counts, kind="stable")
    entries = [
        (int(ids[j]), f"{display_name(classes[int(ids[j])])[:26]} {100.0 * counts[j] / labels.size:.1f}%")
        for j in order[:max_legend]
    ]
    return entries, len(order) - len(entries)


def overlay(
    image: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    *,
    alpha: float = 0.5,
    max_legend: int = 40,
    banner: str | None = None,
    side_by_side: bool = False,
) -> np.ndarray:
    """Blend class colours over ``image`` and append a legend panel (sorted by area).

    The legend lists at most ``max_legend`` classes and says "+N more" for the rest;
    ``banner`` (e.g. a random-weights warning) is drawn across the top of the picture;
    ``side_by_side`` puts the untouched photo left of the overlay.
    """
    from PIL import Image, ImageDraw

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")

    colors = palette(len(classes))
    blended = (image.astype(np.float32) * (1 - alpha) + colors[labels].astype(np.float32) * alpha).astype(np.uint8)
    entries, hidden = legend_entries(labels, classes, max_legend=max_legend)
    font = _font(13)
    row, width = 18, 240
    rows = len(entries) + 1 + (1 if hidden else 0)
    h = max(image.shape[0], row * rows + 8)
    left = image.shape[1] if side_by_side else 0
    canvas = Image.new("RGB", (left + image.shape[1] + width, h), (255, 255, 255))
    if side_by_side:
        canvas.paste(Image.fromarray(image), (0, 0))
    canvas.paste(Image.fromarray(blended), (left, 0))
    draw = ImageDraw.Draw(canvas)
    if banner:
        draw.rectangle([0, 0, left + image.shape[1], row + 6], fill=(200, 0, 0))
        draw.text((6, 3), banner, fill=(255, 255, 255), font=font)
    x0 = left + image.shape[1] + 8
    draw.text((x0, 4), f"classes present ({len(entries) + hidden})", fill=(0, 0, 0), font=font)
    for i, (c, text) in enumerate(entries, 1):
        y = 4 + i * row
        draw.rectangle([x0, y + 2, x0 + 12, y + 14], fill=tuple(int(v) for v in colors[c]))
        draw.text((x0 + 18, y), text, fill=(0, 0, 0), font=font)
    if hidden:
        draw.text((x0 + 18, 4 + (len(entries) + 1) * row), f"+{hidden} more", fill=(90, 90, 90), font=font)
    return np.asarray(canvas)


# How pictures are saved, for one image and for a folder alike: JPEG/WebP at quality 95; PNG at
# zlib level 1 (a few per cent larger than Pillow's default 6, several times faster to write).
SAVE_OPTIONS: dict[str, dict[str, int]] = {
    "JPEG": {"quality": 95},
    "WEBP": {"quality": 95},
    "PNG": {"compress_level": 1},
}


def save_picture(array: np.ndarray, path: str, fmt: str, *, palette: list[int] | None = None) -> None:
    """Save an (H, W[, 3]) array as ``fmt`` (Pillow's format name) with :data:`SAVE_OPTIONS`; with
    ``palette``, a uint8 (H, W) array becomes an indexed image of those colours."""
    from PIL import Image

    im = Image.fromarray(array)
    if palette is not None:
        im.putpalette(palette)  # an "L" image becomes "P", its values the palette indices
    im.save(path, format=fmt, **SAVE_OPTIONS.get(fmt, {}))
