"""``sed-trt serve`` (a Triton server over any backend) and ``sed-trt client`` (one request to it)."""

from __future__ import annotations

import argparse
import logging

from sed_trt.cli.args import (
    add_classes_arg,
    add_image_args,
    add_model_args,
    add_runtime_args,
    add_subcommand,
    make_backend,
    make_cache,
    positive_int,
)
from sed_trt.cli.predict import add_output_args, read_request, summary, write_results, wrote_line


def run_serve(args: argparse.Namespace) -> int:
    """Serve the model on NVIDIA Triton (PyTriton): HTTP/gRPC, dynamic batching, metrics; per-request vocabularies."""
    from sed_trt.serve.service import SegmentationService
    from sed_trt.serve.triton import ServerConfig, serve

    logging.getLogger("sed_trt").setLevel(logging.INFO)  # a server logs what it does (new vocabularies, stops)
    config = ServerConfig(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        max_batch=args.max_batch,
        queue_delay_us=args.queue_delay_us,
        instances=args.instances,
        workspace=args.workspace,
    )
    make_backend(args)  # refuse a bad engine directory or option before anything starts

    def make_service() -> SegmentationService:
        return SegmentationService(
            make_backend(args),
            topk=args.topk,
            cache=make_cache(args),
            vocab_cache_bytes=args.vocab_cache_mb * 2**20,
            class_chunk=args.class_chunk,
        )

    serve(make_service, config)
    return 0


def run_client(args: argparse.Namespace) -> int:
    """Send one image and vocabulary to a running 'sed-trt serve'; write what predict writes."""
    from sed_trt.serve.client import SedClient

    classes, image = read_request(args)
    with SedClient(args.url, timeout_s=args.timeout) as client:
        result = client.segment(image, classes, topk=args.topk, probs=args.save_npz is not None)
    written = write_results(args, image, classes, result.labels, result.kept, result.probs, random_weights=False)
    print(summary(classes, result.labels, result.kept))
    print(wrote_line(written))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = add_subcommand(sub, "serve", run_serve)
    add_model_args(p)
    add_runtime_args(p)
    p.add_argument("--http-port", type=positive_int, default=8000, help="HTTP (KServe v2) port")
    p.add_argument("--grpc-port", type=positive_int, default=8001, help="gRPC port")
    p.add_argument("--metrics-port", type=positive_int, default=8002, help="Prometheus metrics port (/metrics)")
    p.add_argument("--max-batch", type=positive_int, default=4, help="largest dynamic batch of requests")
    p.add_argument("--queue-delay-us", type=int, default=2000, help="how long Triton waits to grow a batch")
    p.add_argument(
        "--instances", type=positive_int, default=1, help="model instances (each its own backend: memory x N)"
    )
    p.add_argument(
        "--vocab-cache-mb", type=positive_int, default=512, help="in-memory text features of recent vocabularies"
    )
    p.add_argument("--workspace", default=None, help="PyTriton workspace (must not exist; default: a temporary one)")

    p = add_subcommand(sub, "client", run_client)
    p.add_argument("--url", default="localhost:8000", help="server address (host:port; grpc://host:port for gRPC)")
    add_image_args(p)
    add_classes_arg(p)
    p.add_argument("--topk", type=positive_int, default=None, help="CER top-k (default: the server's)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the server")
    add_output_args(p)
