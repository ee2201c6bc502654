"""Subcommands beyond predict/export: build-engines, bench, train, eval."""

from __future__ import annotations

import argparse

from runtime.errors import ConfigError


def cmd_build_engines(args: argparse.Namespace) -> int:
    """Build TensorRT engines for an exported engine directory (needs TensorRT and a GPU)."""
    from export.trt_build import build_engines

    build_engines(args.engine_dir, precision=args.precision, opt_classes=args.opt_classes, progress=not args.quiet)
    return 0


def _topk_list(text: str) -> tuple[int | None, ...]:
    return tuple(None if t.strip() in ("none", "None", "") else int(t) for t in text.split(","))


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split(","))


def cmd_bench(args: argparse.Namespace) -> int:
    """Benchmark PyTorch vs ONNX Runtime (vs TensorRT): ms/image with and without CER."""
    from benchmarks.bench import BenchConfig, run_bench

    cfg = BenchConfig(
        backbone=args.backbone,
        weights=args.weights,
        image_sizes=_int_list(args.image_sizes),
        vocab_sizes=_int_list(args.vocab_sizes),
        topks=_topk_list(args.topk),
        fixed_survivors=args.fixed_survivors,
        backends=tuple(args.backends.split(",")),
        repeats=args.repeats,
        warmup=args.warmup,
        threads=args.threads,
        device=args.device,
        out_dir=args.out_dir,
    )
    run_bench(cfg)
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    """Redraw the benchmark figures from a bench.json (e.g. one measured on another machine)."""
    import json
    from pathlib import Path

    from benchmarks.figures import matplotlib_missing, write_figures
    from runtime.errors import ConfigError

    reason = matplotlib_missing()
    if reason:
        raise ConfigError(f"cannot draw figures: {reason}")
    path = Path(args.bench_json)
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        rows = result["rows"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{str(path)!r} is not a bench.json written by 'sed-trt bench' ({type(exc).__name__})") from None
    if not rows:
        raise ConfigError(f"{str(path)!r} holds no measurements")
    out = Path(args.out_dir) if args.out_dir else path.parent
    figures = write_figures(result, out)
    print(f"wrote {', '.join(str(f.path) for f in figures)}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Accuracy of backends and precisions against a reference on one image: probabilities, labels, CER kept sets."""
    import json
    from pathlib import Path

    from runtime.backends import create_backend, parse_label
    from runtime.cli import make_cache
    from runtime.compare import compare_backends, format_agreements
    from runtime.fsutil import atomic_write, check_outputs
    from runtime.image import load_image
    from runtime.vocab import load_vocabulary

    check_outputs({"--out-json": args.out_json}, {"--image": args.image})
    classes = load_vocabulary(args.classes)
    image = load_image(args.image, max_pixels=args.max_pixels)
    if args.reference == "torch":
        if args.backbone is None:
            raise ConfigError("--reference torch needs --backbone (and --weights for trained weights)")
        reference = create_backend("torch", backbone=args.backbone, weights=args.weights, threads=args.threads)
    else:
        reference = create_backend(args.reference, engine_dir=args.engine_dir, threads=args.threads)
    others = []
    for label in [b.strip() for b in args.backends.split(",") if b.strip()]:
        name, options = parse_label(label)
        if name in ("torch", "tensorrt") and name != args.reference:
            options = {**options, **({"backbone": args.backbone, "weights": args.weights} if name == "torch" else {})}
        else:
            options = {**options, "engine_dir": args.engine_dir, "threads": args.threads}
        others.append(create_backend(name, **options))
    with reference:
        for b in others:
            b.activate()
        try:
            rows = compare_backends(reference, others, image, classes, topk=args.topk, cache=make_cache(args))
        finally:
            for b in others:
                b.deactivate()
    title = f"{len(classes)} classes, CER {'top-%d' % args.topk if args.topk else 'off'}, reference {reference.label}, image {args.image}"
    print(format_agreements(rows, title=title), end="")
    if args.out_json:
        payload = {"image": str(args.image), "classes": len(classes), "topk": args.topk, "rows": [r.as_dict() for r in rows]}
        atomic_write(args.out_json, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2) + "\n"))
        print(f"wrote {args.out_json}")
    return 0


