"""Q/DQ graphs (int8, fp8) beside the fp32 ones, calibrated on the user's photos.

TensorRT 10/11 takes int8 and fp8 only as explicit QuantizeLinear/DequantizeLinear pairs in the
ONNX (implicit calibration is deprecated in 10 and removed in 11); ONNX Runtime and OpenVINO run
the same int8 files (OpenVINO turns each pair into a FakeQuantize and runs the product in int8).
The graphs are written by ONNX Runtime's quantizer (``onnxruntime.quantization.quantize_static``;
the package is already a dependency):

- which graphs (:data:`QDQ_GRAPHS`): the image encoder, chosen by measurement; the decoder's
  Q/DQ graphs flipped most labels and ran slower. The text encoder runs once per vocabulary, and
  CER and the labels are exact comparisons;
- what is quantized: every Conv, MatMul and Gemm whose weight is a constant (ConvNeXt's pointwise
  linears, its stem and downsampling convolutions, the projections), per-channel symmetric
  weights and per-tensor symmetric activations (TensorRT accepts only zero points of 0), fp32
  biases;
- what stays fp32 (:func:`fp32_nodes`): the depthwise convolutions (measured on full-size
  ConvNeXt-B: in int8 they made the encoder slower in ONNX Runtime and the error larger), every
  product of two activations, the heads and the running class-attention sums where a graph has
  them, and everything that is not a Conv/MatMul/Gemm (LayerNorm, GELU, reductions); in fp8 also
  the convolutions TensorRT has no fp8 kernel for (:func:`fp8_unsupported_convs`).

fp8 (E4M3, for TensorRT on Ada and Hopper GPUs, compute capability 8.9 and later): the same
calibration, each scale the tensor's absolute maximum over 448 (E4M3's largest finite value;
TensorRT quantizes as castToFp8(clip(x / scale, -448, 448))) and FLOAT8E4M3FN zero points of 0
(ONNX QuantizeLinear 19: the zero point's type is the output's). The weights stay fp32 behind a
Q/DQ pair; TensorRT quantizes them at build time. This is the form NVIDIA's ModelOpt writes for
fp8 ONNX (per-tensor activations, per-channel weights, max calibration).

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
QDQ_GRAPHS = (IMAGE_ENCODER,)
QDQ_FORMATS = ("int8", "fp8")  # export --int8 / --fp8
QUANT_OPS = ("Conv", "MatMul", "Gemm")  # quantized where the weight is a constant (fp32_nodes says the rest)
DEFAULT_CALIBRATION_LIMIT = 300  # photos taken (sorted order); a few hundred of the user's own are recommended
FP8_E4M3_MAX = 448.0  # E4M3's largest finite value: an fp8 scale is the calibrated absolute maximum over it
# ModelOpt's fp8 rule for convolutions (modelopt/onnx/quantization/graph_utils.py, find_nodes_from_convs_to_exclude):
# input or output channels of 16 or fewer, or a filter of more than 32 taps, stay in high precision.
FP8_MIN_CHANNELS = 16
FP8_MAX_FILTER = 32


@dataclass(frozen=True)
class QuantRequest:
    """``export --int8 / --fp8 --calibration DIR``: the photos, how many to take, and which Q/DQ graphs."""

    calibration: Path
    limit: int = DEFAULT_CALIBRATION_LIMIT
    formats: tuple[str, ...] = ("int8",)

    def check(self) -> list[Path]:
        """The photos it will take (refuses an empty or missing folder, or an unknown format, now)."""
        unknown = [f for f in self.formats if f not in QDQ_FORMATS]
        if not self.formats or unknown:
            raise ExportError(f"Q/DQ formats {list(self.formats)}: use one or more of {', '.join(QDQ_FORMATS)}")
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


def fp32_nodes(model: onnx.ModelProto, fmt: str = "int8") -> list[str]:
    """The Conv/MatMul/Gemm nodes that stay fp32: depthwise convolutions, products of two
    activations, the running sums and their use up to the normalisation, and the heads (see the
    module docstring); for ``fmt`` fp8 also :func:`fp8_unsupported_convs`."""
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
    if fmt == "fp8":
        keep.update(fp8_unsupported_convs(model))
    return sorted(n.name for n in model.graph.node if n.op_type in QUANT_OPS and n.name in keep)


def fp8_unsupported_convs(model: onnx.ModelProto) -> list[str]:
    """Convolutions with a constant weight that fp8 leaves in high precision: in or out channels of
    at most :data:`FP8_MIN_CHANNELS` (ConvNeXt's stem reads 3 channels) or a filter of more than
    :data:`FP8_MAX_FILTER` taps (ModelOpt's rule for TensorRT's fp8 convolution kernels)."""
    weights = {i.name: tuple(i.dims) for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        shape = weights.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if shape is None or len(shape) < 3:
            continue
        taps = int(np.prod(shape[2:]))
        if min(shape[0], shape[1]) <= FP8_MIN_CHANNELS or taps > FP8_MAX_FILTER:
            out.append(node.name)
    return out


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
    with Progress(len(images), "calibration photos", enabled=progress, unit="photo") as bar:
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


def quantize_graph(src: Path, dst: Path, feeds: list[Path], input_names: list[str], fmt: str = "int8") -> int:
    """Write the ``fmt`` (int8 or fp8) Q/DQ version of ``src`` calibrated on ``feeds``; returns how
    many candidate nodes stayed fp32."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    keep = fp32_nodes(onnx.load(str(src)), fmt)
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
            raise ExportError(
                f"cannot prepare {src.name} for {fmt}: {str(exc).strip().splitlines()[0][:200]}"
            ) from None
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
                # fp8: the weights stay fp32 behind a Q/DQ pair (an int8 initializer cannot become fp8)
                "AddQDQPairToWeight": fmt == "fp8",
            },
        )
        if fmt == "fp8":
            onnx.save(int8_to_fp8(onnx.load(str(dst))), str(dst))
    except SedTrtError:
        raise
    except Exception as exc:  # the quantizer raises assorted types
        raise ExportError(f"cannot quantize {src.name} to {fmt}: {str(exc).strip().splitlines()[0][:200]}") from None
    finally:
        prepared.unlink(missing_ok=True)
    return len(keep)


