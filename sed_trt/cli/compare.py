"""``sed-trt compare``: how closely backends and precisions reproduce a reference."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sed_trt.cli.args import (
    add_cache_args,
    add_classes_arg,
    add_image_args,
    add_quiet,
    add_subcommand,
    deployment_from_args,
    positive_int,
)
from sed_trt.runtime.errors import ConfigError


def run(args: argparse.Namespace) -> int:
    """Accuracy of backends and precisions against a reference on one image: probabilities, labels, CER kept sets."""
    from sed_trt.runtime.backends.registry import parse_label
    from sed_trt.runtime.compare import compare_backends, format_agreements
    from sed_trt.runtime.fsutil import atomic_write, check_outputs
    from sed_trt.runtime.image import load_image
    from sed_trt.runtime.vocab import load_vocabulary

    check_outputs({"--out-json": args.out_json}, {"--image": args.image})
    labels = [b.strip() for b in args.backends.split(",") if b.strip()]
    specs = [parse_label(label)[0] for label in [args.reference, *labels]]
    if any(s.loads == "checkpoint" for s in specs) and args.backbone is None:
        raise ConfigError("rows of the PyTorch model need --backbone (and --weights for trained weights)")
    classes = load_vocabulary(args.classes)
    image = load_image(args.image, max_pixels=args.max_pixels)

    def open_row(label: str) -> Any:
        spec = parse_label(label)[0]
        return deployment_from_args(
            args,
            backend=label,
            engine_dir=None if spec.loads == "checkpoint" else args.engine_dir,
            device="cpu" if spec.placement == "cpu" else args.device,
            threads=None if spec.placement == "gpu" else args.threads,
        ).open_backend()

    reference = open_row(args.reference)
    others = [open_row(label) for label in labels]
    cache = deployment_from_args(args).text_cache()
    rows = compare_backends(reference, others, image, classes, topk=args.topk, cache=cache)
    title = f"{len(classes)} classes, CER {f'top-{args.topk}' if args.topk else 'off'}, reference {reference.label}, image {args.image}"
    print(format_agreements(rows, title=title), end="")
    if args.out_json:
        payload = {
            "image": str(args.image),
            "classes": len(classes),
            "topk": args.topk,
            "rows": [r.as_dict() for r in rows],
        }
        atomic_write(args.out_json, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2) + "\n"))
        print(f"wrote {args.out_json}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = add_subcommand(sub, "compare", run)
    p.add_argument("--engine-dir", required=True, help="engine directory written by 'sed-trt export'")
    add_image_args(p)
    add_classes_arg(p)
    p.add_argument("--topk", type=positive_int, default=None, help="CER top-k (default: no rejection)")
    p.add_argument(
        "--reference", default="onnxruntime", help="what the others are compared with (a backend label, as --backends)"
    )
    p.add_argument(
        "--backends",
        default="openvino,openvino-bf16",
        help="comma list of backend labels: a backend, or backend-precision (torch-bf16, onnxruntime-fp16, ...)",
    )
    p.add_argument("--device", default="cpu", help="torch rows' device; tensorrt rows' GPU (cuda:N)")
    p.add_argument("--backbone", default=None, help="model for torch rows (as in predict)")
    p.add_argument("--weights", default=None, help="SED checkpoint for torch rows (also checked against the engines)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: the library's choice)")
    add_cache_args(p)
    p.add_argument("--out-json", default=None, help="also write the rows as JSON")
    add_quiet(p)
