"""``sed-trt triton-repo`` (a Triton model repository), ``sed-trt serve`` (run one) and ``sed-trt client``."""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Any

from sed_trt.cli.args import (
    add_classes_arg,
    add_image_args,
    add_model_args,
    add_runtime_args,
    add_subcommand,
    deployment_from_args,
    non_negative_int,
    positive_int,
)
from sed_trt.cli.predict import add_output_args, read_request, summary, write_results, wrote_line
from sed_trt.runtime.backends.registry import parse_label
from sed_trt.runtime.errors import ConfigError
from sed_trt.runtime.image import DEFAULT_SERVE_MAX_PIXELS


def repository_settings(args: argparse.Namespace) -> tuple[Any, Any]:
    """The repository's deployment and instance configuration from the arguments."""
    from sed_trt.serve.repository import InstanceConfig

    deployment = deployment_from_args(
        args, batch_size=args.max_batch, cache_memory_mb=args.vocab_cache_mb, max_pixels=args.max_pixels
    )
    spec, _ = parse_label(deployment.backend_label)
    if spec.loads == "engine_dir" and args.engine_dir is None:
        raise ConfigError(f"--engine-dir is required with --backend {spec.name} (make one with 'sed-trt export')")
    if spec.loads == "checkpoint":
        deployment = deployment.replace(backend=deployment.backend_label)
    gpu = spec.placement == "gpu" or (spec.placement == "device" and str(args.device).startswith("cuda"))
    instances = InstanceConfig(
        instances=args.instances,
        kind="KIND_GPU" if gpu else "KIND_CPU",
        gpus=parse_gpus(args.gpus),
        queue_delay_us=args.queue_delay_us,
    )
    return deployment, instances


def parse_gpus(text: str | None) -> tuple[int, ...]:
    """``--gpus 0,1`` -> (0, 1); anything else is one line."""
    if not text:
        return ()
    try:
        gpus = tuple(int(g) for g in text.split(","))
    except ValueError:
        raise ConfigError(f"--gpus {text!r}: expected GPU indices such as 0,1") from None
    if any(g < 0 for g in gpus):
        raise ConfigError(f"--gpus {text!r}: GPU indices are >= 0")
    return gpus


def run_triton_repo(args: argparse.Namespace) -> int:
    """Write a Triton model repository for stock tritonserver (NVIDIA's container, Kubernetes)."""
    from sed_trt.serve.repository import write_repository

    settings, instances = repository_settings(args)
    written = write_repository(args.out, settings, instances, form=args.form, engine_path=args.engine_path)
    print(
        f"wrote {len(written)} files in {args.out} (models: {sorted({p.relative_to(args.out).parts[0] for p in written})})"
    )
    return 0


def run_serve(args: argparse.Namespace) -> int:
    """Serve SED on NVIDIA Triton: a repository (--repository), or one written from these options."""
    from sed_trt.serve.repository import write_repository
    from sed_trt.serve.server import ServerConfig, serve_repository

    logging.getLogger("sed_trt").setLevel(logging.INFO)  # a server logs what it does (new vocabularies, stops)
    config = ServerConfig(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        exit_timeout_s=args.exit_timeout,
        ready_timeout_s=args.ready_timeout,
    )
    if args.repository:
        return serve_repository(args.repository, config)
    settings, instances = repository_settings(args)
    settings.open_backend()  # refuse a bad engine directory or option before anything starts
    with tempfile.TemporaryDirectory(prefix="sed-trt-repo-") as tmp:
        repo = Path(tmp) / "repository"
        write_repository(repo, settings, instances)
        return serve_repository(repo, config)


def run_client(args: argparse.Namespace) -> int:
    """Send one image and vocabulary to a running 'sed-trt serve'; write what predict writes."""
    from sed_trt.serve.client import SedClient

    classes, image = read_request(args)
    with SedClient(args.url, timeout_s=args.timeout) as client:
        result = client.segment(image, classes, topk=args.topk, probs=args.save_npz is not None)
    if result.random_weights:
        logging.getLogger("sed_trt").warning("the server's model has random weights: this segmentation is meaningless")
    written = write_results(
        args, image, classes, result.labels, result.kept, result.probs, random_weights=result.random_weights
    )
    print(summary(classes, result.labels, result.kept))
    print(wrote_line(written))
    return 0


def add_repository_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_runtime_args(p)
    p.add_argument(
        "--max-batch",
        type=positive_int,
        default=None,
        help="images per batch, Triton's max_batch_size (default: the engines' export limit; 4 for torch)",
    )
    p.add_argument(
        "--queue-delay-us", type=non_negative_int, default=2000, help="how long Triton waits to grow a batch"
    )
    p.add_argument(
        "--instances", type=positive_int, default=1, help="model instances (each its own backend: memory x N)"
    )
    p.add_argument("--gpus", default=None, help="GPUs of GPU instances, e.g. 0,1 (default: every GPU)")
    p.add_argument(
        "--vocab-cache-mb", type=positive_int, default=512, help="text features of recent vocabularies kept in memory"
    )
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        default=DEFAULT_SERVE_MAX_PIXELS,
        help="refuse a request's image larger than this (width x height), before any work",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = add_subcommand(sub, "triton-repo", run_triton_repo)
    add_repository_args(p)
    p.add_argument("--out", required=True, help="the repository to write (a new or empty directory)")
    p.add_argument(
        "--form",
        choices=["python", "bls"],
        default="python",
        help="python: one model runs the pipeline; bls: each TensorRT plan its own model, orchestrated by BLS",
    )
    p.add_argument(
        "--engine-path", default=None, help="the engine directory's path where the server runs (a container volume)"
    )

    p = add_subcommand(sub, "serve", run_serve)
    add_repository_args(p)
    p.add_argument("--repository", default=None, help="serve this model repository (from 'sed-trt triton-repo')")
    p.add_argument("--http-port", type=positive_int, default=8000, help="HTTP (KServe v2) port")
    p.add_argument("--grpc-port", type=positive_int, default=8001, help="gRPC port")
    p.add_argument("--metrics-port", type=positive_int, default=8002, help="Prometheus metrics port (/metrics)")
    p.add_argument("--exit-timeout", type=positive_int, default=60, help="seconds a stop waits for requests in flight")
    p.add_argument(
        "--ready-timeout",
        type=positive_int,
        default=600,
        help="seconds start-up may take (loading and warm-up) before it fails",
    )

    p = add_subcommand(sub, "client", run_client)
    p.add_argument("--url", default="localhost:8000", help="server address (host:port; grpc://host:port for gRPC)")
    add_image_args(p)
    add_classes_arg(p)
    p.add_argument("--topk", type=positive_int, default=None, help="CER top-k (default: the server's)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the server")
    add_output_args(p)
