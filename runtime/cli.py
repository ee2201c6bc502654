"""``sed-trt``: a thin command line over library functions.

Every library error (:class:`runtime.errors.SedTrtError`) becomes one line on stderr and
exit status 2; nothing is written unless the work succeeded.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np

from runtime.errors import ConfigError, SedTrtError
from runtime.fsutil import atomic_write, check_outputs
from runtime.image import DEFAULT_MAX_PIXELS


class HELP_FORMAT(argparse.HelpFormatter):  # noqa: N801 (used like argparse's formatter constants)
    """Every flag's help ends with its default, unless the help already says it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" not in text and action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
            text += " (default: %(default)s)"
        return text


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def _add_model_args(p: argparse.ArgumentParser, *, weights_required: bool = False) -> None:
    p.add_argument("--backbone", default=None, help="convnext_b | convnext_l | sed_tiny_linear | PATH.json (open_clip model config)")
    p.add_argument("--weights", default=None, required=weights_required, help="SED checkpoint (.pth); the official ones are linked from github.com/xb534/SED")
    p.add_argument("--image-size", type=_positive_int, default=None, help="network input side, a multiple of 32 (default 768, the paper's; 384 for SED-fast style)")


def model_spec(args: argparse.Namespace):  # noqa: ANN201
    """The model config the arguments name: ``--backbone`` with ``--image-size`` applied."""
    if args.backbone is None:
        raise ConfigError("--backbone is required")
    if args.image_size is None:
        return args.backbone
    import dataclasses

    from sed.config import load_config

    if args.image_size % 32:
        raise ConfigError(f"--image-size must be a multiple of 32, got {args.image_size}")
    return dataclasses.replace(load_config(args.backbone), image_size=args.image_size)


