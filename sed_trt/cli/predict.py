"""``sed-trt predict``: segment one image."""

from __future__ import annotations

import argparse

import numpy as np

from runtime.fsutil import atomic_write, check_outputs
from runtime.vocab import names_file
from sed_trt.cli.args import (
    add_classes_arg,
    add_image_args,
    add_model_args,
    add_runtime_args,
    add_subcommand,
    make_backend,
    make_cache,
    unit_float,
)


def _save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # a file object: given a name, numpy would append ".npz"
        np.savez_compressed(f, **arrays)  # type: ignore[arg-type]  # numpy's stub reads ** as allow_pickle


def run(args: argparse.Namespace) -> int:
    """Segment one image into the given classes."""
    from runtime.image import load_image
    from runtime.predictor import Predictor
    from runtime.vocab import display_name, load_vocabulary

    classes_file = args.classes if names_file(args.classes) else None
    check_outputs(
        {"--out": args.out, "--save-npz": args.save_npz},
        {"--image": args.image, "--weights": args.weights, "--classes": classes_file},
    )
    classes = load_vocabulary(args.classes)
    image = load_image(args.image, max_pixels=args.max_pixels)
    backend = make_backend(args)
    with backend:
        predictor = Predictor(
            backend, topk=args.topk, cache=make_cache(args), progress=not args.quiet, class_chunk=args.class_chunk
        )
        predictor.set_classes(classes)
        pred = predictor.predict(image)
    written = []
    if args.save_npz:
        arrays = {
            "probs": pred.probs.astype(np.float32),
            "labels": pred.labels.astype(np.int32),
            "kept": pred.kept,
            "classes": np.array(classes, dtype=str),
        }
        written.append(atomic_write(args.save_npz, lambda tmp: _save_npz(tmp, arrays)))
    if args.out:
        from PIL import Image

        from runtime.visualize import overlay

        banner = "RANDOM WEIGHTS: this segmentation is meaningless (no --weights)" if backend.random_weights else None
        vis = overlay(image, pred.labels, classes, alpha=args.alpha, banner=banner, side_by_side=args.side_by_side)
        written.append(atomic_write(args.out, lambda tmp: Image.fromarray(vis).save(tmp, format="PNG")))
    ids, counts = np.unique(pred.labels, return_counts=True)
    top = ", ".join(
        f"{display_name(classes[i])} {100 * c / pred.labels.size:.1f}%"
        for i, c in sorted(zip(ids, counts), key=lambda x: -x[1])[:8]
    )
    print(
        f"{len(classes)} classes, kept {int(pred.kept.sum())} (per stage {pred.survivors}); {pred.timings['total_ms']:.0f} ms; present: {top}"
    )
    print(f"wrote {', '.join(map(str, written))}" if written else "wrote nothing (no --out or --save-npz given)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = add_subcommand(sub, "predict", run)
    add_model_args(p)
    add_runtime_args(p)
    add_image_args(p)
    add_classes_arg(p)
    p.add_argument("--out", default=None, help="PNG colour overlay with a legend")
    p.add_argument("--alpha", type=unit_float, default=0.5, help="opacity of the class colours in --out")
    p.add_argument("--side-by-side", action="store_true", help="--out shows the photo and the overlay side by side")
    p.add_argument(
        "--save-npz", default=None, help="NPZ with probs (T,192,192), labels (H0,W0), kept (T,), classes (T,)"
    )