def int8_to_fp8(model: onnx.ModelProto) -> onnx.ModelProto:
    """The fp8 (E4M3) form of a symmetric, max-calibrated int8 Q/DQ graph whose weights are fp32
    behind Q/DQ pairs: each scale is the range's absolute maximum over 448 instead of over 127,
    each zero point a FLOAT8E4M3FN 0, and the quantized tensors' recorded types follow."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    done: set[str] = set()
    quantized: set[str] = set()
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale, zero = node.input[1], node.input[2]
        if scale not in inits or zero not in inits:
            raise ExportError(f"{node.name}: a Q/DQ scale or zero point that is not a constant")
        if scale not in done:  # int8 symmetric: scale = amax / 127 -> fp8: amax / 448
            s = numpy_helper.to_array(inits[scale])
            inits[scale].CopyFrom(numpy_helper.from_array((s * (127.0 / FP8_E4M3_MAX)).astype(s.dtype), scale))
            done.add(scale)
        if zero not in done:
            z = numpy_helper.to_array(inits[zero])
            if np.any(z != 0):
                raise ExportError(f"{node.name}: an asymmetric zero point; fp8 needs symmetric ranges")
            inits[zero].CopyFrom(
                helper.make_tensor(zero, TensorProto.FLOAT8E4M3FN, list(z.shape), bytes(z.size), raw=True)
            )
            done.add(zero)
        if node.op_type == "QuantizeLinear":
            quantized.add(node.output[0])
    for vi in model.graph.value_info:
        if vi.name in quantized:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT8E4M3FN
    onnx.checker.check_model(model)
    return model


def images_digest(images: list[Path]) -> str:
    h = hashlib.sha256()
    for path in images:
        h.update(path.name.encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def write_qdq_graphs(
    out: Path, request: QuantRequest, *, shown: Path | None = None, progress: bool = True
) -> dict[str, tuple[dict[str, str], CalibrationRecord]]:
    """Calibrate on the photos of ``request`` and write ``NAME.<format>.onnx`` beside each graph of
    :data:`QDQ_GRAPHS` in the export ``out`` (whose manifest and fp32 graphs exist), for each of its
    formats; returns format -> (graph name -> file, the calibration record)."""
    from sed_trt.runtime.manifest import Manifest

    images = request.check()
    shown = shown or out
    manifest = Manifest.load(out)
    formats = " and ".join(request.formats)
    step(f"{formats}: calibrating on {len(images)} photos of {request.calibration}", enabled=progress)
    tmp = Path(tempfile.mkdtemp(prefix="sed-trt-calib-"))
    files: dict[str, dict[str, str]] = {fmt: {} for fmt in request.formats}
    kept: dict[str, dict[str, int]] = {fmt: {} for fmt in request.formats}
    ran: list[Path] = []
    try:
        for name in QDQ_GRAPHS:
            names = manifest.specs[name].input_names
            feeds, ran = record_feeds(manifest.dims.image_size, images, names, tmp, progress=progress)
            for fmt in request.formats:
                rel = f"{name}.{fmt}.onnx"
                step(f"      {name}: {fmt} graph calibrated on {len(feeds)} photos -> {shown / rel}", enabled=progress)
                kept[fmt][name] = quantize_graph(out / manifest.graphs[name], out / rel, feeds, names, fmt)
                files[fmt][name] = rel
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    digest = images_digest(ran)
    return {
        fmt: (files[fmt], CalibrationRecord([p.name for p in ran], digest, fp32_nodes=kept[fmt]))
        for fmt in request.formats
    }
