"""``sed-trt export`` and ``sed-trt build-engines``: model -> ONNX graphs -> TensorRT engines."""

from __future__ import annotations

import argparse
from pathlib import Path

from sed_trt.cli.args import add_model_args, add_quiet, add_subcommand, model_spec, positive_int
from sed_trt.runtime.errors import ConfigError


def run_export(args: argparse.Namespace) -> int:
    """Export ONNX graphs + manifest (and TensorRT engines where TensorRT and a GPU exist)."""
    from sed_trt.export.onnx_export import check_export_target, run_export
    from sed_trt.export.qdq import QDQ_FORMATS, QuantRequest
    from sed_trt.runtime.io_spec import ExportLimits
    from sed_trt.sed.build import load_sed

    if args.backbone is None:
        raise ConfigError("export needs --backbone")
    check_export_target(Path(args.out_dir))  # before the model loads: fail in a second, not a minute
    formats = tuple(f for f in QDQ_FORMATS if getattr(args, f))
    if args.precision in QDQ_FORMATS and args.precision not in formats:
        raise ConfigError(
            f"--precision {args.precision} builds engines from the {args.precision} graphs: add --{args.precision} --calibration DIR"
        )
    quant = None
    if formats or args.calibration is not None:
        if args.calibration is None:
            raise ConfigError(
                f"--{formats[0]} needs --calibration DIR (a folder of your photos; a few hundred are recommended)"
            )
        if not formats:
            raise ConfigError("--calibration applies to --int8 and --fp8 only")
        quant = QuantRequest(Path(args.calibration), limit=args.calibration_limit, formats=formats)
        quant.check()
    model = load_sed(model_spec(args), args.weights)
    limits = ExportLimits(max_batch=args.max_batch, max_classes=args.max_classes, class_chunk=args.class_chunk)
    run_export(
        model,
        args.out_dir,
        backbone=Path(args.backbone).stem,
        weights=args.weights,
        limits=limits,
        pooling=args.pooling,
        opset=args.opset,
        validate=not args.no_validate,
        fp16=args.fp16 or args.precision == "fp16",
        quant=quant,
        progress=not args.quiet,
    )
    if args.engines == "skip":
        return 0
    from sed_trt.export.trt_build import tensorrt_unavailable_reason
    from sed_trt.runtime.progress import step

    reason = tensorrt_unavailable_reason()
    if reason is not None:
        if args.engines == "require":
            raise ConfigError(f"cannot build TensorRT engines: {reason}")
        step(f"stopping after ONNX: {reason}")
        return 0
    _build(args, args.out_dir)
    return 0


def run_build_engines(args: argparse.Namespace) -> int:
    """Build TensorRT engines for an exported engine directory (needs TensorRT and a GPU)."""
    _build(args, args.engine_dir)
    return 0


def _build(args: argparse.Namespace, engine_dir: str) -> None:
    from sed_trt.export.trt_build import build_engines

    build_engines(engine_dir, precision=args.precision, tf32=args.tf32, device=args.device, progress=not args.quiet)


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    """The TensorRT build options export and build-engines share."""
    p.add_argument(
        "--precision",
        choices=["fp32", "fp16", "int8", "fp8"],
        default="fp32",
        help="TensorRT engines from the fp32 graphs, the mixed-precision ones (fp16 needs 'export --fp16') "
        "or the Q/DQ ones (int8 / fp8 need 'export --int8' / '--fp8'; fp8 needs an Ada or Hopper GPU); all strongly typed",
    )
    p.add_argument(
        "--tf32", action="store_true", help="let fp32 engines use TF32 (TensorRT's own default; faster, less exact)"
    )
    p.add_argument("--device", default="cuda", help="GPU to build for: cuda or cuda:N")
    add_quiet(p)


def register(sub: argparse._SubParsersAction) -> None:
    from sed_trt.export.qdq import DEFAULT_CALIBRATION_LIMIT
    from sed_trt.runtime.io_spec import ExportLimits

    p = add_subcommand(sub, "export", run_export)
    add_model_args(p)
    p.add_argument(
        "--out-dir", required=True, help="engine directory to write (replaced as a whole once the new one is complete)"
    )
    p.add_argument(
        "--max-classes", type=positive_int, default=1000, help="largest vocabulary the graphs/engines accept"
    )
    p.add_argument(
        "--class-chunk",
        type=positive_int,
        default=ExportLimits.class_chunk,
        help="largest number of classes a decoder graph runs at once (the vocabulary is decoded in chunks)",
    )
    p.add_argument("--max-batch", type=positive_int, default=1, help="largest batch of images")
    p.add_argument(
        "--pooling",
        type=positive_int,
        default=1,
        help="class-attention pooling baked into the graphs (1 = official evaluation)",
    )
    p.add_argument(
        "--opset",
        type=int,
        default=20,
        choices=range(18, 21),
        metavar="{18..20}",
        help="ONNX opset (torch's exporter writes 18 and later; TensorRT 10 reads up to 20)",
    )
    p.add_argument("--no-validate", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    p.add_argument(
        "--fp16",
        action="store_true",
        help="also write mixed-precision graphs (fp16 with norms and sums in fp32) for fp16 TensorRT engines",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="also write an int8 Q/DQ image encoder (ONNX Runtime, OpenVINO, TensorRT), calibrated on --calibration",
    )
    p.add_argument(
        "--fp8",
        action="store_true",
        help="also write an fp8 (E4M3) Q/DQ image encoder for TensorRT on Ada/Hopper GPUs, calibrated on "
        "--calibration (onnxruntime-fp8 emulates its numerics on the CPU, to measure its error; not a speed path)",
    )
    p.add_argument(
        "--calibration",
        metavar="DIR",
        help="--int8 / --fp8: a folder of your photos (sorted; the first --calibration-limit)",
    )
    p.add_argument(
        "--calibration-limit",
        type=positive_int,
        default=DEFAULT_CALIBRATION_LIMIT,
        help="--int8 / --fp8: the most calibration photos taken",
    )
    p.add_argument(
        "--engines",
        choices=["auto", "skip", "require"],
        default="auto",
        help="TensorRT engines: build if possible (auto), never, or fail without TensorRT",
    )
    _add_engine_args(p)

    p = add_subcommand(sub, "build-engines", run_build_engines)
    p.add_argument("--engine-dir", required=True, help="engine directory written by 'sed-trt export'")
    _add_engine_args(p)
