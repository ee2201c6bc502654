"""The predictor: vocabulary -> cached text features -> encoder -> decoder stages with CER.

One orchestration for every backend. Between decoder stages it selects the classes in
the per-pixel top-k of the auxiliary logits (union over pixels and batch), gathers their
per-class tensors and feeds the next stage with the shrunk category axis; at the end it
scatters probabilities back to the full vocabulary (rejected classes exactly 0).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from runtime.backends.base import Backend
from runtime.errors import ConfigError, EngineError, VocabularyError
from runtime.image import labels_from_probs, preprocess
from runtime.io_spec import DECODER_STAGES, IMAGE_ENCODER, TEXT_ENCODER
from runtime.text_cache import TextFeatureCache, cached_text_features
from runtime.tokenizer import ClipTokenizer
from runtime.vocab import validate_vocabulary


@dataclass
class Prediction:
    """probs (T, h, w) float32 at decoder resolution; labels (H0, W0) int32; kept (T,) bool."""

    probs: np.ndarray
    labels: np.ndarray
    kept: np.ndarray
    survivors: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


class Predictor:
    """Segments images into the classes of the current vocabulary."""

    def __init__(self, backend: Backend, *, topk: int | None = None, cache: TextFeatureCache | None = None, progress: bool = False, text_batch_size: int = 256) -> None:
        if topk is not None and topk < 1:
            raise ConfigError(f"topk must be >= 1 (or omitted for no rejection), got {topk}")
        self.backend = backend
        self.topk = topk
        self.cache = cache
        self.progress = progress
        self.text_batch_size = text_batch_size
        self.classes: list[str] = []
        self._text: object = None
        self._tokenizer: ClipTokenizer | None = None

    @property
    def tokenizer(self) -> ClipTokenizer:
        if self._tokenizer is None:
            self._tokenizer = ClipTokenizer(self.backend.tokenizer_path)
        return self._tokenizer

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        """Text embeddings (Q, E) of trimmed tokens (Q, L), through the backend's text encoder."""
        ops = self.backend.ops
        out = self.backend.run(TEXT_ENCODER, {"tokens": ops.from_numpy(tokens)})
        return ops.to_numpy(out["text_embeddings"])

    def set_classes(self, classes: list[str]) -> None:
        """Set the vocabulary; text features come from the cache or the text encoder."""
        classes = validate_vocabulary(list(classes))
        limit = self.backend.max_classes
        if limit is not None and len(classes) > limit:
            raise EngineError(f"the vocabulary has {len(classes)} classes but the engines were exported for at most {limit}; re-export with --max-classes {len(classes)}")
        feats = cached_text_features(
            self.encode_text,
            self.tokenizer,
            classes,
            fingerprint=self.backend.text_fingerprint,
            cache=self.cache,
            num_templates=self.backend.dims.num_templates,
            embed_dim=self.backend.dims.embed_dim,
            batch_size=self.text_batch_size,
            progress=self.progress,
        )
        self.set_text_features(classes, feats)

    def set_text_features(self, classes: list[str], features: np.ndarray) -> None:
        """Use precomputed text features (T, P, E) for ``classes``."""
        if features.shape[0] != len(classes):
            raise VocabularyError(f"text features hold {features.shape[0]} classes, the vocabulary {len(classes)}")
        self.classes = list(classes)
        self.text_features = np.ascontiguousarray(features, dtype=np.float32)  # (T, P, E) on the host
        self._text = self.backend.ops.from_numpy(self.text_features)

    def predict(self, image: np.ndarray) -> Prediction:
        """Segment one RGB uint8 image (H, W, 3)."""
        if self._text is None:
            raise RuntimeError("no vocabulary: call set_classes() first")
        backend, ops = self.backend, self.backend.ops
        timings: dict[str, float] = {}
        tick = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal tick
            ops.synchronize()
            now = time.perf_counter()
            timings[name] = (now - tick) * 1e3
            tick = now

        x = ops.from_numpy(preprocess(image))
        lap("preprocess_ms")
        enc = backend.run(IMAGE_ENCODER, {"image": x})
        lap("image_encoder_ms")
        out = backend.run(DECODER_STAGES[0], {"clip_dense": enc["clip_dense"], "text_features": self._text})
        lap("decoder_stage0_ms")
        num_classes = len(self.classes)
        kept = np.arange(num_classes)
        survivors: list[int] = []
        for k in (1, 2, 3):
            # Run CER: keep the classes in some pixel's top-k, gather their per-class tensors
            sel = ops.select(out["aux_logits"], self.topk)
            feats, cg = out["next_features"], out["next_corr_guidance"]
            if len(sel) < len(kept):
                feats, cg, kept = ops.take(feats, sel, 1), ops.take(cg, sel, 1), kept[sel]
            survivors.append(len(kept))
            lap(f"cer{k}_ms")
            out = backend.run(DECODER_STAGES[k], {"features": feats, "corr_guidance": cg, "guidance": enc[f"guidance{k}"]})
            lap(f"decoder_stage{k}_ms")
        probs = ops.to_numpy(ops.scatter_classes(out["probs"], kept, num_classes))[0]
        lap("scatter_ms")
        labels = labels_from_probs(probs, image.shape[:2], classes=kept)
        lap("postprocess_ms")
        mask = np.zeros(num_classes, dtype=bool)
        mask[kept] = True
        timings["total_ms"] = sum(timings.values())
        return Prediction(probs=probs, labels=labels, kept=mask, survivors=survivors, timings=timings)
