"""The predictor: vocabulary -> cached text features -> encoder -> decoder stages with CER.

One orchestration for every backend. Between decoder stages it selects the classes in
the per-pixel top-k of the auxiliary logits (union over pixels and batch), gathers their
per-class tensors and feeds the next stage with the shrunk category axis; at the end it
scatters probabilities back to the full vocabulary (rejected classes exactly 0).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from runtime.backends.base import Array, Backend
from runtime.cer import select_classes
from runtime.errors import ConfigError, StateError, VocabularyError
from runtime.image import labels_from_probs, preprocess
from runtime.io_spec import DECODER_STAGES, IMAGE_ENCODER, TEXT_ENCODER
from runtime.text_cache import TextFeatureCache, cached_text_features
from runtime.tokenizer import ClipTokenizer
from runtime.vocab import validate_vocabulary


@dataclass
class EncoderOutputs:
    """Image encoder outputs: clip_dense (B, E, s, s) and the guidance of stages 1..3."""

    clip_dense: Array
    guidance: tuple[Array, Array, Array]


@dataclass
class StageOutputs:
    """What leaves a decoder stage, per class (T'): features and cost-map guidance for the next
    stage and the CER auxiliary logits (B, T', h, w); after stage 3 only ``probs``."""

    features: Array = None
    corr_guidance: Array = None
    aux_logits: Array = None
    probs: Array = None

    @classmethod
    def from_graph(cls, out: dict[str, Array]) -> StageOutputs:
        """The outputs of decoder graph 0, 1 or 2 (named in runtime.io_spec)."""
        return cls(features=out["next_features"], corr_guidance=out["next_corr_guidance"], aux_logits=out["aux_logits"])


class Timer:
    """Wall time of named steps in ms, each ended by ``synchronize`` (queued device work counts)."""

    def __init__(self, synchronize: Callable[[], None]) -> None:
        self.synchronize = synchronize
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.synchronize()
        self.timings[name] = (time.perf_counter() - start) * 1e3


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

    def __init__(
        self,
        backend: Backend,
        *,
        topk: int | None = None,
        cache: TextFeatureCache | None = None,
        progress: bool = False,
        text_batch_size: int = 256,
    ) -> None:
        if topk is not None and topk < 1:
            raise ConfigError(f"topk must be >= 1 (or omitted for no rejection), got {topk}")
        self.backend = backend
        self.topk = topk
        self.cache = cache
        self.progress = progress
        self.text_batch_size = text_batch_size
        self.classes: list[str] = []
        self.text_features: np.ndarray | None = None  # (T, P, E) on the host
        self._text: Array = None  # the same, as the backend's array
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
            raise VocabularyError(
                f"the vocabulary has {len(classes)} classes but the engines were exported for at most {limit}; re-export with --max-classes {len(classes)}"
            )
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
        self.text_features = np.ascontiguousarray(features, dtype=np.float32)
        self._text = self.backend.ops.from_numpy(self.text_features)

    def encode_image(self, x: Array) -> EncoderOutputs:
        """Image encoder on a pre-processed (B, 3, H, W) batch."""
        out = self.backend.run(IMAGE_ENCODER, {"image": x})
        return EncoderOutputs(
            clip_dense=out["clip_dense"], guidance=(out["guidance1"], out["guidance2"], out["guidance3"])
        )

    def decode_stage0(self, enc: EncoderOutputs) -> StageOutputs:
        """Cost map + embedding for the whole vocabulary."""
        return StageOutputs.from_graph(
            self.backend.run(DECODER_STAGES[0], {"clip_dense": enc.clip_dense, "text_features": self._text})
        )

    def decode_stage(self, k: int, prev: StageOutputs, enc: EncoderOutputs) -> StageOutputs:
        """Decoder stage k (1..3) on the classes in ``prev``; stage 3 gives probabilities."""
        feeds = {"features": prev.features, "corr_guidance": prev.corr_guidance, "guidance": enc.guidance[k - 1]}
        out = self.backend.run(DECODER_STAGES[k], feeds)
        return StageOutputs(probs=out["probs"]) if k == 3 else StageOutputs.from_graph(out)

    def predict(self, image: np.ndarray) -> Prediction:
        """Segment one RGB uint8 image (H, W, 3)."""
        if self._text is None:
            raise StateError("no vocabulary: call set_classes() first")
        ops = self.backend.ops
        timer = Timer(ops.synchronize)
        num_classes = len(self.classes)
        kept = np.arange(num_classes)  # indices into the vocabulary of the classes still decoded
        survivors: list[int] = []
        with timer("preprocess_ms"):
            x = ops.from_numpy(preprocess(image))
        with timer("image_encoder_ms"):
            enc = self.encode_image(x)
        with timer("decoder_stage0_ms"):
            out = self.decode_stage0(enc)
        for k in (1, 2, 3):
            with timer(f"cer{k}_ms"):  # keep the classes in some pixel's top-k; gather their tensors
                sel = select_classes(ops, out.aux_logits, self.topk)
                if len(sel) < len(kept):
                    out = StageOutputs(
                        features=ops.take(out.features, sel, 1), corr_guidance=ops.take(out.corr_guidance, sel, 1)
                    )
                    kept = kept[sel]
                survivors.append(len(kept))
            with timer(f"decoder_stage{k}_ms"):
                out = self.decode_stage(k, out, enc)
        with timer("scatter_ms"):
            probs = ops.to_numpy(ops.scatter_classes(out.probs, kept, num_classes))[0]
        with timer("postprocess_ms"):
            labels = labels_from_probs(probs, image.shape[:2], classes=kept)
        mask = np.zeros(num_classes, dtype=bool)
        mask[kept] = True
        timings = dict(timer.timings, total_ms=sum(timer.timings.values()))
        return Prediction(probs=probs, labels=labels, kept=mask, survivors=survivors, timings=timings)
