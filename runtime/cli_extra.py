"""Subcommands beyond predict/export: build-engines, bench, train, eval."""

from __future__ import annotations

import argparse


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
        out_dir=args.out_dir,
    )
    run_bench(cfg)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build-engines", help=cmd_build_engines.__doc__, description=cmd_build_engines.__doc__)
    p.add_argument("--engine-dir", required=True)
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")
    p.add_argument("--opt-classes", type=int, default=None, help="vocabulary size the kernels are tuned for (default: the export's)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_build_engines)

    p = sub.add_parser("bench", help=cmd_bench.__doc__, description=cmd_bench.__doc__)
    p.add_argument("--backbone", default="convnext_b")
    p.add_argument("--weights", default=None)
    p.add_argument("--image-sizes", default="384", help="comma list; 768 is the paper's, 384 SED-fast style")
    p.add_argument("--vocab-sizes", default="20,150,847")
    p.add_argument("--topk", default="none,8", help="comma list of CER top-k values; 'none' = no rejection")
    p.add_argument("--fixed-survivors", type=int, default=16, help="controlled CER row: stages 1-3 at exactly this many classes")
    p.add_argument("--backends", default="torch,onnxruntime,tensorrt")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out-dir", default="results")
    p.set_defaults(func=cmd_bench)
