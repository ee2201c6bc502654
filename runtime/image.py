"""Image pre- and post-processing in numpy + Pillow, as the official pipeline does it.

Pre-processing: RGB uint8 -> ResizeShortestEdge(640, max 2560) with PIL bilinear
(antialiased), then the graphs normalise with CLIP statistics and resize to 768x768.
Post-processing (probabilities -> labels) lives in runtime.postprocess.
"""

from __future__ import annotations

import io
import logging
import stat
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from sed_trt.runtime.errors import ImageError
from sed_trt.runtime.fsutil import require_regular_file

log = logging.getLogger("sed_trt")

SHORT_SIDE = 640
MAX_SIDE = 2560
# OpenAI CLIP statistics in the 0-255 scale, RGB.
CLIP_PIXEL_MEAN = (122.7709383, 116.7460125, 104.09373615)
CLIP_PIXEL_STD = (68.5005327, 66.6321579, 70.3231630)
# Largest image accepted by default (w * h): 250 megapixels, ~750 MB decoded. Pillow's own
# decompression-bomb limit (179 MP) is replaced by this explicit, adjustable one.
DEFAULT_MAX_PIXELS = 250_000_000
# A served image's default limit: 50 MP (a 8660x5770 photo). A server refuses larger ones per row,
# before any copy or work (sed-trt serve --max-pixels raises it).
DEFAULT_SERVE_MAX_PIXELS = 50_000_000

_PIL_LIMIT_LOCK = threading.Lock()
MAX_PIPE_BYTES = 1 << 30  # an image read from a pipe (<(...), /dev/stdin) is read whole, up to this


def _image_source(path: str | Path) -> Path | io.BytesIO:
    """A regular file's path, or a pipe's bytes (read whole, bounded): devices and sockets are
    refused (they would block or never end), as are loops of links, in one line."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except OSError:
        return require_regular_file(p, "image", ImageError)  # the one-line reason
    if not stat.S_ISFIFO(mode):
        return require_regular_file(p, "image", ImageError)
    with open(p, "rb") as f:
        data = f.read(MAX_PIPE_BYTES + 1)
    if len(data) > MAX_PIPE_BYTES:
        raise ImageError(f"image {str(path)!r}: more than {MAX_PIPE_BYTES >> 20} MB from a pipe")
    return io.BytesIO(data)


def _largest_frame(im: Any) -> None:
    """Seek a multi-frame image (TIFF pages, icons) to its largest frame."""
    frames = getattr(im, "n_frames", 1)
    if frames <= 1:
        return
    sizes = []
    for i in range(min(frames, 64)):
        im.seek(i)
        sizes.append(im.size[0] * im.size[1])
    im.seek(int(np.argmax(sizes)))


def load_image(path: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, convert: bool = False) -> np.ndarray:
    """Read an image file (EXIF orientation applied) as RGB uint8 (H, W, 3): the one decoding rule.

    The size is checked from the header, before decoding, against ``max_pixels``. A non-RGB
    image is an error unless ``convert`` (datasets: a few COCO/ADE JPEGs are grayscale or
    palette), since a silent conversion of a user's photo could hide a wrong file.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    source = _image_source(path)
    caught: list[warnings.WarningMessage] = []
    try:
        # Pillow's warnings (EXIF... from the open on): one line each, ours
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with _PIL_LIMIT_LOCK:  # our limit replaces Pillow's global one for this open only
                saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
                try:
                    im = Image.open(source)
                finally:
                    Image.MAX_IMAGE_PIXELS = saved
            with im:
                _largest_frame(im)  # a multi-page TIFF may open on a thumbnail
                w, h = im.size
                check_pixels(h, w, max_pixels, f"image {str(path)!r}")
                upright: Image.Image = ImageOps.exif_transpose(im)
                upright.load()
        for message in dict.fromkeys(str(c.message).strip().splitlines()[0] for c in caught if str(c.message).strip()):
            log.warning("image %s: %s", path, message)
        if convert and upright.mode != "RGB":
            upright = upright.convert("RGB")
        mode = upright.mode
        if mode != "RGB":
            raise ImageError(
                f"image {str(path)!r} has mode {mode!r}; expected an RGB image (convert it first, e.g. Image.convert('RGB'))"
            )
        return np.asarray(upright, dtype=np.uint8).copy()
    except MemoryError:
        raise ImageError(f"image {str(path)!r} does not fit in memory; lower --max-pixels or resize it") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageError):
            raise
        raise ImageError(f"cannot read image {str(path)!r}: not a readable image file") from None


