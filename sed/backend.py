"""PyTorch backend for the runtime: the graphs are the model's own stage methods."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from runtime.backends.base import Backend
from runtime.backends.torch_ops import TorchOps
from runtime.errors import ConfigError, StateError
from sed.build import load_sed, resolve_device
from sed.checkpoint import text_tower_fingerprint
from sed.graphs import graph_outputs
from sed.modeling.sed import SED


@contextlib.contextmanager
def fp32_math(allow_tf32: bool = False) -> Iterator[None]:
    """IEEE fp32 convolutions and matmuls on CUDA unless ``allow_tf32``; restores torch's flags after.

    torch lets cuDNN convolutions use TF32 by default. Measured on an H100 with the parity
    model: TF32 gives max |dprob| 6e-4 and only 80.7 % of labels equal to the official
    outputs (near-ties flip); IEEE fp32 gives 5e-7 and 99.97 %, as on the CPU.
    """
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class TorchBackend(Backend):
    """Runs the PyTorch reference stage by stage (same I/O contract as the exported graphs)."""

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
    ) -> None:
        super().__init__()
        resolve_device(device)
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
        self._fingerprint: str | None = None
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

    @property
    def text_fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = text_tower_fingerprint(self.model)
        return self._fingerprint

    def activate(self) -> TorchBackend:
        if self.threads:
            torch.set_num_threads(self.threads)
        if self._model is None:
            if self.backbone is None:
                raise ConfigError("the torch backend needs a model or a backbone")
            self._model = load_sed(self.backbone, self.weights, device=self.device)
            self._set_dims(self._model)
        self._model.eval()
        self.active = True
        return self

    def _run(self, graph: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad(), fp32_math(self.allow_tf32):
            return self._run_graph(graph, feeds)

    def _run_graph(self, graph: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        spec = self.specs[graph]
        outs = graph_outputs(self.model, graph, [feeds[n] for n in spec.input_names], pooling=self.pooling)
        return dict(zip(spec.output_names, outs))
