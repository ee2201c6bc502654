"""``sed-trt eval``: mIoU of any backend over a dataset in its standard layout."""

from __future__ import annotations

import argparse

from sed_trt.cli.args import add_model_args, add_runtime_args, add_subcommand, deployment_from_args, positive_int
from sed_trt.runtime.datasets import SegDataset


def add_dataset_args(p: argparse.ArgumentParser, default: str | None) -> None:
    from sed_trt.runtime.datasets import BUILTIN_DATASETS

    tail = f" (default {default}, unless --images/--labels name a custom one)" if default else ""
    p.add_argument(
        "--dataset", default=None, help=f"built-in dataset in its standard layout: {', '.join(BUILTIN_DATASETS)}{tail}"
    )
    p.set_defaults(default_dataset=default)
    p.add_argument(
        "--data-root", default=None, help="folder holding the datasets (default: $DETECTRON2_DATASETS or ./datasets)"
    )
    p.add_argument("--images", default=None, help="custom dataset: image folder (overrides the built-in layout)")
    p.add_argument("--labels", default=None, help="custom dataset: label folder (class-id png/tif, same file stems)")
    p.add_argument(
        "--classes", default=None, help="class names (vocabulary name, file or list); default: the dataset's"
    )
    p.add_argument(
        "--ignore-label",
        type=int,
        default=None,
        help="label value of unlabelled pixels (default: the dataset's, 255 for custom)",
    )
    p.add_argument("--label-ext", default=None, help="label file extension for a custom dataset (.png, .tif)")


def open_dataset_args(args: argparse.Namespace) -> SegDataset:
    from sed_trt.runtime.datasets import open_dataset

    name = args.dataset
    if name is None and args.images is None and args.labels is None:
        name = args.default_dataset
    return open_dataset(
        name,
        root=args.data_root,
        images=args.images,
        labels=args.labels,
        classes=args.classes,
        ignore_label=args.ignore_label,
        label_ext=args.label_ext,
    )


def run(args: argparse.Namespace) -> int:
    """mIoU / pixel accuracy of a backend (torch, onnxruntime, tensorrt) over a dataset, with a per-class table."""
    import json
    from pathlib import Path

    from sed_trt.runtime.evaluate import evaluate, format_table
    from sed_trt.runtime.fsutil import atomic_write, check_outputs

    check_outputs({"--out-json": args.out_json}, {"--weights": args.weights})
    dataset = open_dataset_args(args)
    deployment = deployment_from_args(args)
    backend = deployment.open_backend()
    with backend:
        predictor = deployment.predictor(backend, progress=not args.quiet)
        metrics, _ = evaluate(predictor, dataset, limit=args.limit, progress=not args.quiet)
    if metrics is None:
        from sed_trt.runtime.errors import DatasetError

        raise DatasetError(f"dataset {dataset.name!r}: the evaluated images have no labelled pixel")
    n = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    title = f"{dataset.name}: {n} images, {len(dataset.classes)} classes, backend {backend.label}, CER {f'top-{args.topk}' if args.topk else 'off'}"
    print(format_table(metrics, dataset.classes, title=title), end="")
    if args.out_json:
        payload = {
            "dataset": dataset.name,
            "images": n,
            "backend": backend.label,
            "topk": args.topk,
            **metrics.as_dict(dataset.classes),
        }
        atomic_write(args.out_json, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2) + "\n"))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = add_subcommand(sub, "eval", run)
    add_model_args(p)
    add_runtime_args(p)
    add_dataset_args(p, default=None)
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate the first N images only")
    p.add_argument("--out-json", default=None, help="write the scores and per-class IoU/accuracy as JSON")