def _add_runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=["torch", "onnxruntime", "openvino", "tensorrt"], default="torch", help="what runs the model")
    p.add_argument("--precision", choices=["f32", "bf16"], default="f32", help="openvino: inference precision; bf16 (an opt-in, needs AMX or AVX512-BF16) is faster and less exact")
    p.add_argument("--engine-dir", default=None, help="directory written by 'sed-trt export' (onnxruntime, tensorrt)")
    p.add_argument("--topk", type=_positive_int, default=None, help="CER: keep classes in some pixel's top-k at each rejection point (default: no rejection)")
    p.add_argument("--pooling", type=_positive_int, default=1, help="class-attention pooling (1 = official evaluation)")
    p.add_argument("--device", default="cpu", help="torch device for the torch backend (cpu, cuda)")
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (default: the library's choice)")
    p.add_argument("--cache-dir", default=None, help="text-feature cache (default: $SED_TRT_CACHE or ~/.cache/sed-trt)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the on-disk text-feature cache")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def make_backend(args: argparse.Namespace):  # noqa: ANN201
    """Create (not activate) the backend the arguments ask for."""
    from runtime.backends import create_backend

    if args.backend == "torch":
        if args.backbone is None:
            raise ConfigError("--backbone is required with --backend torch")
        return create_backend("torch", backbone=model_spec(args), weights=args.weights, device=args.device, pooling=args.pooling, threads=args.threads)
    if args.engine_dir is None:
        raise ConfigError(f"--engine-dir is required with --backend {args.backend} (make one with 'sed-trt export')")
    if args.precision != "f32" and args.backend != "openvino":
        raise ConfigError(f"--precision {args.precision} applies to --backend openvino only")
    if args.backend == "onnxruntime":
        backend = create_backend("onnxruntime", engine_dir=args.engine_dir, threads=args.threads, backbone=args.backbone)
    elif args.backend == "openvino":
        backend = create_backend("openvino", engine_dir=args.engine_dir, precision=args.precision, threads=args.threads, backbone=args.backbone)
    else:
        backend = create_backend("tensorrt", engine_dir=args.engine_dir, backbone=args.backbone)
    if backend.pooling != args.pooling:
        raise ConfigError(f"the engines were exported with --pooling {backend.pooling}; got --pooling {args.pooling}")
    if args.image_size is not None and backend.dims.image_size != args.image_size:
        raise ConfigError(f"the engines were exported with --image-size {backend.dims.image_size}; got --image-size {args.image_size}")
    if args.weights is not None:
        from runtime.fsutil import file_sha256

        if backend.manifest.checkpoint_sha256 != file_sha256(args.weights):
            raise ConfigError(f"--weights {args.weights!r} is not the checkpoint the engines were exported from")
    return backend


def make_cache(args: argparse.Namespace):  # noqa: ANN201
    from runtime.text_cache import TextFeatureCache, default_cache_dir

    return TextFeatureCache(None if args.no_cache else (args.cache_dir or default_cache_dir()))


def _vocabulary_file(spec: str) -> str | None:
    """The file a --classes value names, if it names one (for the output-collision check)."""
    from runtime.vocab import names_file

    return spec if names_file(spec) else None


def _save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # a file object: given a name, numpy would append ".npz"
        np.savez_compressed(f, **arrays)


def cmd_predict(args: argparse.Namespace) -> int:
    """Segment one image into the given classes."""
    from runtime.image import load_image
    from runtime.predictor import Predictor
    from runtime.vocab import display_name, load_vocabulary

    check_outputs({"--out": args.out, "--save-npz": args.save_npz}, {"--image": args.image, "--weights": args.weights, "--classes": _vocabulary_file(args.classes)})
    classes = load_vocabulary(args.classes)
    image = load_image(args.image, max_pixels=args.max_pixels)
    backend = make_backend(args)
    with backend:
        predictor = Predictor(backend, topk=args.topk, cache=make_cache(args), progress=not args.quiet)
        predictor.set_classes(classes)
        pred = predictor.predict(image)
    written = []
    if args.save_npz:
        arrays = {"probs": pred.probs.astype(np.float32), "labels": pred.labels.astype(np.int32), "kept": pred.kept, "classes": np.array(classes, dtype=str)}
        written.append(atomic_write(args.save_npz, lambda tmp: _save_npz(tmp, arrays)))
    if args.out:
        from PIL import Image

        from runtime.visualize import overlay

        banner = "RANDOM WEIGHTS: this segmentation is meaningless (no --weights)" if backend.random_weights else None
        vis = overlay(image, pred.labels, classes, alpha=args.alpha, banner=banner, side_by_side=args.side_by_side)
        written.append(atomic_write(args.out, lambda tmp: Image.fromarray(vis).save(tmp, format="PNG")))
    ids, counts = np.unique(pred.labels, return_counts=True)
    top = ", ".join(f"{display_name(classes[i])} {100 * c / pred.labels.size:.1f}%" for i, c in sorted(zip(ids, counts), key=lambda x: -x[1])[:8])
    print(f"{len(classes)} classes, kept {int(pred.kept.sum())} (per stage {pred.survivors}); {pred.timings['total_ms']:.0f} ms; present: {top}")
    print(f"wrote {', '.join(map(str, written))}" if written else "wrote nothing (no --out or --save-npz given)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export ONNX graphs + manifest (and TensorRT engines where TensorRT and a GPU exist)."""
    from export.onnx_export import check_export_target, run_export
    from runtime.io_spec import ExportLimits
    from sed.build import load_sed

    if args.opt_classes > args.max_classes:
        raise ConfigError(f"--opt-classes {args.opt_classes} exceeds --max-classes {args.max_classes}")
    check_export_target(Path(args.out_dir))  # before the model loads: fail in a second, not a minute
    model = load_sed(model_spec(args), args.weights)
    limits = ExportLimits(max_batch=args.max_batch, max_classes=args.max_classes, opt_classes=args.opt_classes)
    run_export(model, args.out_dir, backbone=Path(args.backbone).stem, weights=args.weights, limits=limits, pooling=args.pooling, opset=args.opset, validate=not args.no_validate, progress=not args.quiet)
    if args.engines == "skip":
        return 0
    from export.trt_build import build_engines, tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    if reason is not None:
        if args.engines == "require":
            raise ConfigError(f"cannot build TensorRT engines: {reason}")
        print(f"[sed-trt] stopping after ONNX: {reason}", file=sys.stderr)
        return 0
    build_engines(args.out_dir, precision=args.precision, progress=not args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sed-trt", description="Fast, faithful SED open-vocabulary segmentation.", formatter_class=HELP_FORMAT)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help=cmd_predict.__doc__, description=cmd_predict.__doc__, formatter_class=HELP_FORMAT)
    _add_model_args(p)
    _add_runtime_args(p)
    p.add_argument("--image", required=True, help="RGB image file (PNG, JPEG, ...)")
    p.add_argument("--max-pixels", type=_positive_int, default=DEFAULT_MAX_PIXELS, help="refuse larger images (width x height), checked before decoding")
    p.add_argument("--classes", required=True, help="ade150 | ade847 | pc59 | pc459 | voc20 | coco171 | FILE (.json list or .txt lines) | 'a,b,c' ('a, syn; b' for synonyms)")
    p.add_argument("--out", default=None, help="PNG colour overlay with a legend")
    p.add_argument("--alpha", type=_unit_float, default=0.5, help="opacity of the class colours in --out")
    p.add_argument("--side-by-side", action="store_true", help="--out shows the photo and the overlay side by side")
    p.add_argument("--save-npz", default=None, help="NPZ with probs (T,192,192), labels (H0,W0), kept (T,)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help=cmd_export.__doc__, description=cmd_export.__doc__, formatter_class=HELP_FORMAT)
    _add_model_args(p)
    p.add_argument("--out-dir", required=True, help="engine directory to write (replaced as a whole once the new one is complete)")
    p.add_argument("--max-classes", type=_positive_int, default=1000, help="largest vocabulary the graphs/engines accept")
    p.add_argument("--opt-classes", type=_positive_int, default=150, help="vocabulary size TensorRT tunes its kernels for")
    p.add_argument("--max-batch", type=_positive_int, default=1, help="largest batch of images")
    p.add_argument("--pooling", type=_positive_int, default=1, help="class-attention pooling baked into the graphs (1 = official evaluation)")
    p.add_argument("--opset", type=int, default=20, choices=range(17, 21), metavar="{17..20}", help="ONNX opset")
    p.add_argument("--no-validate", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    p.add_argument("--engines", choices=["auto", "skip", "require"], default="auto", help="TensorRT engines: build if possible (auto), never, or fail without TensorRT")
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32", help="TensorRT engine precision")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_export)

    from runtime import cli_extra

    cli_extra.register(sub)
    return parser


def configure_logging() -> None:
    """Library warnings (logger ``sed_trt``) as ``[sed-trt] WARNING: ...`` lines on stderr.

    ``--quiet`` silences progress, never warnings (random weights, a discarded cache entry).
    """
    logger = logging.getLogger("sed_trt")
    if not any(getattr(h, "_sed_trt", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[sed-trt] %(levelname)s: %(message)s"))
        handler._sed_trt = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    for h in logger.handlers:
        if getattr(h, "_sed_trt", False):
            h.stream = sys.stderr  # the current stderr (tests capture it per test)
    logger.setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging()
    if getattr(args, "command", None) == "export" and args.backbone is None:
        parser.error("export needs --backbone")
    try:
        return int(args.func(args) or 0)
    except SedTrtError as exc:
        print(f"sed-trt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sed-trt: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("sed-trt: error: out of memory (try a smaller vocabulary, --topk, or a machine with more memory)", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: one line for the user, the traceback on request
        if os.environ.get("SED_TRT_DEBUG"):
            raise
        print(f"sed-trt: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} (set SED_TRT_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
