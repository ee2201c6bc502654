"""Export SED to ONNX graphs (dynamo exporter, single files) and validate them in ONNX Runtime.

The chain is ``export_graph -> check_trt_compatible -> validate_graph`` per graph, then the
manifest; ``run_export`` drives it for a whole model (``make engine`` / ``sed-trt export``).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import onnxscript.optimizer
import torch

from sed_trt.export.check import check_trt_compatible
from sed_trt.export.qdq import QuantRequest
from sed_trt.export.trt_build import TIMING_CACHE_GLOB
from sed_trt.export.wrappers import wrapper_for
from sed_trt.runtime.errors import ConfigError, EngineError, ExportError
from sed_trt.runtime.fsutil import check_writable_dir, current_umask, file_sha256, real_path
from sed_trt.runtime.io_spec import (
    CER_GRAPHS,
    GRAPH_NAMES,
    IMAGE_ENCODER,
    LABELS,
    TEXT_ENCODER,
    ExportLimits,
    GraphSpec,
    ModelDims,
    graph_specs,
)
from sed_trt.runtime.jsonutil import read_json
from sed_trt.runtime.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, Manifest
from sed_trt.runtime.progress import step
from sed_trt.runtime.tokenizer import BPE_FILENAME, default_bpe_path
from sed_trt.sed.checkpoint import text_tower_fingerprint
from sed_trt.sed.modeling.sed import SED

DEFAULT_OPSET = 20
# Example sizes used for tracing: >= 2 on every dynamic axis so none is specialised.
TRACE_SIZES = {"B": 2, "N": 3, "Q": 4, "L": 7, "H": 64, "W": 96, "T": 5, "R": 3, "X": 6}


def example_inputs(
    spec: GraphSpec, sizes: dict[str, int], *, seed: int = 0, vocab_size: int = 49408
) -> dict[str, np.ndarray]:
    """Random feeds for a graph at the given axis sizes (tokens end with EOT, as real ones do)."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    side = {t.name: t.shape[-1] for t in spec.inputs}.get("probs", 1)  # the labels graph's map side
    for t in spec.inputs:
        shape = t.concrete(sizes)
        arr: np.ndarray
        if t.name.startswith("canvas_"):  # where the canvas reads each photo: a smaller photo than the padding
            from sed_trt.runtime.image import canvas_positions

            table = canvas_positions(max(1, sizes["H"] - 3), max(1, sizes["W"] - 5), int(t.shape[-1]))[t.name]
            arr = np.broadcast_to(table, shape).copy()
        elif t.name == "rank":  # k - 1 of CER's top-k
            arr = np.array([min(1, sizes["T"] - 1)], dtype=np.int64)
        elif t.name in ("rows", "cols"):
            arr = rng.integers(0, int(side), size=shape, dtype=np.int64)
        elif t.name in ("row_weights", "col_weights", "probs"):
            arr = rng.uniform(0, 1, size=shape).astype(np.float32)
        elif t.dtype == "int32":  # class ids and labels
            arr = rng.integers(0, 1000, size=shape, dtype=np.int32)
        elif t.dtype == "int64":
            arr = rng.integers(1, vocab_size - 2, size=shape, dtype=np.int64)
            arr[:, 0] = vocab_size - 2  # SOT
            arr[:, -1] = vocab_size - 1  # EOT (the largest id: where the encoder pools)
        elif t.name == "image":
            arr = rng.uniform(0, 255, size=shape).astype(np.float32)
        elif t.name in (
            "class_kv",
            "class_kv_in",
        ):  # sums of positive keys (elu + 1) hold the denominators: keep them positive
            arr = rng.uniform(0.1, 1.0, size=shape).astype(np.float32)
        else:
            arr = rng.standard_normal(shape).astype(np.float32)
        feeds[t.name] = arr
    return feeds


def _dynamic_shapes(spec: GraphSpec, limits: ExportLimits) -> tuple[dict[int, object], ...]:
    """Dynamic axes of every input, in the spec's order (the wrappers' argument names may differ)."""
    dims: dict[str, object] = {}
    out: list[dict[int, object]] = []
    for t in spec.inputs:
        axes = {}
        for ax, name in t.dynamic_axes().items():
            r = limits.range_of(name)
            # torch.export cannot bound an axis below 2 without specialising 0/1 cases; the
            # exported ONNX has no bound at all, the limits are enforced by the runtime.
            axes[ax] = dims.setdefault(name, torch.export.Dim(name, min=1, max=max(r.max, 4096)))
        out.append(axes)
    return tuple(out)


FOLD_LIMIT = 1 << 24  # elements: every weight of SED-L's graphs is smaller


