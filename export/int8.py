"""int8 graphs: explicit Q/DQ beside the fp32 ones, calibrated on the user's photos.

TensorRT 10/11 takes int8 only as explicit QuantizeLinear/DequantizeLinear pairs in the ONNX
(implicit calibration is deprecated in 10 and removed in 11), and ONNX Runtime and OpenVINO run
the same files (OpenVINO turns each pair into a FakeQuantize and runs the product in int8). So one
set of Q/DQ graphs serves all three, written by ONNX Runtime's quantizer
(``onnxruntime.quantization.quantize_static``; the package is already a dependency):

- which graphs (:data:`INT8_GRAPHS`): the image encoder, chosen by measurement; the decoder's
  Q/DQ graphs flipped most labels and ran slower. The text encoder runs once per vocabulary, and
  CER and the labels are exact comparisons;
- what is int8: every Conv, MatMul and Gemm whose weight is a constant (ConvNeXt's pointwise
  linears, its stem and downsampling convolutions, the projections), per-channel symmetric int8
  weights and per-tensor symmetric int8 activations (TensorRT accepts only zero points of 0),
  fp32 biases;
- what stays fp32 (:func:`fp32_nodes`): the depthwise convolutions (measured on full-size
  ConvNeXt-B: in int8 they made the encoder slower in ONNX Runtime and the error larger), every
  product of two activations, the heads and the running class-attention sums where a graph has
  them, and everything that is not a Conv/MatMul/Gemm (LayerNorm, GELU, reductions).

Calibration feeds the encoder what the runtime feeds it: each photo through the runtime's own
pre-processing (:func:`runtime.image.preprocess`); ranges are min/max over all of it. The photos
are taken in sorted order and recorded in the manifest (names, and a sha256 over their bytes in
that order), so a calibration is reproducible.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sed_trt.runtime.errors import ExportError, ImageError, SedTrtError
from sed_trt.runtime.io_spec import IMAGE_ENCODER
from sed_trt.runtime.progress import step

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

# The image encoder only: measured on the parity model (384 px, ADE-150), Q/DQ decoder graphs left 3 %
# of the labels equal to fp32 (the encoder's: 83 %) and ran slower in ONNX Runtime (docs/benchmarks.md).
INT8_GRAPHS = (IMAGE_ENCODER,)
QUANT_OPS = ("Conv", "MatMul", "Gemm")  # int8 where the weight is a constant (fp32_nodes says the rest)
DEFAULT_CALIBRATION_LIMIT = 300  # photos taken (sorted order); a few hundred of the user's own are recommended


@dataclass(frozen=True)
class Int8Request:
    """``export --int8``: the folder of calibration photos and how many of them to take."""

    calibration: Path
    limit: int = DEFAULT_CALIBRATION_LIMIT

    def check(self) -> list[Path]:
        """The photos it will take (refuses an empty or missing folder now)."""
        return calibration_images(self.calibration, self.limit)


@dataclass(frozen=True)
class CalibrationRecord:
    """What the manifest records of a calibration, enough to reproduce it."""

    images: list[str]  # file names, in the order they ran
    images_sha256: str  # of the photos' bytes, in that order
    method: str = "minmax"
    quantized_ops: list[str] = field(default_factory=lambda: list(QUANT_OPS))
    fp32_nodes: dict[str, int] = field(default_factory=dict)  # graph -> how many candidate nodes stay fp32

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def calibration_images(directory: str | Path, limit: int = DEFAULT_CALIBRATION_LIMIT) -> list[Path]:
    """The photos of ``directory`` (its usual image extensions, not recursive), sorted by name, at most ``limit``."""
    from sed_trt.runtime.datasets import IMAGE_EXTS

    root = Path(directory)
    if not root.is_dir():
        raise ExportError(f"--calibration {str(root)!r} is not a directory of photos")
    if limit < 1:
        raise ExportError(f"--calibration-limit must be at least 1 (got {limit})")
    found = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not found:
        raise ExportError(
            f"--calibration {str(root)!r} holds no photos ({', '.join(IMAGE_EXTS)}); a few hundred of your own are recommended"
        )
    return found[:limit]


def fp32_nodes(model: onnx.ModelProto) -> list[str]:
    """The Conv/MatMul/Gemm nodes that stay fp32: depthwise convolutions, products of two
    activations, the running sums and their use up to the normalisation, and the heads (see the
    module docstring)."""
    from sed_trt.export.fp16 import attend_nodes, head_nodes

    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    # A weight may reach its product through a Cast/Transpose/Reshape of a constant.
    for node in model.graph.node:
        plumbing = node.op_type in ("Cast", "Transpose", "Reshape", "Identity", "Unsqueeze")
        if plumbing and all(i in constants for i in node.input if i):
            constants.update(node.output)
    keep = set(head_nodes(model)) | set(attend_nodes(model))
    for node in model.graph.node:
        if node.op_type in QUANT_OPS and not (len(node.input) > 1 and node.input[1] in constants):
            keep.add(node.name)
        elif node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute):
            keep.add(node.name)  # depthwise: measured both slower and less exact in int8 (docs/benchmarks.md)
    return sorted(n.name for n in model.graph.node if n.op_type in QUANT_OPS and n.name in keep)


class _Feeds:
    """An ONNX Runtime calibration data reader over the feeds recorded for one graph (from disk)."""

    def __init__(self, files: list[Path], names: list[str]) -> None:
        self._all = files
        self._files = iter(files)
        self._names = names

    def get_next(self) -> dict[str, np.ndarray] | None:
        path = next(self._files, None)
        if path is None:
            return None
        with np.load(path) as data:
            return {n: data[n] for n in self._names}

    def rewind(self) -> None:  # part of CalibrationDataReader's interface
        self._files = iter(self._all)


def record_feeds(
    image_size: int, images: list[Path], input_names: list[str], into: Path, *, progress: bool = True
) -> tuple[list[Path], list[Path]]:
    """Pre-process each photo as the runtime does (:func:`runtime.image.preprocess`) and save the image
    encoder's feeds under ``into``; returns the files and the photos that ran. A photo that cannot be
    read is one warning line and is skipped."""
    from sed_trt.runtime.image import load_image, preprocess
    from sed_trt.runtime.progress import Progress

    files: list[Path] = []
    ran: list[Path] = []
    with Progress(len(images), "int8 calibration photos", enabled=progress, unit="photo") as bar:
        for path in images:
            try:
                feeds = preprocess([load_image(path)], image_size)
            except (ImageError, OSError) as exc:  # one unreadable photo is one line; the others run
                log.warning("calibration: skipped %s: %s", path.name, exc)
            else:
                files.append(into / f"{len(files):06d}.npz")
                np.savez(files[-1], **{n: feeds[n] for n in input_names})
                ran.append(path)
            bar.update()
    if not ran:
        raise ExportError("no calibration photo could be read")
    return files, ran


def quantize_graph(src: Path, dst: Path, feeds: list[Path], input_names: list[str]) -> int:
    """Write the Q/DQ version of ``src`` calibrated on ``feeds``; returns how many candidate nodes stayed fp32."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    keep = fp32_nodes(onnx.load(str(src)))
    prepared = dst.with_suffix(".prep.onnx")
    # The quantizer's own preparation: shape inference only (its graph optimisation would write
    # ONNX Runtime's contrib ops, which TensorRT and OpenVINO do not read). Its symbolic shape
    # inference does not follow every decoder graph; ONNX's own then does.
    try:
        quant_pre_process(str(src), str(prepared), skip_optimization=True, auto_merge=True)
    except Exception:  # the symbolic shape inference raises assorted types
        try:
            quant_pre_process(str(src), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
        except Exception as exc:
            prepared.unlink(missing_ok=True)
            raise ExportError(f"cannot prepare {src.name} for int8: {str(exc).strip().splitlines()[0][:200]}") from None
    try:
        # MinMax keeps only each tensor's min and max per feed (ReduceMin/ReduceMax outputs): small.
        quantize_static(
            str(prepared),
            str(dst),
            _Feeds(feeds, input_names),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANT_OPS),
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=keep,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={
                "ActivationSymmetric": True,  # TensorRT: int8 zero points must be 0
                "WeightSymmetric": True,
                "QuantizeBias": False,  # biases stay fp32 (TensorRT fuses them in high precision)
            },
        )
    except SedTrtError:
        raise
    except Exception as exc:  # the quantizer raises assorted types
        raise ExportError(f"cannot quantize {src.name} to int8: {str(exc).strip().splitlines()[0][:200]}") from None
    finally:
        prepared.unlink(missing_ok=True)
    return len(keep)