def _add_dataset_args(p: argparse.ArgumentParser, default: str | None) -> None:
    from runtime.datasets import BUILTIN_DATASETS

    tail = f" (default {default}, unless --images/--labels name a custom one)" if default else ""
    p.add_argument("--dataset", default=None, help=f"built-in dataset in its standard layout: {', '.join(BUILTIN_DATASETS)}{tail}")
    p.set_defaults(default_dataset=default)
    p.add_argument("--data-root", default=None, help="folder holding the datasets (default: $DETECTRON2_DATASETS or ./datasets)")
    p.add_argument("--images", default=None, help="custom dataset: image folder (overrides the built-in layout)")
    p.add_argument("--labels", default=None, help="custom dataset: label folder (class-id png/tif, same file stems)")
    p.add_argument("--classes", default=None, help="class names (vocabulary name, file or list); default: the dataset's")
    p.add_argument("--ignore-label", type=int, default=None, help="label value of unlabelled pixels (default: the dataset's, 255 for custom)")
    p.add_argument("--label-ext", default=None, help="label file extension for a custom dataset (.png, .tif)")


def open_dataset_args(args: argparse.Namespace):  # noqa: ANN201
    from runtime.datasets import open_dataset

    name = args.dataset
    if name is None and args.images is None and args.labels is None:
        name = args.default_dataset
    return open_dataset(name, root=args.data_root, images=args.images, labels=args.labels, classes=args.classes, ignore_label=args.ignore_label, label_ext=args.label_ext)