def export_graph(
    module: torch.nn.Module, spec: GraphSpec, path: Path, *, limits: ExportLimits, opset: int = DEFAULT_OPSET
) -> Path:
    """Export one wrapper to a single-file ONNX graph with the spec's names and dynamic axes."""
    feeds = example_inputs(spec, TRACE_SIZES)
    args = tuple(torch.from_numpy(feeds[n]) for n in spec.input_names)
    log = io.StringIO()
    with torch.no_grad(), contextlib.redirect_stdout(log), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            external_data=False,
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_shapes=_dynamic_shapes(spec, limits),
            opset_version=opset,
            optimize=True,
            verbose=False,
        )
    if program is None:
        raise ExportError(f"torch.onnx.export returned nothing for {spec.name}: {log.getvalue()[-500:]}")
    written = dict(getattr(program.model, "opset_imports", {})).get("", opset)
    if written != opset:  # the exporter fell back to another opset: the manifest would say the wrong one
        raise ExportError(f"{spec.name}: torch's exporter wrote opset {written}, not the {opset} asked for")
    # Fold what the exporter's size limits (8192 inputs) leave computed from weights at run time:
    # the norm affines and scales folded into 1x1 convolutions, slices of split convolutions.
    # Folded here in fp32, they are plain initializers for the fp16 conversion and TensorRT.
    onnxscript.optimizer.optimize(program.model, input_size_limit=FOLD_LIMIT, output_size_limit=FOLD_LIMIT)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=False)
    return path


@dataclass
class ValidationResult:
    """Largest error of an ONNX Runtime run against PyTorch, relative to the output scale."""

    graph: str
    sizes: dict[str, int]
    max_abs_err: float
    max_rel_err: float


def run_torch(module: torch.nn.Module, spec: GraphSpec, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of a wrapper module as numpy, named per the spec."""
    with torch.no_grad():
        outs = module(*(torch.from_numpy(feeds[n]) for n in spec.input_names))
    outs = outs if isinstance(outs, tuple) else (outs,)
    return {n: o.numpy() for n, o in zip(spec.output_names, outs)}


def validate_graph(
    module: torch.nn.Module, spec: GraphSpec, path: Path, sizes: dict[str, int], *, rtol: float = 1e-4
) -> ValidationResult:
    """Run the ONNX file in ONNX Runtime (CPU) and compare every output with PyTorch.

    The error is max|ort - torch| / max(1, max|torch|) per output; it must stay below ``rtol``.
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), ort.SessionOptions(), providers=["CPUExecutionProvider"])
    feeds = example_inputs(spec, sizes, seed=1)
    got = dict(zip(spec.output_names, sess.run(spec.output_names, feeds)))
    want = run_torch(module, spec, feeds)
    worst_abs = worst_rel = 0.0
    for name in spec.output_names:
        if got[name].shape != want[name].shape:
            raise ExportError(
                f"{spec.name}: output {name!r} has shape {got[name].shape} in ONNX Runtime, {want[name].shape} in PyTorch"
            )
        err = float(np.abs(got[name] - want[name]).max()) if got[name].size else 0.0
        scale = max(1.0, float(np.abs(want[name]).max())) if want[name].size else 1.0
        worst_abs, worst_rel = max(worst_abs, err), max(worst_rel, err / scale)
    if not worst_rel <= rtol:
        raise ExportError(
            f"{spec.name}: ONNX Runtime differs from PyTorch at {sizes}: relative error {worst_rel:.2e} > {rtol:.0e}"
        )
    return ValidationResult(spec.name, dict(sizes), worst_abs, worst_rel)


def validation_sizes(graph: str, dims: ModelDims, limits: ExportLimits) -> list[dict[str, int]]:
    """Axis sizes each graph is validated at: small, and the export maximum where cheap."""
    if graph == IMAGE_ENCODER:
        return [{"B": 1, "H": dims.image_size, "W": dims.image_size}]
    if graph == TEXT_ENCODER:
        return [{"Q": 5, "L": 9}, {"Q": 1, "L": 77}]
    if graph in CER_GRAPHS:
        return [{"B": 1, "T": 2}, {"B": 1, "T": min(limits.max_classes, 200)}]
    if graph == LABELS:
        return [{"N": 1, "R": 1, "X": 1}, {"N": limits.class_chunk, "R": min(limits.label_rows, 16), "X": 97}]
    return [{"B": 1, "N": 1}, {"B": 1, "N": limits.class_chunk}]


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import open_clip

    try:
        from importlib.metadata import version

        ours = version("sed-trt")
    except Exception:
        ours = "unknown"
    return {
        "sed_trt": ours,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "open_clip": open_clip.__version__,
    }


