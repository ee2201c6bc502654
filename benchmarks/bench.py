"""PyTorch vs ONNX Runtime vs TensorRT: ms/image end to end and per part, with and without CER.

Every backend sees the same synthetic image and the same text features. Random weights
make CER keep an arbitrary number of classes, so each row reports the survivors per
stage, and a controlled row times the decoder stages at a fixed survivor count.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sed_trt.benchmarks.figures import matplotlib_missing, write_figures
from sed_trt.runtime.errors import SedTrtError
from sed_trt.runtime.progress import Progress, step


@dataclasses.dataclass
class BenchConfig:
    """What to measure."""

    backbone: str = "convnext_b"
    weights: str | None = None
    image_sizes: tuple[int, ...] = (384,)
    vocab_sizes: tuple[int, ...] = (20, 150, 847)
    topks: tuple[int | None, ...] = (None, 8)
    fixed_survivors: int = 16
    backends: tuple[str, ...] = ("torch", "onnxruntime", "tensorrt")
    repeats: int = 3
    warmup: int = 1
    threads: int | None = None
    device: str = "cpu"  # the torch backend's device (cuda for the PyTorch-on-GPU rows)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # backend options, each to its backends
    out_dir: str = "results"
    int8_calibration: str | None = None  # photos for the int8 graphs (export --int8) of -int8 rows


def _stats(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))]
    return {"median": statistics.median(xs), "p90": p90, "min": xs[0], "max": xs[-1]}


def _image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:480, 0:640]
    base = np.stack([xx / 640 * 255, yy / 480 * 255, (xx + yy) % 256], axis=-1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def _text(num_classes: int, dims: Any, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = rng.standard_normal((num_classes, dims.num_templates, dims.embed_dim)).astype(np.float32)
    return t / np.linalg.norm(t, axis=-1, keepdims=True)


def _peak_host_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class MemoryMonitor:
    """Peak host RSS and private memory (sampled every 10 ms from /proc) and device memory over
    one configuration. Private is RSS less file-backed pages: OpenVINO maps its cached models
    (clean, shared between processes, reclaimable), ONNX Runtime copies weights into private memory.

    Device: the torch caching allocator's peak (torch tensors, TensorRT I/O buffers) and the
    device-wide used memory at the end (adds TensorRT's and ONNX Runtime's own allocations).
    """

    def __init__(self, interval: float = 0.01) -> None:
        import threading

        self.interval = interval
        self.peak_rss = 0
        self.peak_private = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> tuple[int, int]:
        """(resident, resident and not file-backed) bytes."""
        try:
            with open("/proc/self/statm") as f:
                fields = f.read().split()
            return int(fields[1]) * self._page, (int(fields[1]) - int(fields[2])) * self._page
        except OSError:
            peak = int(_peak_host_mb() * 2**20)
            return peak, peak

    def _rss(self) -> int:
        rss, private = self._sample()
        self.peak_private = max(self.peak_private, private)
        return rss

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self._rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> MemoryMonitor:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.peak_rss = self._rss()  # also starts peak_private
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self._rss())

    def result(self) -> dict[str, float | None]:
        import torch

        out: dict[str, float | None] = {
            "peak_host_mb": self.peak_rss / 2**20,
            "peak_private_mb": self.peak_private / 2**20,
            "peak_torch_device_mb": None,
            "device_used_mb": None,
        }
        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            out["peak_torch_device_mb"] = torch.cuda.max_memory_allocated() / 2**20
            out["device_used_mb"] = (total - free) / 2**20
        return out


def graph_flops(model: Any, image_hw: tuple[int, int], pooling: int = 1) -> dict[str, tuple[float, float]]:
    """FLOPs of every graph as (fixed, per class), counted on the graph table (:mod:`sed.graphs`)
    with torch's FLOP counter: matmuls and convolutions (2 per multiply-add), the work a FLOP
    floor is made of; element-wise ops are not counted. The image encoder at ``image_hw``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from sed_trt.export.onnx_export import example_inputs
    from sed_trt.runtime.image import preprocess
    from sed_trt.runtime.io_spec import DECODER_GRAPHS, IMAGE_ENCODER, graph_specs
    from sed_trt.sed.graphs import graph_outputs

    specs = graph_specs(model.io_dims(), pooling)

    def count(graph: str, feeds: dict[str, np.ndarray]) -> float:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            graph_outputs(model, graph, [torch.from_numpy(feeds[n]) for n in specs[graph].input_names], pooling=pooling)
        return float(fc.get_total_flops())

    image = np.zeros((*image_hw, 3), dtype=np.uint8)
    out = {IMAGE_ENCODER: (count(IMAGE_ENCODER, preprocess([image], model.cfg.image_size)), 0.0)}
    for graph in DECODER_GRAPHS:
        one, two = (count(graph, example_inputs(specs[graph], {"B": 1, "N": n})) for n in (1, 2))
        out[graph] = (2 * one - two, two - one)
    return out


