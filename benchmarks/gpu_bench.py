"""``make gpu-bench``: the torch backend on one GPU at the paper's setting, in one prepared run.

ConvNeXt-B at 768 px (``--weights`` for a checkpoint, e.g. one from ``synth_weights.py``; else
random weights), ADE-150 and ADE-847, no CER and top-8, fp32, bf16 and fp16, with and without
CUDA graphs. Per configuration: end-to-end ms/image (no per-part synchronisation), per-part
medians (a profiled run: every part waits for the device), peak device memory of ``--device``,
CER survivors; against an explicit reference, the fp32 eager run of the same vocabulary and k
made first whatever the flags select: labels equal, max |dprob| and whether the kept set is the
same; and for CUDA-graph rows, labels equal to the eager row of the same precision. It also
reports whether ONNX Runtime's CUDA provider exists (and runs it when ``--engine-dir`` names
exported graphs). Writes ``gpu_bench.json`` and ``gpu_bench.md``; sized to finish in under 6
minutes on an H100/H200.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from sed_trt.benchmarks.bench import _image  # the photo every benchmark uses
from sed_trt.runtime.progress import step

PARTS = ("preprocess_ms", "image_encoder_ms", "decoder_ms", "cer_ms", "postprocess_ms")


def _parts(timings: dict[str, float]) -> dict[str, float]:
    out = dict.fromkeys(PARTS, 0.0)
    for k, v in timings.items():
        if k.startswith("decoder"):
            out["decoder_ms"] += v
        elif k.startswith("cer"):
            out["cer_ms"] += v
        elif k in out:
            out[k] = v
    return out


def _median(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def measure(
    backend: Any, classes: list[str], topk: int | None, image: np.ndarray, repeats: int, cache: Any
) -> tuple[dict[str, Any], Any]:
    """One configuration: end-to-end and per-part medians, peak memory, the last prediction."""
    import torch

    from sed_trt.runtime.predictor import Predictor

    fast = Predictor(backend, topk=topk, cache=cache)
    fast.set_classes(classes)
    profiled = Predictor(backend, topk=topk, cache=cache, profile=True)
    profiled.set_text_features(classes, fast.text_features)  # type: ignore[arg-type]
    device = backend.ops.device
    cuda = torch.cuda.is_available() and device.type == "cuda"
    for _ in range(2):  # warm-up: cuDNN algorithm search, CUDA-graph captures of every chunk shape
        fast.predict(image)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    totals = []
    for _ in range(repeats):
        start = time.perf_counter()
        pred = fast.predict(image)  # labels on the host: the device work is finished
        totals.append((time.perf_counter() - start) * 1e3)
    parts = _median([_parts(profiled.predict(image).timings) for _ in range(max(2, repeats // 2))])
    row = {
        "e2e_ms": statistics.median(totals),
        "e2e_min_ms": min(totals),
        **parts,
        "model_ms": parts["image_encoder_ms"] + parts["decoder_ms"],
        "peak_device_mb": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
        "survivors": pred.survivors,
    }
    return row, pred


def compare(pred: Any, ref: Any) -> dict[str, Any]:
    """Labels equal, max |dprob| and kept-set equality against the fp32 eager reference."""
    return {
        "labels_equal": float((pred.labels == ref.labels).mean()),
        "max_dprob": float(np.abs(pred.probs - ref.probs).max()),
        "kept_same": bool((pred.kept == ref.kept).all()),
    }


def onnxruntime_cuda(engine_dir: str | None, classes: list[str], image: np.ndarray, cache: Any) -> dict[str, Any]:
    """Whether ONNX Runtime's CUDA provider is there, and its end to end if ``engine_dir`` is given."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {"available": False, "why": "onnxruntime is not installed"}
    providers = ort.get_available_providers()
    info: dict[str, Any] = {"available": "CUDAExecutionProvider" in providers, "providers": providers}
    if not info["available"] or engine_dir is None:
        info["run"] = False if engine_dir is None else "no CUDA provider"
        return info
    from sed_trt.runtime.backends import create_backend
    from sed_trt.runtime.predictor import Predictor

    backend = create_backend(
        "onnxruntime", engine_dir=engine_dir, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    with backend:
        pred = Predictor(backend, cache=cache)
        pred.set_classes(classes)
        pred.predict(image)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            pred.predict(image)
            times.append((time.perf_counter() - start) * 1e3)
    info["e2e_ms"] = statistics.median(times)
    return info


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from sed_trt.runtime.predictor import Predictor
    from sed_trt.runtime.text_cache import TextFeatureCache
    from sed_trt.runtime.vocab import load_vocabulary
    from sed_trt.sed.backend import TorchBackend

    device = args.device
    cuda = device.startswith("cuda")
    backbone: Any = args.backbone
    if args.image_size is not None:  # a smaller network input (the CPU smoke test)
        import dataclasses

        from sed_trt.sed.config import load_config

        backbone = dataclasses.replace(load_config(args.backbone), image_size=args.image_size)
    image = _image()
    cache = TextFeatureCache(tempfile.mkdtemp(prefix="sed-gpu-bench-"))
    vocabularies = {name: load_vocabulary(name) for name in args.classes}
    rows: list[dict[str, Any]] = []
    refs: dict[tuple[str, int | None], Any] = {}
    eager: dict[tuple[str, str, int | None], Any] = {}  # (precision, vocabulary, k) -> its eager prediction
    started = time.perf_counter()
    # The reference of every row, made first: fp32, no CUDA graphs, whatever --precisions says.
    backend = TorchBackend(None, backbone=backbone, weights=args.weights, device=device, precision="fp32")
    with backend:
        model = backend.model  # loaded once, shared by every configuration
        for vocab, classes in vocabularies.items():
            for topk in args.topk:
                ref = Predictor(backend, topk=topk, cache=cache)
                ref.set_classes(classes)
                refs[(vocab, topk)] = ref.predict(image)
                refs[(vocab, topk)].probs  # noqa: B018 (read while the backend is active: kept on the host)
                step(f"fp32 eager reference {vocab} topk={topk}: survivors {refs[(vocab, topk)].survivors}")
    for precision in args.precisions:
        for graphs in args.cuda_graphs if cuda else (False,):
            backend = TorchBackend(
                model,
                backbone=backbone,
                weights=args.weights,
                device=device,
                precision=precision,
                cuda_graphs=graphs,
            )
            with backend:
                model = backend.model  # loaded once, shared by every configuration
                for vocab, classes in vocabularies.items():
                    for topk in args.topk:
                        row, pred = measure(backend, classes, topk, image, args.repeats, cache)
                        key = (vocab, topk)
                        if not graphs:
                            eager[(precision, vocab, topk)] = pred.labels
                        same = eager.get((precision, vocab, topk)) if graphs else None
                        row = {
                            "precision": precision,
                            "cuda_graphs": graphs,
                            "classes": vocab,
                            "T": len(classes),
                            "topk": topk,
                            **row,
                            **compare(pred, refs[key]),
                            "labels_equal_eager": None if same is None else float((pred.labels == same).mean()),
                        }
                        rows.append(row)
                        step(
                            f"{precision} graphs={'on' if graphs else 'off'} {vocab} topk={topk}: "
                            f"{row['e2e_ms']:.1f} ms (model {row['model_ms']:.1f}), survivors {row['survivors']}, "
                            f"labels vs fp32 {100 * row['labels_equal']:.2f} %"
                        )
                del pred
            if cuda:
                torch.cuda.empty_cache()
    result = {
        "machine": {
            "gpu": torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
        },
        "setting": {
            "backbone": args.backbone,
            "weights": args.weights or "random",
            "image": f"640x480 (network {args.image_size or 768} px)",
            "repeats": args.repeats,
        },
        "rows": rows,
        "onnxruntime_cuda": onnxruntime_cuda(args.engine_dir, vocabularies[args.classes[0]], image, cache),
        "seconds": time.perf_counter() - started,
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "gpu_bench.md").write_text(markdown(result))
    step(f"wrote {out / 'gpu_bench.json'} and {out / 'gpu_bench.md'} in {result['seconds']:.0f} s")
    return result


def markdown(result: dict[str, Any]) -> str:
    """The table of :func:`run`'s result, and the ratios the release targets name."""
    m, s = result["machine"], result["setting"]
    lines = [
        f"GPU bench: {m['gpu']}, torch {m['torch']} (CUDA {m['cuda']}); {s['backbone']} ({s['weights']} weights), "
        f"{s['image']}; medians of {s['repeats']}.",
        "",
        "| precision | CUDA graphs | classes | top-k | end to end ms | encoder ms | decoder ms | CER ms | post ms "
        "| end to end / model | peak MB | survivors | labels = fp32 | max dprob | kept = fp32 | labels = eager |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        peak = f"{r['peak_device_mb']:.0f}" if r["peak_device_mb"] is not None else "-"
        same = "-" if r.get("labels_equal_eager") is None else f"{100 * r['labels_equal_eager']:.2f} %"
        lines.append(
            f"| {r['precision']} | {'on' if r['cuda_graphs'] else 'off'} | {r['classes']} | {r['topk'] or '-'} "
            f"| {r['e2e_ms']:.1f} | {r['image_encoder_ms']:.1f} | {r['decoder_ms']:.1f} | {r['cer_ms']:.1f} "
            f"| {r['postprocess_ms']:.1f} | {r['e2e_ms'] / max(r['model_ms'], 1e-9):.2f} | {peak} "
            f"| {'/'.join(map(str, r['survivors']))} | {100 * r['labels_equal']:.2f} % | {r['max_dprob']:.1e} "
            f"| {'yes' if r['kept_same'] else 'NO'} "
            f"| {same} |"
        )
    by = {(r["precision"], r["cuda_graphs"], r["T"], r["topk"]): r["e2e_ms"] for r in result["rows"]}
    sizes = sorted({r["T"] for r in result["rows"]})
    if len(sizes) > 1:
        lines.append("")
        for (prec, graphs, t, topk), ms in sorted(by.items(), key=str):
            if t == sizes[-1] and (prec, graphs, sizes[0], topk) in by:
                lines.append(
                    f"- {prec}, CUDA graphs {'on' if graphs else 'off'}, top-k {topk or '-'}: "
                    f"{t} classes take {ms / by[(prec, graphs, sizes[0], topk)]:.2f}x the {sizes[0]}-class time"
                )
    ort = result["onnxruntime_cuda"]
    lines += ["", f"ONNX Runtime CUDA provider: {'present' if ort.get('available') else 'absent'}"]
    if "e2e_ms" in ort:
        lines[-1] += f"; fp32 end to end {ort['e2e_ms']:.1f} ms ({result['rows'][0]['classes']}, no CER)"
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sed_trt.benchmarks.gpu_bench", description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="convnext_b")
    p.add_argument("--weights", default=None, help="SED checkpoint (default: random weights)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--image-size", type=int, default=None, help="network input side (default: the config's, 768)")
    p.add_argument("--classes", nargs="+", default=["ade150", "ade847"])
    p.add_argument("--topk", nargs="+", type=lambda v: None if v == "none" else int(v), default=[None, 8])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"])
    p.add_argument("--cuda-graphs", nargs="+", type=lambda v: v == "on", default=[False, True])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--engine-dir", default=None, help="exported graphs for the ONNX Runtime CUDA row")
    p.add_argument("--out-dir", default="results/gpu")
    args = p.parse_args(argv)
    from sed_trt.runtime.errors import SedTrtError

    try:
        run(args)
    except SedTrtError as exc:  # no GPU, a bad checkpoint...: one line, as the CLI says it
        print(f"gpu_bench: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
