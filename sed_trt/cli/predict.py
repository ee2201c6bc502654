"""``sed-trt predict``: segment one image."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from sed_trt.cli.args import (
    add_classes_arg,
    add_image_args,
    add_model_args,
    add_runtime_args,
    add_subcommand,
    deployment_from_args,
    positive_int,
    unit_float,
)
from sed_trt.cli.many import FORMATS, RANDOM_BANNER, result_arrays
from sed_trt.runtime.errors import ConfigError
from sed_trt.runtime.fsutil import atomic_write, check_outputs, write_npz
from sed_trt.runtime.postprocess import label_areas
from sed_trt.runtime.sources import is_many
from sed_trt.runtime.vocab import names_file


def image_format(path: str) -> str:
    """Pillow's format for an output name's suffix (``.png``, ``.jpg``, ``.webp``...), or a ConfigError."""
    from PIL import Image

    suffix = Path(path).suffix.lower()
    formats = Image.registered_extensions()
    if suffix not in formats or formats[suffix] not in Image.SAVE:
        known = sorted(s for s, f in formats.items() if f in ("PNG", "JPEG", "WEBP", "BMP", "TIFF"))
        raise ConfigError(f"--out {path!r}: unknown image type {suffix or '(no suffix)'!r}; use one of {known}")
    return formats[suffix]


def write_results(
    args: argparse.Namespace,
    image: np.ndarray,
    classes: list[str],
    labels: np.ndarray,
    kept: np.ndarray,
    probs: np.ndarray | None,
    *,
    random_weights: bool,
) -> list[object]:
    """Write ``--save-npz`` and ``--out`` (overlay) as asked; returns the paths written."""
    written: list[object] = []
    if args.save_npz:
        arrays = result_arrays(labels, kept, classes, probs)
        written.append(atomic_write(args.save_npz, lambda tmp: write_npz(tmp, arrays)))
    if args.out:
        from sed_trt.runtime.visualize import overlay, save_picture

        banner = RANDOM_BANNER if random_weights else None
        vis = overlay(image, labels, classes, alpha=args.alpha, banner=banner, side_by_side=args.side_by_side)
        fmt = image_format(args.out)
        written.append(atomic_write(args.out, lambda tmp: save_picture(vis, tmp, fmt)))
    return written


def wrote_line(written: list[object]) -> str:
    return f"wrote {', '.join(map(str, written))}" if written else "wrote nothing (no --out or --save-npz given)"


def summary(classes: list[str], labels: np.ndarray, kept: np.ndarray) -> str:
    """Vocabulary size, kept classes and the 8 largest classes present."""
    from sed_trt.runtime.vocab import display_name, printable

    ids, counts = label_areas(labels)
    top = ", ".join(
        f"{printable(display_name(classes[i]))} {100 * c / labels.size:.1f}%"
        for i, c in sorted(zip(ids, counts), key=lambda x: -x[1])[:8]
    )
    return f"{len(classes)} classes, kept {int(kept.sum())}; present: {top}"


def add_output_args(p: argparse.ArgumentParser, *, many: bool = False) -> None:
    p.add_argument("--out", default=None, help="colour overlay with a legend (.png, .jpg, .webp: by the suffix)")
    p.add_argument("--alpha", type=unit_float, default=0.5, help="opacity of the class colours in --out")
    p.add_argument("--side-by-side", action="store_true", help="--out shows the photo and the overlay side by side")
    help_npz = "NPZ with probs (T,192,192), labels (H0,W0), kept (T,), classes (T,)"
    if many:
        p.add_argument(
            "--save-npz", nargs="?", const=True, default=None, help=help_npz + "; with --out-dir: no file name"
        )
    else:
        p.add_argument("--save-npz", default=None, help=help_npz)


def read_request(
    args: argparse.Namespace, image: str | None = None, **inputs: str | None
) -> tuple[list[str], np.ndarray]:
    """Check ``--out``/``--save-npz`` against every input file, then load (classes, image)."""
    from sed_trt.runtime.image import load_image
    from sed_trt.runtime.vocab import load_vocabulary

    image = image or args.image
    if args.save_npz is True:
        raise ConfigError("--save-npz needs a file name with one input (or use --out-dir)")
    classes_file = args.classes if names_file(args.classes) else None
    check_outputs(
        {"--out": args.out, "--save-npz": args.save_npz},
        {"--image": image, **inputs, "--classes": classes_file},
    )
    if args.out:
        image_format(args.out)  # an unknown image type is refused before any work
    return load_vocabulary(args.classes), load_image(image, max_pixels=args.max_pixels)


def run(args: argparse.Namespace) -> int:
    """Segment one image into the given classes."""
    started = time.perf_counter()
    deployment = deployment_from_args(args, batch_size=args.batch_size)
    deployment.check_files()  # a missing checkpoint is said before any heavy import
    if is_many(args.image) or args.out_dir:
        from sed_trt.cli.many import run_many
        from sed_trt.runtime.vocab import load_vocabulary

        return run_many(args, deployment, load_vocabulary(args.classes))
    classes, image = read_request(args, args.image[0], **{"--weights": args.weights})
    backend = deployment.open_backend()
    with backend:
        predictor = deployment.predictor(backend, progress=not args.quiet)
        predictor.set_classes(classes)
        pred = predictor.predict(image)
        probs = pred.probs if args.save_npz else None  # fetched from the backend only when saved
    written = write_results(args, image, classes, pred.labels, pred.kept, probs, random_weights=backend.random_weights)
    run_s = time.perf_counter() - started
    print(
        f"{summary(classes, pred.labels, pred.kept)}; per stage {pred.survivors}; "
        f"segmentation {pred.timings['total_ms']:.0f} ms; whole run {run_s:.1f} s (with model load and text features)"
    )
    print(wrote_line(written))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = add_subcommand(sub, "predict", run)
    add_model_args(p)
    add_runtime_args(p)
    add_image_args(p, many=True)
    add_classes_arg(p)
    add_output_args(p, many=True)
    p.add_argument("--out-dir", default=None, help="many inputs: where each input's outputs go (OUT/rel/name.*)")
    p.add_argument("--out-format", choices=sorted(FORMATS), default="png", help="many inputs: the overlays' format")
    p.add_argument(
        "--save-labels",
        action="store_true",
        help="many inputs: also OUT/rel/name.labels.png (indexed, overlay colours)",
    )
    p.add_argument(
        "--skip-existing", action="store_true", help="many inputs: skip inputs whose outputs exist (resume a run)"
    )
    p.add_argument("--frame-stride", type=positive_int, default=1, help="videos: segment every N-th frame")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="images per model call (default 1; at most the engines' max batch)",
    )