def _pixels(n: int) -> str:
    return f"{n / 1e6:.4g} megapixels" if n >= 100_000 else f"{n} pixels"


def check_pixels(h: int, w: int, max_pixels: int | None, what: str = "image") -> None:
    """The one pixel limit, for files, arrays and served requests alike (checked before any work)."""
    if max_pixels is not None and h * w > max_pixels:
        raise ImageError(
            f"{what} is {w}x{h} ({_pixels(h * w)}), above the limit of {_pixels(max_pixels)}; "
            "raise it with --max-pixels if the machine has the memory"
        )


def check_image(image: np.ndarray, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Validate an in-memory image: uint8 (H, W, 3), at most ``max_pixels`` (width x height)."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise ImageError(f"image | got shape {shape} | expected (H, W, 3) RGB")
    check_pixels(image.shape[0], image.shape[1], max_pixels)
    if image.dtype != np.uint8:
        raise ImageError(f"image | got dtype {image.dtype} | expected uint8")
    if min(image.shape[:2]) < 1:
        raise ImageError(f"image | got shape {image.shape} | expected a non-empty image")
    return image


def shortest_edge_size(h: int, w: int, short: int = SHORT_SIDE, max_size: int = MAX_SIDE) -> tuple[int, int]:
    """detectron2 ResizeShortestEdge output size (rounding int(x + 0.5))."""
    scale = short / min(h, w)
    newh, neww = (short, scale * w) if h < w else (scale * h, short)
    if max(newh, neww) > max_size:
        rescale = max_size / max(newh, neww)
        newh, neww = newh * rescale, neww * rescale
    return int(newh + 0.5), int(neww + 0.5)


def resize_shortest_edge(image: np.ndarray, short: int = SHORT_SIDE, max_size: int = MAX_SIDE) -> np.ndarray:
    """PIL bilinear resize (antialiased when shrinking), as detectron2's ResizeTransform."""
    from PIL import Image

    h, w = image.shape[:2]
    newh, neww = shortest_edge_size(h, w, short, max_size)
    if (newh, neww) == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((neww, newh), Image.Resampling.BILINEAR))


def source_positions(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output index: the low-resolution cell (i0, its upper corner min(i0 + 1, n - 1)) and
    the weight of that upper corner, as torch's bilinear (align_corners=False) computes them:
    float32 scale in / out, the source position ``scale * (i + 0.5) - 0.5`` rounded once (torch's
    kernels compute it with a fused multiply-add), clamped at 0."""
    scale = np.float32(np.float32(in_size) / np.float32(out_size))
    centres = np.arange(out_size, dtype=np.float32) + np.float32(0.5)
    src = np.maximum((np.float64(scale) * centres.astype(np.float64) - 0.5).astype(np.float32), np.float32(0))
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    lam: np.ndarray = (src - i0.astype(np.float32)).astype(np.float32)
    lam[i0 == in_size - 1] = 0  # the last cell has one corner row: all weight on it
    return i0, lam


def canvas_positions(h: int, w: int, size: int) -> dict[str, np.ndarray]:
    """Where the graphs' (size, size) canvas reads an (h, w) photo: per canvas row and column its
    two source rows (columns) (2, size) and the second one's weight (size,), as ``F.interpolate``."""
    iy, ly = source_positions(size, h)
    ix, lx = source_positions(size, w)
    return {
        "canvas_rows": np.stack([iy, np.minimum(iy + 1, h - 1)]),
        "canvas_row_weights": ly,
        "canvas_cols": np.stack([ix, np.minimum(ix + 1, w - 1)]),
        "canvas_col_weights": lx,
    }


def preprocess(images: list[np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Host-side pre-processing of a batch: validate, shortest-edge resize, pad to the largest,
    and each photo's canvas positions: the image encoder's feeds ``image`` (B, 3, H, W) float32
    raw 0-255 values (the graphs normalise) and ``canvas_*``."""
    resized = [resize_shortest_edge(check_image(im)) for im in images]
    h = max(r.shape[0] for r in resized)
    w = max(r.shape[1] for r in resized)
    batch = np.zeros((len(resized), 3, h, w), dtype=np.float32)
    tables: dict[str, list[np.ndarray]] = {}
    for b, r in enumerate(resized):
        batch[b, :, : r.shape[0], : r.shape[1]] = r.transpose(2, 0, 1)  # H W 3 -> 3 H W
        for name, table in canvas_positions(r.shape[0], r.shape[1], size).items():
            tables.setdefault(name, []).append(table)
    return {"image": batch, **{name: np.stack(t) for name, t in tables.items()}}
