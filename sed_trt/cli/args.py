"""Argument groups and converters shared by the subcommands (one definition per flag)."""

from __future__ import annotations

import argparse
from typing import Any

from sed_trt.runtime.backends import Backend
from sed_trt.runtime.deployment import CACHE_DEFAULT, CACHE_OFF, Deployment
from sed_trt.runtime.errors import ConfigError
from sed_trt.runtime.image import DEFAULT_MAX_PIXELS
from sed_trt.runtime.text_cache import TextFeatureCache


class StoreOnce(argparse._StoreAction):
    """A single-value flag given twice is a usage error (argparse would keep the last silently:
    ``--image a.jpg --image b.jpg`` segmented only b.jpg)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        seen: set[str] = namespace.__dict__.setdefault("_flags_given", set())
        if self.dest in seen:
            parser.error(f"{option_string or self.dest} given more than once")
        seen.add(self.dest)
        super().__call__(parser, namespace, values, option_string)


class HelpFormatter(argparse.HelpFormatter):
    """Every flag's help ends with its default, unless the help already says it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" not in text and action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
            text += " (default: %(default)s)"
        return text


def whole_number(text: str, minimum: int) -> int:
    """A flag's whole number of at least ``minimum`` (argparse turns the refusal into one line)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    return whole_number(text, 1)


def non_negative_int(text: str) -> int:
    return whole_number(text, 0)


def unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def add_subcommand(sub: argparse._SubParsersAction, name: str, run: Any) -> argparse.ArgumentParser:
    """A subcommand whose help is ``run``'s docstring and whose action is ``run(args)``."""
    p = sub.add_parser(name, help=run.__doc__, description=run.__doc__, formatter_class=HelpFormatter)
    p.set_defaults(func=run)
    return p


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress output (warnings still show)")


def add_model_args(p: argparse.ArgumentParser, *, backbone_default: str | None = None) -> None:
    p.add_argument(
        "--backbone",
        default=backbone_default,
        help="convnext_b | convnext_l | sed_tiny_linear | PATH.json (open_clip model config)",
    )
    p.add_argument(
        "--weights",
        default=None,
        help="SED checkpoint (.pth); the official ones are linked from github.com/xb534/SED (default: random weights)",
    )
    p.add_argument(
        "--image-size",
        type=positive_int,
        default=None,
        help="network input side, a multiple of 32 (default 768, the paper's; 384 for SED-fast style)",
    )


def add_cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache-dir", default=None, help="text-feature cache (default: $SED_TRT_CACHE, else ~/.cache/sed-trt)"
    )
    p.add_argument("--no-cache", action="store_true", help="do not read or write the on-disk text-feature cache")


def add_image_args(p: argparse.ArgumentParser, *, many: bool = False) -> None:
    if many:
        p.add_argument(
            "--image",
            required=True,
            nargs="+",
            help="an RGB image (PNG, JPEG, ...); or many: files, quoted globs, directories (recursive), @list.txt, videos (with --out-dir)",
        )
    else:
        p.add_argument("--image", required=True, help="RGB image file (PNG, JPEG, ...)")
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        default=DEFAULT_MAX_PIXELS,
        help="refuse larger images (width x height), checked before decoding",
    )


def add_classes_arg(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument(
        "--classes",
        required=required,
        default=None,
        help="ade150 | ade847 | pc59 | pc459 | voc20 | coco171 | FILE (.json list or .txt lines) | 'a,b,c' ('a, syn; b' for synonyms)",
    )


def add_backend_options(p: argparse.ArgumentParser) -> None:
    """Every registered backend's own options as flags (each declared once, in its backend's SPEC)."""
    from sed_trt.runtime.backends.registry import all_options

    for keyword, opt in all_options().items():
        kwargs: dict[str, Any] = {"dest": keyword, "default": None, "help": opt.help}
        if opt.kind == "switch":
            kwargs["action"] = "store_const"
            kwargs["const"] = True
        elif opt.kind == "toggle":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = opt.type
        p.add_argument(opt.flag, **kwargs)


def backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """The backend options given on the command line (None: not given)."""
    from sed_trt.runtime.backends.registry import all_options

    return {k: getattr(args, k) for k in all_options() if getattr(args, k, None) is not None}


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    from sed_trt.runtime.backends.registry import PRECISIONS, all_labels, backend_specs

    specs = backend_specs()
    p.add_argument(
        "--backend",
        default=None,
        help=f"what runs the model: {' | '.join(all_labels())} (default: onnxruntime with --engine-dir, else torch)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="numeric precision, where the backend runs it: "
        + "; ".join(f"{s.name} {'/'.join(s.precisions)}" for s in specs.values()),
    )
    add_backend_options(p)
    exported = ", ".join(s.name for s in specs.values() if s.loads == "engine_dir")
    p.add_argument("--engine-dir", default=None, help=f"directory written by 'sed-trt export' (for {exported})")
    p.add_argument(
        "--topk",
        type=positive_int,
        default=None,
        help="CER: keep classes in some pixel's top-k at each rejection point (default: no rejection)",
    )
    p.add_argument(
        "--class-chunk",
        type=positive_int,
        default=None,
        help="classes per decoder-graph run (default: the export's --class-chunk, 16; torch: 16); bounds memory",
    )
    p.add_argument(
        "--pooling",
        type=positive_int,
        default=None,
        help="class-attention pooling (default: an engine directory's own; 1, the official evaluation, for a checkpoint)",
    )
    p.add_argument("--device", default="cpu", help="torch: its device (cpu, cuda, cuda:N); tensorrt: its GPU (cuda:N)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: the library's choice)")
    add_cache_args(p)
    add_quiet(p)


def deployment_from_args(args: argparse.Namespace, **changes: Any) -> Deployment:
    """The deployment the command line describes (the one place flags become it)."""
    cache = CACHE_OFF if getattr(args, "no_cache", False) else (getattr(args, "cache_dir", None) or CACHE_DEFAULT)
    fields: dict[str, Any] = {
        "backend": getattr(args, "backend", None),
        "engine_dir": getattr(args, "engine_dir", None),
        "backbone": getattr(args, "backbone", None),
        "weights": getattr(args, "weights", None),
        "image_size": getattr(args, "image_size", None),
        "device": getattr(args, "device", "cpu"),
        "precision": getattr(args, "precision", "fp32"),
        "threads": getattr(args, "threads", None),
        "options": backend_options(args),
        "topk": getattr(args, "topk", None),
        "class_chunk": getattr(args, "class_chunk", None),
        "pooling": getattr(args, "pooling", None),
        "cache": cache,
        "max_pixels": getattr(args, "max_pixels", DEFAULT_MAX_PIXELS),
    }
    return Deployment(**{**fields, **changes})


def make_backend(args: argparse.Namespace) -> Backend:
    """Create (not activate) the backend the arguments ask for; the runtime checks it fits."""
    return deployment_from_args(args).open_backend()


def make_cache(args: argparse.Namespace) -> TextFeatureCache:
    return deployment_from_args(args).text_cache()


def model_spec(args: argparse.Namespace) -> Any:
    """The model config export and train build: ``--backbone`` with ``--image-size`` applied."""
    if args.backbone is None:
        raise ConfigError("--backbone is required")
    Deployment(backbone=args.backbone, image_size=args.image_size)  # the one check of --image-size
    if args.image_size is None:
        return args.backbone
    import dataclasses

    from sed_trt.sed.config import load_config

    return dataclasses.replace(load_config(args.backbone), image_size=args.image_size)
