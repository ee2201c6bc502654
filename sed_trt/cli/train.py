"""``sed-trt train``: the paper's training recipe, resumable, DDP under torchrun."""

from __future__ import annotations

import argparse

from sed_trt.cli.args import add_model_args, add_quiet, add_subcommand, model_spec, positive_int
from sed_trt.cli.evaluate import add_dataset_args, open_dataset_args


def run(args: argparse.Namespace) -> int:
    """Train (or fine-tune) SED with the paper's recipe; resumable, logs to OUT_DIR/metrics.jsonl."""
    import dataclasses

    import torch

    from sed_trt.runtime.errors import ConfigError
    from sed_trt.sed.build import load_sed
    from sed_trt.sed.training.augment import AugmentConfig
    from sed_trt.sed.training.loop import TrainConfig, latest_checkpoint, train
    from sed_trt.sed.training.solver import SolverConfig

    if not args.resume and latest_checkpoint(args.out_dir) is not None:
        raise ConfigError(
            f"{args.out_dir!r} already holds a training run; pass --resume to continue it or choose another --out-dir"
        )
    dataset = open_dataset_args(args)
    # The initial weights of whatever is not loaded come from --seed.
    model = load_sed(
        model_spec(args), args.weights, clip_weights=args.clip_weights, warn_random=not args.quiet, seed=args.seed
    )
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
        augment=dataclasses.replace(
            AugmentConfig(),
            crop_size=crop,
            min_sizes=tuple(args.min_sizes) if args.min_sizes else (crop,),
            color_aug=not args.no_color_aug,
            flip=not args.no_flip,
        ),
        solver=SolverConfig(
            base_lr=args.lr,
            clip_multiplier=args.clip_multiplier,
            weight_decay=args.weight_decay,
            max_iter=args.iters,
            clip_grad_norm=args.clip_grad,
        ),
    )
    eval_dataset = None
    if args.eval_dataset:
        from sed_trt.runtime.datasets import open_dataset

        eval_dataset = open_dataset(args.eval_dataset, root=args.data_root, classes=args.classes)
    record = train(model, dataset, cfg, resume=args.resume, progress=not args.quiet, eval_dataset=eval_dataset)
    if record:
        scores = record.get("eval")
        tail = f"; {eval_dataset.name} mIoU {scores['mIoU']:.2f}" if scores and eval_dataset else ""
        print(f"iteration {record['iteration']}: loss {record['loss']:.4f}{tail}; checkpoints in {args.out_dir}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = add_subcommand(sub, "train", run)
    add_model_args(p)
    p.add_argument(
        "--clip-weights",
        default=None,
        help="open_clip CLIP weights to start from (the paper starts from LAION ConvNeXt CLIP)",
    )
    add_dataset_args(p, default="coco_stuff_train")
    p.add_argument("--out-dir", required=True, help="checkpoints (official layout) and metrics.jsonl")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last_checkpoint")
    p.add_argument("--iters", type=positive_int, default=80_000, help="training iterations (official 80k)")
    p.add_argument("--batch-size", type=positive_int, default=4, help="total over all processes")
    p.add_argument("--lr", type=float, default=2e-4, help="AdamW base learning rate")
    p.add_argument("--clip-multiplier", type=float, default=0.01, help="visual-tower lr multiplier")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (none on norm layers)")
    p.add_argument("--clip-grad", type=float, default=0.01, help="full-model gradient L2-norm clip")
    p.add_argument(
        "--crop-size", type=positive_int, default=None, help="training crop (default: the model's input size, 768)"
    )
    p.add_argument(
        "--min-sizes",
        type=positive_int,
        nargs="+",
        default=None,
        help="ResizeShortestEdge choices (default: the crop size)",
    )
    p.add_argument("--no-color-aug", action="store_true", help="disable the SSD colour jitter")
    p.add_argument("--no-flip", action="store_true", help="disable random horizontal flips")
    p.add_argument(
        "--pooling", type=positive_int, default=None, help="class-attention pooling in training (default 2, official)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of initial weights, sample order and augmentation")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes")
    p.add_argument("--checkpoint-period", type=positive_int, default=5000, help="save a checkpoint every N iterations")
    p.add_argument("--log-period", type=positive_int, default=20, help="log window-mean losses every N iterations")
    p.add_argument(
        "--eval-dataset",
        default=None,
        help="built-in dataset to evaluate on during training (official: coco_stuff_val), under --data-root; --classes applies to it too",
    )
    p.add_argument(
        "--eval-period", type=int, default=0, help="evaluate every N iterations (official 10000); 0: only at the end"
    )
    p.add_argument("--eval-limit", type=positive_int, default=None, help="evaluate on the first N images only")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    add_quiet(p)