def images_digest(images: list[Path]) -> str:
    h = hashlib.sha256()
    for path in images:
        h.update(path.name.encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def write_int8_graphs(
    out: Path,
    calibration: str | Path,
    *,
    limit: int = DEFAULT_CALIBRATION_LIMIT,
    shown: Path | None = None,
    progress: bool = True,
) -> tuple[dict[str, str], CalibrationRecord]:
    """Calibrate on the photos of ``calibration`` and write ``NAME.int8.onnx`` beside each graph of
    :data:`INT8_GRAPHS` in the export ``out`` (whose manifest and fp32 graphs exist)."""
    from sed_trt.runtime.manifest import Manifest

    images = calibration_images(calibration, limit)
    shown = shown or out
    manifest = Manifest.load(out)
    step(f"int8: calibrating on {len(images)} photos of {calibration}", enabled=progress)
    tmp = Path(tempfile.mkdtemp(prefix="sed-trt-calib-"))
    files: dict[str, str] = {}
    kept: dict[str, int] = {}
    try:
        for name in INT8_GRAPHS:
            names = manifest.specs[name].input_names
            feeds, ran = record_feeds(manifest.dims.image_size, images, names, tmp, progress=progress)
            rel = f"{name}.int8.onnx"
            step(f"      {name}: int8 graph calibrated on {len(feeds)} photos -> {shown / rel}", enabled=progress)
            kept[name] = quantize_graph(out / manifest.graphs[name], out / rel, feeds, names)
            files[name] = rel
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    record = CalibrationRecord(images=[p.name for p in ran], images_sha256=images_digest(ran), fp32_nodes=kept)
    return files, record
