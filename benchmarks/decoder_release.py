"""Same-run comparison of the chunked decoder graphs with those of release 0.1 (issue 11).

Release 0.1 exported one graph per decoder stage over the whole vocabulary (manifest
format 1: ``decoder_stage1..3`` with inputs ``features``, ``corr_guidance``, ``guidance``).
This script drives such a directory with a minimal loop (the 0.1 orchestration without CER)
and the current directory with :class:`sed_trt.runtime.predictor.Predictor`, both in ONNX Runtime
with the same session options, on the same image and text features, repeats interleaved.
It reports median milliseconds per part, peak RSS of each side (measured in a child
process per side and vocabulary size, so the two do not share an allocator), and the
agreement of their labels.

    python -m sed_trt.benchmarks.decoder_release --old OLD_DIR --new NEW_DIR [--classes 150] [--repeats 3] [--arena] [--floor]

Make OLD_DIR with ``sed-trt export`` from a checkout of release 0.1 (``git worktree add``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from sed_trt.benchmarks.bench import MemoryMonitor, _image, _text
from sed_trt.runtime.image import preprocess
from sed_trt.runtime.postprocess import labels_from_probs


class Release01:
    """The 0.1 graphs (one per stage, whole vocabulary) in ONNX Runtime, no CER."""

    def __init__(self, engine_dir: Path, threads: int | None = None, arena: bool = False) -> None:
        import onnxruntime as ort

        manifest = json.loads((engine_dir / "manifest.json").read_text())
        if manifest.get("format") != 1:
            raise SystemExit(f"{engine_dir} is not a release-0.1 engine directory (manifest format 1)")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.enable_cpu_mem_arena = arena  # set like the current side, so both allocate alike
        if threads:
            opts.intra_op_num_threads = threads
        self.sessions = {
            g: ort.InferenceSession(str(engine_dir / f), opts, providers=["CPUExecutionProvider"])
            for g, f in manifest["graphs"].items()
        }

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sess = self.sessions[graph]
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(names, feeds)))

    def predict(self, image: np.ndarray, text: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        times: dict[str, float] = {}
        t0 = time.perf_counter()
        enc = self._run("image_encoder", {"image": preprocess([image], 768)["image"]})  # release 0.1 resizes inside
        t1 = time.perf_counter()
        out = self._run("decoder_stage0", {"clip_dense": enc["clip_dense"], "text_features": text})
        for k in (1, 2, 3):
            feeds = {
                "features": out["next_features"],
                "corr_guidance": out["next_corr_guidance"],
                "guidance": enc[f"guidance{k}"],
            }
            out = self._run(f"decoder_stage{k}", feeds)
        t2 = time.perf_counter()
        labels = labels_from_probs(out["probs"][0], (image.shape[0], image.shape[1]))
        t3 = time.perf_counter()
        times.update(encoder_ms=(t1 - t0) * 1e3, decoder_ms=(t2 - t1) * 1e3, postprocess_ms=(t3 - t2) * 1e3)
        times["total_ms"] = (t3 - t0) * 1e3
        return labels, times


def _current(
    engine_dir: Path, text: np.ndarray, threads: int | None, class_chunk: int | None, arena: bool = False
) -> Any:
    from sed_trt.runtime.backends import create_backend
    from sed_trt.runtime.predictor import Predictor

    backend = create_backend("onnxruntime", engine_dir=engine_dir, threads=threads, mem_arena=arena).activate()
    pred = Predictor(backend, class_chunk=class_chunk, profile=True)
    pred.set_text_features([f"c{i}" for i in range(len(text))], text)
    return pred


def _split(timings: dict[str, float]) -> dict[str, float]:
    dec = sum(v for k, v in timings.items() if k.startswith(("decoder", "cer")))
    return {
        "encoder_ms": timings["image_encoder_ms"] + timings["preprocess_ms"],
        "decoder_ms": dec,
        "postprocess_ms": timings["postprocess_ms"],
        "total_ms": timings["total_ms"],
    }


def _memory_child(side: str, engine_dir: str, classes: int, threads: int | None, chunk: int | None, q: Any) -> None:
    image, text = _image(), None
    with MemoryMonitor() as mem:
        if side == "old":
            old = Release01(Path(engine_dir), threads)
            dims = json.loads((Path(engine_dir) / "manifest.json").read_text())["dims"]
            text = _text(classes, argparse.Namespace(**dims))
            old.predict(image, text)
        else:
            from sed_trt.runtime.manifest import Manifest

            text = _text(classes, Manifest.load(engine_dir).dims)
            _current(Path(engine_dir), text, threads, chunk).predict(image)
    q.put(mem.result()["peak_host_mb"])


def peak_rss_mb(side: str, engine_dir: Path, classes: int, threads: int | None, chunk: int | None) -> float:
    """Peak RSS of one prediction (model load included) in a fresh process."""
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_memory_child, args=(side, str(engine_dir), classes, threads, chunk, q))
    p.start()
    p.join()
    return float(q.get()) if p.exitcode == 0 else float("nan")


def compare(
    old_dir: Path,
    new_dir: Path,
    classes: int,
    repeats: int,
    threads: int | None,
    class_chunk: int | None,
    arena: bool = False,
) -> dict[str, Any]:
    from sed_trt.runtime.manifest import Manifest

    image = _image()
    text = _text(classes, Manifest.load(new_dir).dims)
    old = Release01(old_dir, threads, arena)
    new = _current(new_dir, text, threads, class_chunk, arena)
    old_labels, _ = old.predict(image, text)  # warm-up, and the labels to compare
    new_pred = new.predict(image)
    rows: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for _ in range(repeats):  # interleaved
        rows["old"].append(old.predict(image, text)[1])
        rows["new"].append(_split(new.predict(image).timings))
    med = {side: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for side, rs in rows.items()}
    return {
        "classes": classes,
        "class_chunk": new.class_chunk,
        "ort_arena": arena,
        "median_ms": med,
        "speedup": {k: med["old"][k] / med["new"][k] for k in med["old"]},
        "label_agreement": float((old_labels == new_pred.labels).mean()),
    }


def floor(timing: dict[str, Any], new_dir: Path, threads: int | None) -> dict[str, Any]:
    """What issue 11's targets ask of this machine, from one :func:`compare` result.

    The decoder's FLOPs per class (matmuls and convolutions, counted on the graph table by
    :func:`sed_trt.benchmarks.bench.graph_flops`), this machine's fp32 GEMM rate, and for each target
    the decoder time it allows and the rate the decoder would need to meet it: a share of the
    GEMM rate near or above 100 % cannot be met by computing the same function in fp32.
    """
    import dataclasses as dc

    from sed_trt.benchmarks.bench import gemm_gflops, graph_flops
    from sed_trt.runtime.io_spec import DECODER_GRAPHS
    from sed_trt.runtime.manifest import Manifest
    from sed_trt.sed.build import load_sed
    from sed_trt.sed.config import load_config

    manifest = Manifest.load(new_dir)
    side = manifest.dims.image_size
    model = load_sed(dc.replace(load_config(manifest.backbone), image_size=side), None)
    per_class = sum(graph_flops(model, (side, side))[g][1] for g in DECODER_GRAPHS)
    peak = gemm_gflops(threads)
    old, new = timing["median_ms"]["old"], timing["median_ms"]["new"]
    budgets = {
        "decoder 2.5x": old["decoder_ms"] / 2.5,
        "end to end 2x": old["total_ms"] / 2 - new["encoder_ms"] - new["postprocess_ms"],
    }
    work = per_class * timing["classes"]
    targets = {}
    for name, ms in budgets.items():
        rate = work / (ms / 1e3) / 1e9 if ms > 0 else float("inf")
        targets[name] = {"decoder_ms_allowed": ms, "gflops_needed": rate, "share_of_gemm": rate / peak}
    achieved = work / (new["decoder_ms"] / 1e3) / 1e9
    return {
        "decoder_gflop_per_class": per_class / 1e9,
        "gemm_gflops": peak,
        "decoder_gflops_now": achieved,
        "targets": targets,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", type=Path, required=True, help="release-0.1 engine directory (manifest format 1)")
    p.add_argument("--new", type=Path, required=True, help="current engine directory")
    p.add_argument("--classes", type=int, nargs="+", default=[150], help="vocabulary sizes to time")
    p.add_argument("--memory-classes", type=int, nargs="*", default=[], help="vocabulary sizes to measure peak RSS at")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats per side")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    p.add_argument("--class-chunk", type=int, default=None, help="chunk of the current side (default: the export's)")
    p.add_argument("--arena", action="store_true", help="ONNX Runtime's CPU arena on both sides (timing only)")
    p.add_argument(
        "--floor",
        action="store_true",
        help="also the FLOP rate each speed target needs against this machine's GEMM rate",
    )
    p.add_argument("--out", type=Path, default=Path("results/decoder_release.json"), help="JSON report to write")
    args = p.parse_args(argv)
    report: dict[str, Any] = {"timing": [], "memory": []}
    for classes in args.classes:
        r = compare(args.old, args.new, classes, args.repeats, args.threads, args.class_chunk, args.arena)
        report["timing"].append(r)
        print(json.dumps(r), flush=True)
        if args.floor:
            r["floor"] = floor(r, args.new, args.threads)
            print(json.dumps({"classes": classes, "floor": r["floor"]}), flush=True)
    for classes in args.memory_classes:
        for side, d in (("old", args.old), ("new", args.new)):
            m = {
                "side": side,
                "classes": classes,
                "peak_host_mb": peak_rss_mb(side, d, classes, args.threads, args.class_chunk),
            }
            report["memory"].append(m)
            print(json.dumps(m), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
