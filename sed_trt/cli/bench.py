"""``sed-trt bench`` and ``sed-trt figures``: speed and memory per backend, with and without CER."""

from __future__ import annotations

import argparse

from sed_trt.cli.args import add_backend_options, add_subcommand, backend_options, positive_int


def topk_list(text: str) -> tuple[int | None, ...]:
    """'none,1,8' -> (None, 1, 8)."""
    try:
        values = tuple(None if t.strip().lower() in ("none", "") else int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of whole numbers or 'none', got {text!r}") from None
    if any(v is not None and v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"top-k values must be >= 1, got {text!r}")
    return values


def int_list(text: str) -> tuple[int, ...]:
    """'20,150' -> (20, 150), each >= 1."""
    try:
        values = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"values must be >= 1, got {text!r}")
    return values


def run_bench(args: argparse.Namespace) -> int:
    """Benchmark PyTorch vs ONNX Runtime (vs OpenVINO, TensorRT): ms/image with and without CER."""
    from sed_trt.benchmarks.bench import BenchConfig, run_bench

    cfg = BenchConfig(
        backbone=args.backbone,
        weights=args.weights,
        image_sizes=args.image_sizes,
        vocab_sizes=args.vocab_sizes,
        topks=args.topk,
        fixed_survivors=args.fixed_survivors,
        backends=tuple(b.strip() for b in args.backends.split(",") if b.strip()),
        repeats=args.repeats,
        warmup=args.warmup,
        threads=args.threads,
        device=args.device,
        options=backend_options(args),
        out_dir=args.out_dir,
        int8_calibration=args.int8_calibration,
    )
    from sed_trt.runtime.errors import ConfigError

    if any(b.endswith("-fp8") for b in cfg.backends):
        raise ConfigError(
            "fp8 rows are not timed here: onnxruntime-fp8 emulates fp8 numerics slowly (measure its error with "
            "'sed-trt compare --backends onnxruntime-fp8'); fp8 speed needs TensorRT on an Ada or Hopper GPU"
        )
    if any(b.endswith("-int8") for b in cfg.backends) and cfg.int8_calibration is None:
        raise ConfigError(
            "int8 rows need --int8-calibration DIR (a folder of photos the int8 graphs are calibrated on)"
        )
    if cfg.int8_calibration is not None:
        from pathlib import Path

        from sed_trt.export.qdq import QuantRequest

        QuantRequest(Path(cfg.int8_calibration)).check()  # a missing or empty folder: now, not after the export
    run_bench(cfg)
    return 0


def run_figures(args: argparse.Namespace) -> int:
    """Redraw the benchmark figures from a bench.json (e.g. one measured on another machine)."""
    from pathlib import Path

    from sed_trt.benchmarks.figures import load_bench_json, write_figures

    result = load_bench_json(args.bench_json)
    figures = write_figures(result, Path(args.out_dir) if args.out_dir else Path(args.bench_json).parent)
    print(f"wrote {', '.join(str(f.path) for f in figures)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = add_subcommand(sub, "bench", run_bench)
    p.add_argument("--backbone", default="convnext_b", help="convnext_b | convnext_l | a tiny config | PATH.json")
    p.add_argument("--weights", default=None, help="SED checkpoint (default: random weights, fine for speed)")
    p.add_argument(
        "--int8-calibration",
        metavar="DIR",
        default=None,
        help="photos to calibrate the int8 graphs on (export --int8) for -int8 rows (onnxruntime-int8, openvino-int8)",
    )
    p.add_argument(
        "--image-sizes", type=int_list, default=(384,), help="comma list; 768 is the paper's, 384 SED-fast style"
    )
    p.add_argument("--vocab-sizes", type=int_list, default=(20, 150, 847), help="comma list of vocabulary sizes")
    p.add_argument(
        "--topk", type=topk_list, default=(None, 8), help="comma list of CER top-k values; 'none' = no rejection"
    )
    p.add_argument(
        "--fixed-survivors",
        type=positive_int,
        default=16,
        help="controlled CER row: stages 1-3 at exactly this many classes",
    )
    p.add_argument(
        "--backends",
        default="torch,onnxruntime,tensorrt",
        help="comma list of backend labels (torch, torch-bf16, onnxruntime, openvino-bf16, tensorrt, ...); unavailable ones are skipped with a reason",
    )
    p.add_argument(
        "--repeats", type=positive_int, default=3, help="timed runs per configuration (median and p90 reported)"
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: the library's choice)")
    p.add_argument("--device", default="cpu", help="torch device of the torch rows (cpu, cuda, cuda:N)")
    add_backend_options(p)
    p.add_argument("--out-dir", default="results", help="where bench.json, bench.md and the figures go")

    p = add_subcommand(sub, "figures", run_figures)
    p.add_argument("bench_json", help="bench.json written by 'sed-trt bench'")
    p.add_argument("--out-dir", default=None, help="where the PNGs go (default: beside bench.json)")