def _recognised_manifest(directory: Path) -> dict | None:
    """The manifest of an engine directory that sed-trt export made (format and fields), else None."""
    try:
        d = read_json(directory / MANIFEST_NAME, max_bytes=MAX_MANIFEST_BYTES)
    except ConfigError:
        return None
    if not isinstance(d, dict) or not isinstance(d.get("format"), int) or not isinstance(d.get("graphs"), dict):
        return None
    if not all(isinstance(d.get(k), (dict, str)) for k in ("backbone", "dims", "limits", "text_fingerprint")):
        return None
    return d


def _own_names(manifest: dict) -> set[str]:
    """Top-level names an export writes into an engine directory (the rest is the user's)."""
    files = [
        *manifest.get("graphs", {}).values(),
        *manifest.get("fp16_graphs", {}).values(),
        *manifest.get("int8_graphs", {}).values(),
        *manifest.get("fp8_graphs", {}).values(),
    ]
    files += [e.get("file", "") for e in manifest.get("engines", {}).values() if isinstance(e, dict)]
    files += [manifest.get("tokenizer_file", BPE_FILENAME), MANIFEST_NAME]
    return {Path(f).parts[0] for f in files if isinstance(f, str) and f}


def foreign_entries(directory: Path) -> list[str]:
    """Names in an engine directory that no export wrote (notes, a user's files): kept by a re-export."""
    manifest = _recognised_manifest(directory) or {}
    own = _own_names(manifest)
    return sorted(p.name for p in directory.iterdir() if p.name not in own and not fnmatch(p.name, TIMING_CACHE_GLOB))