def cmd_eval(args: argparse.Namespace) -> int:
    """mIoU / pixel accuracy of a backend (torch, onnxruntime, tensorrt) over a dataset, with a per-class table."""
    import json
    from pathlib import Path

    from runtime.cli import make_backend, make_cache
    from runtime.evaluate import evaluate, format_table
    from runtime.fsutil import atomic_write, check_outputs
    from runtime.predictor import Predictor

    check_outputs({"--out-json": args.out_json}, {"--weights": args.weights})
    dataset = open_dataset_args(args)
    backend = make_backend(args)
    with backend:
        predictor = Predictor(backend, topk=args.topk, cache=make_cache(args), progress=not args.quiet)
        metrics, _ = evaluate(predictor, dataset, limit=args.limit, progress=not args.quiet)
    if metrics is None:
        from runtime.errors import DatasetError

        raise DatasetError(f"dataset {dataset.name!r}: the evaluated images have no labelled pixel")
    n = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    title = f"{dataset.name}: {n} images, {len(dataset.classes)} classes, backend {backend.label}, CER {'top-%d' % args.topk if args.topk else 'off'}"
    print(format_table(metrics, dataset.classes, title=title), end="")
    if args.out_json:
        payload = {"dataset": dataset.name, "images": n, "backend": backend.label, "topk": args.topk, **metrics.as_dict(dataset.classes)}
        atomic_write(args.out_json, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2) + "\n"))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or fine-tune) SED with the paper's recipe; resumable, logs to OUT_DIR/metrics.jsonl."""
    import dataclasses

    import torch

    from runtime.cli import model_spec
    from runtime.errors import ConfigError
    from sed.build import load_sed
    from sed.training.augment import AugmentConfig
    from sed.training.loop import TrainConfig, latest_checkpoint, train
    from sed.training.solver import SolverConfig

    if not args.resume and latest_checkpoint(args.out_dir) is not None:
        raise ConfigError(f"{args.out_dir!r} already holds a training run; pass --resume to continue it or choose another --out-dir")
    dataset = open_dataset_args(args)
    # The initial weights of whatever is not loaded come from --seed.
    model = load_sed(model_spec(args), args.weights, clip_weights=args.clip_weights, warn_random=not args.quiet, seed=args.seed)
    crop = args.crop_size or model.cfg.image_size
    cfg = TrainConfig(
        out_dir=args.out_dir,
        batch_size=args.batch_size,
        pooling=args.pooling,
        seed=args.seed,
        workers=args.workers,
        checkpoint_period=args.checkpoint_period,
        log_period=args.log_period,
        eval_period=args.eval_period,
        eval_limit=args.eval_limit,
        device=("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device,
        augment=dataclasses.replace(AugmentConfig(), crop_size=crop, min_sizes=tuple(args.min_sizes) if args.min_sizes else (crop,), color_aug=not args.no_color_aug, flip=not args.no_flip),
        solver=SolverConfig(base_lr=args.lr, clip_multiplier=args.clip_multiplier, weight_decay=args.weight_decay, max_iter=args.iters, clip_grad_norm=args.clip_grad),
    )
    eval_dataset = None
    if args.eval_dataset:
        from runtime.datasets import open_dataset

        eval_dataset = open_dataset(args.eval_dataset, root=args.data_root, classes=args.classes)
    record = train(model, dataset, cfg, resume=args.resume, progress=not args.quiet, eval_dataset=eval_dataset)
    if record:
        scores = record.get("eval")
        tail = f"; {eval_dataset.name} mIoU {scores['mIoU']:.2f}" if scores and eval_dataset else ""
        print(f"iteration {record['iteration']}: loss {record['loss']:.4f}{tail}; checkpoints in {args.out_dir}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from runtime.cli import HELP_FORMAT, _add_model_args, _add_runtime_args, _positive_int
    from runtime.image import DEFAULT_MAX_PIXELS

    p = sub.add_parser("build-engines", help=cmd_build_engines.__doc__, description=cmd_build_engines.__doc__, formatter_class=HELP_FORMAT)
    p.add_argument("--engine-dir", required=True, help="engine directory written by 'sed-trt export'")
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32", help="TensorRT engine precision")
    p.add_argument("--opt-classes", type=int, default=None, help="vocabulary size the kernels are tuned for (default: the export's)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_build_engines)

    p = sub.add_parser("bench", help=cmd_bench.__doc__, description=cmd_bench.__doc__, formatter_class=HELP_FORMAT)
    p.add_argument("--backbone", default="convnext_b", help="convnext_b | convnext_l | a tiny config | PATH.json")
    p.add_argument("--weights", default=None, help="SED checkpoint (default: random weights, fine for speed)")
    p.add_argument("--image-sizes", default="384", help="comma list; 768 is the paper's, 384 SED-fast style")
    p.add_argument("--vocab-sizes", default="20,150,847", help="comma list of vocabulary sizes")
    p.add_argument("--topk", default="none,8", help="comma list of CER top-k values; 'none' = no rejection")
    p.add_argument("--fixed-survivors", type=int, default=16, help="controlled CER row: stages 1-3 at exactly this many classes")
    p.add_argument("--backends", default="torch,onnxruntime,tensorrt", help="comma list of torch, onnxruntime, openvino, openvino-bf16, tensorrt; unavailable ones are skipped with a reason")
    p.add_argument("--repeats", type=_positive_int, default=3, help="timed runs per configuration (median and p90 reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones")
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (default: the library's choice)")
    p.add_argument("--device", default="cpu", help="torch device of the torch rows (cpu, cuda, cuda:N)")
    p.add_argument("--out-dir", default="results", help="where bench.json, bench.md and the figures go")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("figures", help=cmd_figures.__doc__, description=cmd_figures.__doc__, formatter_class=HELP_FORMAT)
    p.add_argument("bench_json", help="bench.json written by 'sed-trt bench'")
    p.add_argument("--out-dir", default=None, help="where the PNGs go (default: beside bench.json)")
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("compare", help=cmd_compare.__doc__, description=cmd_compare.__doc__, formatter_class=HELP_FORMAT)
    p.add_argument("--engine-dir", required=True, help="engine directory written by 'sed-trt export'")
    p.add_argument("--image", required=True, help="RGB image file")
    p.add_argument("--classes", required=True, help="vocabulary name, file or list (as in predict)")
    p.add_argument("--topk", type=_positive_int, default=None, help="CER top-k (default: no rejection)")
    p.add_argument("--reference", choices=["onnxruntime", "torch"], default="onnxruntime", help="what the others are compared with")
    p.add_argument("--backends", default="openvino,openvino-bf16", help="comma list of backends to compare (torch, onnxruntime, openvino, openvino-bf16, tensorrt)")
    p.add_argument("--backbone", default=None, help="model for torch rows (as in predict)")
    p.add_argument("--weights", default=None, help="SED checkpoint for torch rows")
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (default: the library's choice)")
    p.add_argument("--max-pixels", type=_positive_int, default=DEFAULT_MAX_PIXELS, help="refuse larger images")
    p.add_argument("--cache-dir", default=None, help="text-feature cache (default: $SED_TRT_CACHE or ~/.cache/sed-trt)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the on-disk text-feature cache")
    p.add_argument("--out-json", default=None, help="also write the rows as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("eval", help=cmd_eval.__doc__, description=cmd_eval.__doc__, formatter_class=HELP_FORMAT)
    _add_model_args(p)
    _add_runtime_args(p)
    _add_dataset_args(p, default=None)
    p.add_argument("--limit", type=_positive_int, default=None, help="evaluate the first N images only")
    p.add_argument("--out-json", default=None, help="write the scores and per-class IoU/accuracy as JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("train", help=cmd_train.__doc__, description=cmd_train.__doc__, formatter_class=HELP_FORMAT)
    _add_model_args(p)
    p.add_argument("--clip-weights", default=None, help="open_clip CLIP weights to start from (the paper starts from LAION ConvNeXt CLIP)")
    _add_dataset_args(p, default="coco_stuff_train")
    p.add_argument("--out-dir", required=True, help="checkpoints (official layout) and metrics.jsonl")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last_checkpoint")
    p.add_argument("--iters", type=_positive_int, default=80_000, help="training iterations (official 80k)")
    p.add_argument("--batch-size", type=_positive_int, default=4, help="total over all processes")
    p.add_argument("--lr", type=float, default=2e-4, help="AdamW base learning rate")
    p.add_argument("--clip-multiplier", type=float, default=0.01, help="visual-tower lr multiplier")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (none on norm layers)")
    p.add_argument("--clip-grad", type=float, default=0.01, help="full-model gradient L2-norm clip")
    p.add_argument("--crop-size", type=_positive_int, default=None, help="training crop (default: the model's input size, 768)")
    p.add_argument("--min-sizes", type=_positive_int, nargs="+", default=None, help="ResizeShortestEdge choices (default: the crop size)")
    p.add_argument("--no-color-aug", action="store_true", help="disable the SSD colour jitter")
    p.add_argument("--no-flip", action="store_true", help="disable random horizontal flips")
    p.add_argument("--pooling", type=_positive_int, default=None, help="class-attention pooling in training (default 2, official)")
    p.add_argument("--seed", type=int, default=0, help="seed of initial weights, sample order and augmentation")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes")
    p.add_argument("--checkpoint-period", type=_positive_int, default=5000, help="save a checkpoint every N iterations")
    p.add_argument("--log-period", type=_positive_int, default=20, help="log window-mean losses every N iterations")
    p.add_argument("--eval-dataset", default=None, help="built-in dataset to evaluate on during training (official: coco_stuff_val), under --data-root; --classes applies to it too")
    p.add_argument("--eval-period", type=int, default=0, help="evaluate every N iterations (official 10000); 0: only at the end")
    p.add_argument("--eval-limit", type=_positive_int, default=None, help="evaluate on the first N images only")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_train)

