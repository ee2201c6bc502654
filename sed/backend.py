"""PyTorch backend for the runtime: the graphs are the model's own stage methods."""

from __future__ import annotations

from pathlib import Path

import torch

from runtime.backends.base import Backend
from runtime.backends.torch_ops import TorchOps
from runtime.io_spec import DECODER_STAGES, IMAGE_ENCODER, TEXT_ENCODER
from sed.build import load_sed
from sed.checkpoint import text_tower_fingerprint
from sed.modeling.sed import SED


class TorchBackend(Backend):
    """Runs the PyTorch reference stage by stage (same I/O contract as the exported graphs)."""

    name = "torch"

    def __init__(self, model: SED | None = None, *, backbone: str | Path | None = None, weights: str | Path | None = None, device: str = "cpu", pooling: int = 1, engine_dir: str | Path | None = None, threads: int | None = None) -> None:
        super().__init__()
        self._model = model
        self.backbone = backbone
        self.weights = weights
        self.device = device
        self.pooling = pooling
        self.limits = None
        self.threads = threads
        self.ops = TorchOps(device)
        self._fingerprint: str | None = None
        if model is not None:
            self._set_dims(model)

    def _set_dims(self, model: SED) -> None:
        self.dims = model.io_dims()

    @property
    def model(self) -> SED:
        if self._model is None:
            raise RuntimeError("torch backend is not active: call activate() first")
        return self._model

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
                raise RuntimeError("torch backend needs a model or a backbone")
            self._model = load_sed(self.backbone, self.weights, device=self.device)
            self._set_dims(self._model)
        self._model.eval()
        self.active = True
        return self

    @torch.no_grad()
    def _run(self, graph: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        m = self.model
        if graph == IMAGE_ENCODER:
            enc = m.encode_image(feeds["image"])
            return {"clip_dense": enc.clip_dense, **{f"guidance{k}": g for k, g in enumerate(enc.guidance, 1)}}
        if graph == TEXT_ENCODER:
            return {"text_embeddings": m.encode_text(feeds["tokens"])}
        if graph == DECODER_STAGES[0]:
            out = m.decode_stage0(feeds["clip_dense"], feeds["text_features"])
        else:
            k = DECODER_STAGES.index(graph)
            out = m.decode_stage(k, feeds["features"], feeds["corr_guidance"], feeds["guidance"], self.pooling)
            if k == 3:
                return {"probs": out.aux_logits.sigmoid()}
        return {"next_features": out.features, "next_corr_guidance": out.corr_guidance, "aux_logits": out.aux_logits}