def check_export_target(out: Path) -> None:
    """Refuse, before any work, a target that is unwritable or a directory of something else.

    Only a directory an export made (its manifest recognised) is replaced; the files a user
    keeps there survive (they move into the new directory). Anything else is never touched.
    """
    check_writable_dir(out, "--out-dir")
    if out.is_dir() and any(out.iterdir()) and _recognised_manifest(out) is None:
        shown = ", ".join(sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())[:5])
        raise EngineError(
            f"refusing to replace {str(out)!r}: it is not an engine directory made by 'sed-trt export' "
            f"(it holds {shown}); choose an empty or new --out-dir"
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_staging(out: Path) -> None:
    """Clear what killed exports into ``out`` left behind (their process no longer exists): a
    half-written export is deleted; an old directory hidden for a swap gives its user files
    back to ``out`` (or becomes ``out`` again when the swap never finished)."""
    for sibling in sorted(out.parent.glob(f".{out.name}.*-*-*")):
        parts = sibling.name[len(out.name) + 2 :].split("-")
        if len(parts) < 3 or parts[0] not in ("export", "old") or not parts[1].isdigit() or _pid_alive(int(parts[1])):
            continue
        if parts[0] == "old":
            if not out.exists():
                os.rename(sibling, out)
                continue
            _move_entries(sibling, out, foreign_entries(sibling))
        shutil.rmtree(sibling, ignore_errors=True)


def _move_entries(src: Path, dst: Path, names: list[str]) -> None:
    for name in names:
        if not (dst / name).exists():
            os.rename(src / name, dst / name)


def _swap_in(staging: Path, out: Path) -> None:
    """Replace ``out`` by the finished ``staging`` directory; the user's files in ``out`` move over.

    Two renames in one directory: a crash between them leaves no ``out`` at all (and the old
    one hidden beside it, which the next export restores), never a mix of old and new files
    under one manifest. The user's files move only after, and a crash then leaves them in the
    hidden directory, from which the next export moves them.
    """
    old = None
    keep = foreign_entries(out) if out.exists() else []
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-{os.getpid()}-"))
        os.rmdir(old)
        os.rename(out, old)
    try:
        os.rename(staging, out)
    except OSError:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        _move_entries(old, out, keep)
        shutil.rmtree(old, ignore_errors=True)


def run_export(
    model: SED,
    out_dir: str | Path,
    *,
    backbone: str,
    weights: str | Path | None,
    limits: ExportLimits | None = None,
    pooling: int = 1,
    opset: int = DEFAULT_OPSET,
    validate: bool = True,
    fp16: bool = False,
    quant: QuantRequest | None = None,
    progress: bool = True,
) -> Manifest:
    """Export every graph of ``model`` into ``out_dir``, check and validate each, write the manifest.

    ``fp16`` also writes mixed-precision graphs (:mod:`export.fp16`) for fp16 TensorRT engines;
    ``quant`` int8 and/or fp8 Q/DQ graphs calibrated on a folder of photos (:mod:`export.qdq`).
    """
    limits = limits or ExportLimits()
    model.io_dims().check_pooling(pooling)
    # A link to an engine directory (current -> v2) exports into its target and stays a link.
    final = real_path(out_dir, "--out-dir", ExportError)
    check_export_target(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(final)
    # Everything is written into a fresh sibling and swapped in only when complete and validated.
    out = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.export-{os.getpid()}-"))
    try:
        manifest = _export_into(
            model,
            out,
            shown=final,
            backbone=backbone,
            weights=weights,
            limits=limits,
            pooling=pooling,
            opset=opset,
            validate=validate,
            fp16=fp16,
            quant=quant,
            progress=progress,
        )
        for cache in final.glob(TIMING_CACHE_GLOB) if final.is_dir() else ():  # independent of the graphs: kept
            shutil.copyfile(cache, out / cache.name)
        os.chmod(out, 0o777 & ~current_umask())
        _swap_in(out, final)
    except OSError as exc:  # a full disk, no permission: nothing half-written is left
        shutil.rmtree(out, ignore_errors=True)
        where = exc.filename if getattr(exc, "filename", None) else final
        raise ExportError(f"cannot write the export into {str(final)!r} ({where}): {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    step(f"wrote {final / MANIFEST_NAME} and {len(manifest.graphs)} graphs in {final}", enabled=progress)
    return manifest


def _export_into(
    model: SED,
    out: Path,
    *,
    shown: Path,
    backbone: str,
    weights: str | Path | None,
    limits: ExportLimits,
    pooling: int,
    opset: int,
    validate: bool,
    fp16: bool,
    quant: QuantRequest | None,
    progress: bool,
) -> Manifest:
    dims = model.io_dims()
    specs = graph_specs(dims, pooling)
    model = model.eval()
    files: dict[str, str] = {}
    graphs = GRAPH_NAMES
    for i, name in enumerate(graphs, 1):
        spec = specs[name]
        module = wrapper_for(model, name, pooling).eval()
        path = out / f"{name}.onnx"
        step(f"[{i}/{len(graphs)}] exporting {name} -> {shown / path.name}", enabled=progress)
        export_graph(module, spec, path, limits=limits, opset=opset)
        problems = check_trt_compatible(path)
        if problems:
            raise ExportError(f"{name}: {len(problems)} TensorRT-parser problems: " + "; ".join(map(str, problems[:5])))
        if validate:
            for sizes in validation_sizes(name, dims, limits):
                res = validate_graph(module, spec, path, sizes)
                step(
                    f"      {name} ok in ONNX Runtime at {sizes}: max abs err {res.max_abs_err:.2e}, rel {res.max_rel_err:.2e}",
                    enabled=progress,
                )
        files[name] = path.name
    fp16_files: dict[str, str] = {}
    if fp16:
        from sed_trt.export.fp16 import FP16_GRAPHS_SKIP, convert_graph

        for name in (g for g in graphs if g not in FP16_GRAPHS_SKIP):
            step(f"      {name}: mixed-precision (fp16) graph -> {shown / f'{name}.fp16.onnx'}", enabled=progress)
            convert_graph(out / files[name], out / f"{name}.fp16.onnx")
            fp16_files[name] = f"{name}.fp16.onnx"
    tokenizer_file = BPE_FILENAME
    shutil.copyfile(default_bpe_path(), out / tokenizer_file)
    manifest = Manifest(
        backbone=backbone,
        model_config={
            "embed_dim": model.cfg.clip.embed_dim,
            "vision_cfg": model.cfg.clip.vision_cfg,
            "text_cfg": model.cfg.clip.text_cfg,
        },
        dims=dims,
        limits=limits,
        pooling=pooling,
        opset=opset,
        checkpoint_sha256=file_sha256(weights) if weights is not None else None,
        text_fingerprint=text_tower_fingerprint(model),
        graphs=files,
        graph_sha256={n: file_sha256(out / f) for n, f in files.items()},
        fp16_graphs=fp16_files,
        fp16_sha256={n: file_sha256(out / f) for n, f in fp16_files.items()},
        tokenizer_file=tokenizer_file,
        tokenizer_sha256=file_sha256(out / tokenizer_file),
        versions=_versions(),
    )
    manifest.save(out)
    if quant is not None:
        from sed_trt.export.qdq import write_qdq_graphs

        for fmt, (qdq_files, record) in write_qdq_graphs(out, quant, shown=shown, progress=progress).items():
            for rel in qdq_files.values():
                problems = check_trt_compatible(out / rel)
                if problems:
                    raise ExportError(
                        f"{rel}: {len(problems)} TensorRT-parser problems: " + "; ".join(map(str, problems[:5]))
                    )
            setattr(manifest, f"{fmt}_graphs", qdq_files)
            setattr(manifest, f"{fmt}_sha256", {n: file_sha256(out / f) for n, f in qdq_files.items()})
            setattr(manifest, f"{fmt}_calibration", record.to_dict())
        manifest.save(out)
    return manifest
