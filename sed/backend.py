"""PyTorch backend for the runtime: the graphs are the model's own stage methods.

Importing this module imports neither torch nor the model (they load when a backend is
built), so the command line can list the backend and its options cheaply.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sed_trt.runtime.backends.base import ArrayOps, Backend
from sed_trt.runtime.backends.registry import CUDA_GRAPHS_OPTION, BackendSpec
from sed_trt.runtime.errors import BackendUnavailableError, ConfigError, StateError, install_hint
from sed_trt.runtime.io_spec import CER_GRAPHS, DECODER_GRAPHS, IMAGE_ENCODER, LABELS, TEXT_ENCODER

if TYPE_CHECKING:
    import torch

    from sed_trt.sed.modeling.sed import SED

SPEC = BackendSpec(
    name="torch",
    cls="TorchBackend",
    summary="the PyTorch reference (checkpoint) on the CPU or a GPU; bf16/fp16 with fp32 islands",
    loads="checkpoint",
    placement="device",
    precisions=("fp32", "bf16", "fp16"),
    options=(CUDA_GRAPHS_OPTION,),
    probe="probe",
)


def import_torch() -> Any:
    """torch, or one line saying how to install it (the base install has no torch)."""
    try:
        import torch
    except ImportError:
        raise BackendUnavailableError(f"the torch backend needs PyTorch: {install_hint('torch')}") from None
    return torch


def probe() -> str:
    """torch's version and the GPUs it sees."""
    torch = import_torch()

    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    return f"{torch.__version__}, CUDA {torch.version.cuda}, GPUs: {gpus or 'none visible'}"