def gemm_gflops(threads: int | None = None, size: int = 2048, repeats: int = 5) -> float:
    """This machine's fp32 GEMM rate (torch, best of ``repeats``): the FLOP floor's denominator."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        a @ b
        best = min(_timed(lambda: a @ b) for _ in range(repeats))
    finally:
        torch.set_num_threads(saved)
    return 2 * size**3 / best / 1e9


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def efficiency(
    parts_ms: dict[str, float], survivors: list[int], vocab: int, flops: dict[str, tuple[float, float]], peak: float
) -> dict[str, dict[str, float]]:
    """Achieved GFLOP/s and share of the GEMM rate per part of one prediction (CER survivors counted)."""
    from sed_trt.runtime.io_spec import DECODER_STAGE0, FUSE_GRAPHS, IMAGE_ENCODER, SUMMARY_GRAPHS

    def total(graphs: tuple[str, ...], classes: int) -> float:
        return sum(flops[g][0] + flops[g][1] * classes for g in graphs)

    work = {
        "image_encoder": (total((IMAGE_ENCODER,), 0), parts_ms.get("image_encoder_ms")),
        "decoder_stage0": (total((DECODER_STAGE0,), vocab), parts_ms.get("decoder_stage0_ms")),
    }
    for k in (1, 2, 3):
        work[f"decoder_stage{k}"] = (
            total((SUMMARY_GRAPHS[k - 1], FUSE_GRAPHS[k - 1]), survivors[k - 1]),
            parts_ms.get(f"decoder_stage{k}_ms"),
        )
    out = {}
    for name, (f, ms) in work.items():
        if ms:
            rate = f / (ms / 1e3) / 1e9
            out[name] = {"gflop": f / 1e9, "gflops": rate, "share": rate / peak}
    return out


def _engine_dir(cfg: BenchConfig, image_size: int, model: Any) -> Path:
    from sed_trt.export.onnx_export import run_export
    from sed_trt.export.qdq import QuantRequest
    from sed_trt.runtime.errors import EngineError
    from sed_trt.runtime.fsutil import file_sha256
    from sed_trt.runtime.io_spec import ExportLimits
    from sed_trt.runtime.manifest import Manifest

    out = Path(cfg.out_dir) / "engines" / f"{Path(cfg.backbone).stem}_{image_size}"
    try:
        m = Manifest.load(out)
    except EngineError:
        m = None  # nothing (usable) there yet: export
    # reuse an earlier export only if it is this backbone, size and weights, and large enough
    weights_sha = file_sha256(cfg.weights) if cfg.weights else None
    if (
        m is not None
        and m.backbone == Path(cfg.backbone).stem
        and m.dims.image_size == image_size
        and m.checkpoint_sha256 == weights_sha
        and m.limits.max_classes >= max(cfg.vocab_sizes)
        and (cfg.int8_calibration is None or bool(m.int8_graphs))
    ):
        return out
    step(f"exporting {cfg.backbone} at {image_size}px for the ONNX Runtime/TensorRT rows -> {out}")
    run_export(
        model,
        out,
        backbone=Path(cfg.backbone).stem,
        weights=cfg.weights,
        limits=ExportLimits(max_classes=max(1000, max(cfg.vocab_sizes))),
        validate=False,
        quant=QuantRequest(Path(cfg.int8_calibration)) if cfg.int8_calibration else None,
    )
    return out


def _backends(cfg: BenchConfig, model: Any, engine_dir: Callable[[], Path]) -> list[Any]:
    """The backends to measure (labels, opened like any tool opens them), created but not active:
    each is activated for its own rows only, so a row's peak RSS holds one backend's models."""
    from sed_trt.runtime.backends.registry import parse_label
    from sed_trt.runtime.deployment import Deployment

    out = []
    for label in cfg.backends:
        try:
            spec, _ = parse_label(label)
            if spec.loads == "checkpoint":
                own = {o.keyword for o in spec.options}
                deployment = Deployment(
                    backend=label,
                    backbone=cfg.backbone if isinstance(cfg.backbone, str) else None,
                    device=cfg.device,
                    threads=cfg.threads,
                    options={k: v for k, v in cfg.options.items() if k in own},
                )
                out.append(deployment.open_backend(model=model.to(cfg.device)))
                continue
            else:
                if spec.name == "tensorrt":  # engines are built from the exported graphs, once
                    from sed_trt.export.trt_build import build_engines, tensorrt_unavailable_reason

                    reason = tensorrt_unavailable_reason()
                    if reason:
                        step(f"{label} rows skipped: {reason}")
                        continue
                    if not _has_engines(engine_dir()):
                        build_engines(engine_dir())
                own = {o.keyword for o in spec.options}
                deployment = Deployment(
                    backend=label,
                    engine_dir=str(engine_dir()),
                    device="cuda" if spec.placement == "gpu" else "cpu",
                    threads=None if spec.placement == "gpu" else cfg.threads,
                    options={k: v for k, v in cfg.options.items() if k in own},
                )
            out.append(deployment.open_backend())
        except SedTrtError as exc:
            step(f"{label} rows skipped: {exc}")
    return out


def _has_engines(engine_dir: Path) -> bool:
    from sed_trt.runtime.manifest import Manifest

    return bool(Manifest.load(engine_dir).engines)


def _rotation(items: list[Any], round_: int) -> list[Any]:
    """``items`` starting at position ``round_`` (mod len): who goes first changes every round."""
    k = round_ % len(items) if items else 0
    return items[k:] + items[:k]


def _time_predicts(
    preds: dict[Any, Any], image: np.ndarray, repeats: int, warmup: int
) -> dict[Any, tuple[list[float], dict[str, list[float]], list[int]]]:
    """Every predictor ``repeats`` times, interleaved: round r runs each once, in an order rotated
    by r, so load that comes and goes on the machine falls on every backend alike."""
    for pred in preds.values():
        for _ in range(warmup):
            pred.predict(image)
    out: dict[Any, tuple[list[float], dict[str, list[float]], list[int]]] = {k: ([], {}, []) for k in preds}
    for r in range(repeats):
        for key in _rotation(list(preds), r):
            totals, parts, survivors = out[key]
            start = time.perf_counter()
            res = preds[key].predict(image)
            totals.append((time.perf_counter() - start) * 1e3)
            for k, v in res.timings.items():
                parts.setdefault(k, []).append(v)
            survivors[:] = res.survivors
    return out


class _FixedSurvivors:
    """Decoder stages 1-3 of one backend on exactly ``survivors`` classes (the controlled CER setting)."""

    def __init__(self, backend: Any, text: np.ndarray, image: np.ndarray, survivors: int) -> None:
        from sed_trt.runtime.image import preprocess
        from sed_trt.runtime.predictor import Predictor

        self.ops = backend.ops
        self.pred = Predictor(backend)
        self.keep = min(survivors, text.shape[0])
        self.pred.set_text_features([f"c{i}" for i in range(self.keep)], text[: self.keep])
        feeds = {k: self.ops.from_numpy(v) for k, v in preprocess([image], backend.dims.image_size).items()}
        self.enc = self.pred.encode_image(feeds)
        self.first = self.pred.decode_stage0(self.enc)

    def __call__(self) -> float:
        self.ops.synchronize()
        start = time.perf_counter()
        out = dataclasses.replace(
            self.first, features=self.ops.take(self.first.features, self.ops.index(np.arange(self.keep)), 1)
        )  # stage 1 works in place
        for k in (1, 2, 3):
            out = self.pred.decode_stage(k, out, self.enc)
        self.ops.synchronize()
        return (time.perf_counter() - start) * 1e3


def _interleaved(fns: dict[Any, Callable[[], float]], repeats: int) -> dict[Any, dict[str, float]]:
    """``repeats`` rounds (after one warm-up) of every timed function, rotated as in :func:`_time_predicts`."""
    times: dict[Any, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for r in range(repeats):
        for key in _rotation(list(fns), r):
            times[key].append(fns[key]())
    return {k: _stats(v) for k, v in times.items()}


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Measure every configuration; write bench.json, bench.md and the figures under ``cfg.out_dir``.

    Times are interleaved: all backends are open together and each repetition runs every backend
    once, in an order that rotates, so a machine's changing load lands on all of them alike and
    the rows of one run compare. Peak memory is then measured backend by backend, each alone
    (one prediction per configuration), as a deployment would hold it.
    """
    import dataclasses as dc

    import torch

    from sed_trt.runtime.predictor import Predictor
    from sed_trt.sed.build import load_sed
    from sed_trt.sed.config import load_config

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    image = _image()
    rows: list[dict[str, Any]] = []
    text_rows: list[dict[str, Any]] = []
    peak = gemm_gflops(cfg.threads)
    for size in cfg.image_sizes:
        model = load_sed(dc.replace(load_config(cfg.backbone), image_size=size), cfg.weights)
        flops = graph_flops(model, (image.shape[0], image.shape[1]))
        exported: list[Path] = []  # exported on first use: torch-only runs need no graphs

        def engine_dir(size: int = size, model: Any = model, exported: list[Path] = exported) -> Path:
            if not exported:
                exported.append(_engine_dir(cfg, size, model))
            return exported[0]

        active = []
        for backend in _backends(cfg, model, engine_dir):
            try:
                backend.activate()
            except SedTrtError as exc:
                step(f"{backend.label} rows skipped: {exc}")
                continue
            active.append(backend)
        configs = [(vocab, topk) for vocab in cfg.vocab_sizes for topk in (*cfg.topks, "fixed")]
        bar = Progress(len(configs) + 1, f"bench {size}px, {len(active)} backends interleaved")
        encoders = {b: Predictor(b, profile=True) for b in active}
        tokens = next(iter(encoders.values())).tokenizer(["a photo of a cat."] * 80)[:, :8] if active else None

        def encode(pred: Any, tokens: Any = tokens) -> Callable[[], float]:
            return lambda: _timed(lambda: pred.encode_text(tokens)) * 1e3

        text_ms = _interleaved({b: encode(p) for b, p in encoders.items()}, cfg.repeats)
        text_rows += [{"backend": b.label, "image_size": size, "prompts": 80, "ms": text_ms[b]} for b in active]
        bar.update(1, "text encoder")
        measured: dict[tuple[Any, int, Any], dict[str, Any]] = {}
        for vocab, topk in configs:
            text = _text(vocab, model.io_dims())
            if topk == "fixed":
                fixed = _interleaved(
                    {b: _FixedSurvivors(b, text, image, cfg.fixed_survivors) for b in active}, cfg.repeats
                )
                for b in active:
                    measured[(b, vocab, topk)] = {
                        "setting": f"fixed_{cfg.fixed_survivors}",
                        "topk": None,
                        "ms": fixed[b],
                        "parts_ms": {},
                        "survivors": [min(cfg.fixed_survivors, vocab)] * 3,
                    }
            else:
                k = topk if isinstance(topk, int) else None
                preds = {}
                for b in active:
                    preds[b] = Predictor(b, topk=k, profile=True)
                    preds[b].set_text_features([f"c{i}" for i in range(vocab)], text)
                for b, (totals, parts, survivors) in _time_predicts(preds, image, cfg.repeats, cfg.warmup).items():
                    medians = {k: statistics.median(v) for k, v in parts.items()}
                    measured[(b, vocab, topk)] = {
                        "setting": "cer" if topk else "no_cer",
                        "topk": topk,
                        "ms": _stats(totals),
                        "parts_ms": medians,
                        "survivors": survivors,
                        "efficiency": efficiency(medians, survivors, vocab, flops, peak),
                    }
            line = ", ".join(f"{b.label} {measured[(b, vocab, topk)]['ms']['median']:.0f}" for b in active)
            bar.update(1, f"T={vocab} {'stages 1-3 fixed' if topk == 'fixed' else f'topk={topk}'}: {line} ms")
        del encoders
        for b in active:
            b.deactivate()
        gc.collect()
        for b in active:  # memory, each backend alone
            b.activate()
            for vocab, topk in configs:
                text = _text(vocab, model.io_dims())
                with MemoryMonitor() as mem:
                    if topk == "fixed":
                        _FixedSurvivors(b, text, image, cfg.fixed_survivors)()
                    else:
                        pred = Predictor(b, topk=topk if isinstance(topk, int) else None)
                        pred.set_text_features([f"c{i}" for i in range(vocab)], text)
                        pred.predict(image)
                rows.append(
                    {
                        "backend": b.label,
                        "image_size": size,
                        "vocab": vocab,
                        **measured[(b, vocab, topk)],
                        **b.placement(),
                        **mem.result(),
                    }
                )
            b.deactivate()
            gc.collect()  # drop the sessions now, before the next backend's memory
    machine = {
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_bf16": _cpu_bf16(),
        "fp32_gemm_gflops": peak,
    }
    result = {"config": dc.asdict(cfg), "machine": machine, "rows": rows, "text_encoder": text_rows}
    (out_dir / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "bench.md").write_text(markdown_table(result))
    written = [out_dir / "bench.json", out_dir / "bench.md"]
    reason = matplotlib_missing()
    if reason:
        step(f"figures skipped: {reason}")
    else:
        written += [f.path for f in write_figures(result, out_dir)]
    step(f"wrote {', '.join(map(str, written))}")
    return result


