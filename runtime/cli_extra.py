"""Subcommands beyond predict/export: build-engines, bench, train, eval."""

from __future__ import annotations

import argparse


def cmd_build_engines(args: argparse.Namespace) -> int:
    """Build TensorRT engines for an exported engine directory (needs TensorRT and a GPU)."""
    from export.trt_build import build_engines

    build_engines(args.engine_dir, precision=args.precision, opt_classes=args.opt_classes, progress=not args.quiet)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build-engines", help=cmd_build_engines.__doc__, description=cmd_build_engines.__doc__)
    p.add_argument("--engine-dir", required=True)
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")
    p.add_argument("--opt-classes", type=int, default=None, help="vocabulary size the kernels are tuned for (default: the export's)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_build_engines)