class TorchOps(ArrayOps):
    """The predictor's array ops on torch tensors of one device (CPU or CUDA)."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)

    def from_numpy(self, a: np.ndarray) -> torch.Tensor:
        return self.torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def to_numpy(self, x: torch.Tensor) -> np.ndarray:
        return x.detach().cpu().numpy()

    def empty(self, shape: tuple[int, ...], dtype: str = "float32") -> torch.Tensor:
        return self.torch.empty(shape, dtype=getattr(self.torch, dtype), device=self.device)

    def zeros(self, shape: tuple[int, ...]) -> torch.Tensor:
        return self.torch.zeros(shape, dtype=self.torch.float32, device=self.device)

    def index(self, idx: np.ndarray) -> torch.Tensor:
        return self.from_numpy(np.asarray(idx, dtype=np.int64))  # one upload per stage

    def take(self, x: torch.Tensor, idx: Any, axis: int) -> torch.Tensor:
        return x.index_select(axis, idx).contiguous()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)


@contextlib.contextmanager
def fp32_math(allow_tf32: bool = False) -> Iterator[None]:
    """IEEE fp32 convolutions and matmuls on CUDA unless ``allow_tf32``; restores torch's flags after.

    torch lets cuDNN convolutions use TF32 by default. Measured on an H100 with the parity
    model: TF32 gives max |dprob| 6e-4 and only 80.7 % of labels equal to the official
    outputs (near-ties flip); IEEE fp32 gives 5e-7 and 99.97 %, as on the CPU.
    """
    import torch

    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class CudaGraphs:
    """Captured CUDA graphs of the torch backend's graphs, one per (graph, input shapes).

    A graph's first call at new shapes runs it once on a side stream (lazy initialisation and
    cuDNN's algorithm search stay out of the capture), then captures it with static inputs;
    later calls copy their inputs into those and replay. The shapes are exact, so a last,
    smaller chunk of classes gets a graph of its own instead of padding (which would add
    padded classes to the running class-attention sums): at most ``class_chunk`` shapes per
    decoder graph. Outputs are the static tensors, valid until the same graph runs again at
    the same shapes; the predictor copies chunk outputs out at once and uses the image
    encoder's before the next image. Every capture has its own memory pool: PyTorch allows
    sharing one only among graphs always replayed in capture order (CUDA semantics notes,
    "Sharing memory across captures"), and these replay in any order while outputs of one
    (the encoder's, the running sums) are read after others ran. Captures, side streams and
    replays run on the backend's own device, whatever the current device is.
    """

    def __init__(self, device: Any, max_graphs: int = 256) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[tuple, tuple[Any, dict[str, torch.Tensor], dict[str, torch.Tensor]]] = OrderedDict()
        self.captures = 0

    def run(self, graph: str, feeds: dict[str, torch.Tensor], fn: Callable[[dict], dict]) -> dict[str, torch.Tensor]:
        torch = self.torch
        key = (graph, *((n, tuple(x.shape)) for n, x in sorted(feeds.items())))
        entry = self._graphs.get(key)
        if entry is None:
            with torch.cuda.device(self.device):  # streams and capture on this device, not the current one
                static_in = {n: x.clone() for n, x in feeds.items()}
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    fn(static_in)
                torch.cuda.current_stream(self.device).wait_stream(side)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, capture_error_mode="thread_local"):  # a private pool (see the class)
                    static_out = fn(static_in)
            entry = self._graphs[key] = (g, static_in, static_out)
            self.captures += 1
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        g, static_in, static_out = entry
        with torch.cuda.device(self.device):
            for name, x in feeds.items():
                static_in[name].copy_(x)
            g.replay()
        return static_out


PRECISIONS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # ours -> torch's dtype
# Graphs that stay fp32 at every precision, as in the fp16 ONNX graphs (export.fp16): text
# features are cached per vocabulary; CER's decision and the label map compare fp32 values.
FP32_GRAPHS = (TEXT_ENCODER, *CER_GRAPHS, LABELS)
# What --cuda-graphs captures: the graphs run per image at fixed shapes (CER's and the labels
# graph's shapes follow the survivors and the photo; the text encoder runs per vocabulary).
CAPTURED_GRAPHS = (IMAGE_ENCODER, *DECODER_GRAPHS)
CANVAS_ENCODER = "image_encoder:canvas"  # the image encoder after its resize, as --cuda-graphs captures it


class TorchBackend(Backend):
    """Runs the PyTorch reference stage by stage (same I/O contract as the exported graphs).

    ``precision`` bf16 or fp16 runs the image encoder and the decoder graphs under
    ``torch.autocast`` with fp32 islands (:mod:`sed_trt.sed.modeling.precision`: norms, the cost
    map's normalisation, the running class-attention sums, the heads); every graph's
    inputs and outputs stay fp32. ``cuda_graphs`` replays captured CUDA graphs of the
    image encoder and decoder graphs (:class:`CudaGraphs`; opt-in until measured faster).
    """

    name = "torch"

    def __init__(
        self,
        model: SED | None = None,
        *,
        backbone: str | Path | None = None,
        weights: str | Path | None = None,
        device: str = "cpu",
        pooling: int = 1,
        threads: int | None = None,
        allow_tf32: bool = False,
        precision: str = "fp32",
        cuda_graphs: bool = False,
    ) -> None:
        torch = import_torch()

        from sed_trt.sed.build import resolve_device

        super().__init__()
        resolve_device(device)
        if cuda_graphs and torch.device(device).type != "cuda":
            raise ConfigError("--cuda-graphs needs --device cuda (the torch backend on a GPU)")
        self.cuda_graphs = cuda_graphs
        self._graphs: CudaGraphs | None = None
        if precision not in PRECISIONS:
            raise ConfigError(f"--precision {precision!r}: the torch backend runs {', '.join(PRECISIONS)}")
        self.precision = precision
        self._model = model
        self._model_given = model is not None
        self.backbone = backbone
        self.weights = weights
        self.device = device
        self.pooling = pooling
        self.limits = None
        self.threads = threads
        self.allow_tf32 = allow_tf32
        self.ops = TorchOps(device)
        self.device_resident = torch.device(device).type != "cpu"
        self._fingerprint: str | None = None
        self._hooks: list[Any] = []
        if model is not None:
            self._set_dims(model)

    def _set_dims(self, model: SED) -> None:
        self.dims = model.io_dims()
        self.dims.check_pooling(self.pooling)

    @property
    def model(self) -> SED:
        if self._model is None:
            raise StateError("torch backend is not active: call activate() first")
        return self._model

    @property
    def random_weights(self) -> bool:
        return self._model_given is False and self.weights is None

    @classmethod
    def from_request(cls, request: Any) -> TorchBackend:
        backbone = request.backbone
        if request.image_size is not None and request.model is None and backbone is not None:
            import dataclasses

            from sed_trt.sed.config import SEDConfig, load_config

            config = backbone if isinstance(backbone, SEDConfig) else load_config(backbone)
            backbone = dataclasses.replace(config, image_size=request.image_size)
        return cls(
            request.model,
            backbone=backbone,
            weights=request.weights,
            device=request.device,
            pooling=request.pooling or 1,
            threads=request.threads,
            precision=request.precision,
            cuda_graphs=bool(request.options.get("cuda_graphs", False)),
        )

    @property
    def label(self) -> str:
        return SPEC.label(self.precision)

    def placement(self) -> dict[str, Any]:
        import torch

        device = torch.device(self.device)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        return {"device": name, "threads": None if device.type == "cuda" else torch.get_num_threads()}

    @property
    def text_fingerprint(self) -> str:
        from sed_trt.sed.checkpoint import text_tower_fingerprint

        if self._fingerprint is None:
            self._fingerprint = text_tower_fingerprint(self.model)
        return self._fingerprint

    def activate(self) -> TorchBackend:
        import torch
        from torch import nn

        from sed_trt.sed.build import load_sed
        from sed_trt.sed.modeling.fam import ChannelsLastLayerNorm
        from sed_trt.sed.modeling.precision import fp32_norms

        if self.threads:
            torch.set_num_threads(self.threads)
        if self._model is None:
            if self.backbone is None:
                raise ConfigError("the torch backend needs a model or a backbone")
            self._model = load_sed(self.backbone, self.weights, device=self.device)
            self._set_dims(self._model)
        self._model.eval()
        if self.precision != "fp32" and not self._hooks:
            self._hooks = fp32_norms(self._model, (nn.LayerNorm, nn.GroupNorm, ChannelsLastLayerNorm))
        self.active = True
        if self.cuda_graphs and self._graphs is None:
            self._graphs = CudaGraphs(self.device)
            self.capture_encoder()  # out of the request path: the one encoder shape every photo size uses
        return self

    def deactivate(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self._graphs = None
        super().deactivate()

    def _autocast(self, graph: str) -> contextlib.AbstractContextManager:
        import torch

        if self.precision == "fp32" or graph in FP32_GRAPHS:
            return contextlib.nullcontext()
        # no cast cache: each graph run is its own autocast region (and captures must not keep one)
        dtype = getattr(torch, PRECISIONS[self.precision])
        return torch.autocast(torch.device(self.device).type, dtype=dtype, cache_enabled=False)

    def _run(self, graph: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        import torch

        with torch.no_grad(), fp32_math(self.allow_tf32), self._autocast(graph):
            if self._graphs is not None and graph == IMAGE_ENCODER:
                # The resize runs eagerly; the encoder is captured per canvas (batch size), not per photo size.
                image, *positions = (feeds[n] for n in self.specs[graph].input_names)
                canvas = self.model.to_canvas(image, positions)
                return self._graphs.run(CANVAS_ENCODER, {"canvas": canvas}, self._run_canvas)
            if self._graphs is not None and graph in CAPTURED_GRAPHS:
                return self._graphs.run(graph, feeds, lambda f: self._run_graph(graph, f))
            return self._run_graph(graph, feeds)

    def _run_canvas(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from sed_trt.sed.graphs import encode_canvas

        outs = encode_canvas(self.model, feeds["canvas"])
        return {n: o.float() for n, o in zip(self.specs[IMAGE_ENCODER].output_names, outs)}

    def capture_encoder(self, batch: int = 1) -> None:
        """Capture the image encoder's CUDA graph for ``batch`` photos now (activation does it for
        one), instead of in the first request."""
        import torch

        if self._graphs is None:
            return
        size = self.model.cfg.image_size
        canvas = torch.zeros((batch, 3, size, size), device=self.device)
        with torch.no_grad(), fp32_math(self.allow_tf32), self._autocast(IMAGE_ENCODER):
            self._graphs.run(CANVAS_ENCODER, {"canvas": canvas}, self._run_canvas)

    def _run_graph(self, graph: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from sed_trt.sed.graphs import graph_outputs

        spec = self.specs[graph]
        outs = graph_outputs(self.model, graph, [feeds[n] for n in spec.input_names], pooling=self.pooling)
        # The I/O contract is fp32 at every precision (a no-op in fp32).
        return {n: o.float() if o.is_floating_point() else o for n, o in zip(spec.output_names, outs)}