def _cpu_bf16() -> str:
    """Which native bf16 the CPU has (AMX, AVX512-BF16) from /proc/cpuinfo flags, or 'none'."""
    try:
        flags = next(
            (
                line.split(":", 1)[1].split()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("flags")
            ),
            [],
        )
    except OSError:
        return "unknown"
    found = [name for flag, name in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16")) if flag in flags]
    return ", ".join(found) or "none"


def _cpu_model() -> str:
    """The CPU model name (/proc/cpuinfo on Linux), else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _decoder_rate(row: dict[str, Any]) -> str:
    eff = row.get("efficiency") or {}
    dec = [v for k, v in eff.items() if k.startswith("decoder")]
    if not dec:
        return "-"
    gflop = sum(v["gflop"] for v in dec)
    seconds = sum(v["gflop"] / v["gflops"] for v in dec)
    share = sum(v["gflop"] / v["share"] for v in dec)  # GFLOP / share = GFLOP/s of the peak x seconds
    return f"{gflop / seconds:.0f} ({100 * gflop / share:.0f} %)"


def _weights_said(weights: str | None) -> str:
    """How the table names the weights: random, or the checkpoint's file name (trained or not)."""
    return "random weights" if not weights else f"weights {Path(weights).name}"


def markdown_table(result: dict[str, Any]) -> str:
    """The people-facing table."""
    m = result["machine"]
    lines = [
        f"Machine: {m['processor']}, {m['cpu_count']} CPUs (native bf16: {m.get('cpu_bf16', 'unknown')}), GPU: {m['cuda'] or 'none'}; {m['platform']}. "
        f"Threads: torch {m['torch_threads']}, ONNX Runtime / OpenVINO {result['config']['threads'] or 'default (one per physical core)'}; "
        f"ONNX Runtime CPU arena {'off' if result['config'].get('options', {}).get('mem_arena') is False else 'on'}."
        + (
            " A row named -bf16, -fp16 or -int8 computes in that precision where its backend does (torch: autocast with"
            " fp32 islands; openvino-bf16: the decoder, its image encoder in f32; -int8: the image encoder); every"
            " other row in fp32."
            if any(r["backend"].rsplit("-", 1)[-1] in ("bf16", "fp16", "int8") for r in result["rows"])
            else ""
        ),
        f"Backbone {result['config']['backbone']} ({_weights_said(result['config']['weights'])}); median of {result['config']['repeats']} runs after {result['config']['warmup']} warm-up, the backends interleaved (each round runs every backend once, in a rotating order); peak memory measured with each backend alone.",
        "",
        f"Efficiency: achieved GFLOP/s of matmuls and convolutions (counted on the graphs) and its share of this machine's fp32 GEMM rate, {m.get('fp32_gemm_gflops', float('nan')):.0f} GFLOP/s (torch, 2048^3).",
        "",
        "| backend | input | classes | setting | median ms | spread ms (min-max) | encoder ms | decoder ms | post-processing ms | decoder GFLOP/s (share) | survivors per stage | peak host MB (private) | peak device MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        parts = r["parts_ms"]
        dec = sum(v for k, v in parts.items() if k.startswith(("decoder", "cer"))) if parts else r["ms"]["median"]
        enc = f"{parts['image_encoder_ms']:.0f}" if parts else "-"
        setting = {"no_cer": "no CER", "cer": f"CER top-{r['topk']}"}.get(
            r["setting"], r["setting"].replace("fixed_", "stages 1-3 at T'=")
        )
        dev = r.get("peak_torch_device_mb")
        dev_text = "-" if dev is None else f"{dev:.0f} (device used {r['device_used_mb']:.0f})"
        post = f"{parts['postprocess_ms']:.0f}" if "postprocess_ms" in parts else "-"
        lines.append(
            f"| {r['backend']} | {r['image_size']} | {r['vocab']} | {setting} | {r['ms']['median']:.0f} | {r['ms']['min']:.0f}-{r['ms'].get('max', r['ms']['p90']):.0f} | {enc} | {dec:.0f} | {post} | {_decoder_rate(r)} | {r['survivors']} | {r['peak_host_mb']:.0f} ({r.get('peak_private_mb', 0):.0f}) | {dev_text} |"
        )
    eff_rows = [r for r in result["rows"] if r.get("efficiency") and r["setting"] == "no_cer"]
    if eff_rows:
        parts_names = ["image_encoder", "decoder_stage0", "decoder_stage1", "decoder_stage2", "decoder_stage3"]
        lines += [
            "",
            "Per part, without CER: GFLOP/s (share of the GEMM rate).",
            "",
            "| backend | input | classes | " + " | ".join(n.replace("_", " ") for n in parts_names) + " |",
            "|---|---|---|" + "---|" * len(parts_names),
        ]
        for r in eff_rows:
            cells = [
                f"{r['efficiency'][n]['gflops']:.0f} ({100 * r['efficiency'][n]['share']:.0f} %)"
                if n in r["efficiency"]
                else "-"
                for n in parts_names
            ]
            lines.append(f"| {r['backend']} | {r['image_size']} | {r['vocab']} | " + " | ".join(cells) + " |")
    lines += ["", "| backend | text encoder, 80 prompts (ms) |", "|---|---|"]
    lines += [f"| {t['backend']} ({t['image_size']}) | {t['ms']['median']:.0f} |" for t in result["text_encoder"]]
    return "\n".join(lines) + "\n"
