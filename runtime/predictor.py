"""The predictor: vocabulary -> cached text features -> encoder -> decoder stages with CER.

One orchestration for every backend. The decoder graphs run on chunks of at most
``class_chunk`` classes, so no stage ever holds its high-resolution activations for the
whole vocabulary: stage 0 chunk by chunk; stages 1-3 in two passes, first the
``*_summaries`` graph on every chunk (FAM spatial fusion; each chunk adds its share to the
running class-attention sums), then the ``*_fuse`` graph on every chunk with those sums. Chunk
outputs are written into preallocated whole-vocabulary tensors.

Between decoder stages it selects the classes in the per-pixel top-k of the auxiliary
logits (union over pixels and batch; runtime.cer), uploads their indices once and gathers,
chunk by chunk, only their per-class tensors. At the end the survivors' probabilities
become the label map: on the host with runtime.postprocess, or, for a device-resident
backend, with the ``cerK`` and ``labels`` graphs where the arrays are, so only the class
ids and the label map cross to the host. The full-vocabulary probabilities (rejected
classes exactly 0) are copied only when a caller reads ``Prediction.probs``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sed_trt.runtime.backends.base import Array, Backend
from sed_trt.runtime.cer import check_topk, keeps_all, topk_union
from sed_trt.runtime.errors import ConfigError, InputError, StateError, VocabularyError
from sed_trt.runtime.image import preprocess, source_positions
from sed_trt.runtime.io_spec import (
    CER_GRAPHS,
    CLASS_AXIS,
    DECODER_STAGE0,
    FUSE_GRAPHS,
    IMAGE_ENCODER,
    LABELS,
    RUNNING_SUMS,
    SUMMARY_GRAPHS,
    TEXT_ENCODER,
    StageOutput,
)
from sed_trt.runtime.postprocess import label_dtype, labels_from_probs
from sed_trt.runtime.progress import Progress
from sed_trt.runtime.resources import check_memory, vocabulary_bytes
from sed_trt.runtime.text_cache import TextFeatureCache, cached_text_features
from sed_trt.runtime.tokenizer import ClipTokenizer
from sed_trt.runtime.vocab import validate_vocabulary


@dataclass
class EncoderOutputs:
    """Image encoder outputs: clip_dense (B, E, s, s) and SFM's guidance terms of stages 1..3."""

    clip_dense: Array
    guidance_terms: tuple[Array, Array, Array]


@dataclass
class _Group:
    """Images of a batch decoded together: their batch positions, encoder and stage outputs
    (batch axis = ``members``), the vocabulary ids still decoded and the survivors per stage."""

    members: list[int]
    enc: EncoderOutputs
    out: StageOutput
    kept: np.ndarray
    survivors: list[int]

    def rows(self, rows: list[int], ops: Any) -> _Group:
        """The group of ``rows`` (positions in this group): a view where they are contiguous."""
        if rows == list(range(rows[0], rows[-1] + 1)):
            pick = lambda x: ops.narrow(x, 0, rows[0], rows[-1] + 1)  # noqa: E731
        else:
            idx = ops.index(np.asarray(rows, dtype=np.int64))
            pick = lambda x: ops.take(x, idx, 0)  # noqa: E731
        enc = EncoderOutputs(pick(self.enc.clip_dense), tuple(pick(t) for t in self.enc.guidance_terms))
        out = StageOutput(
            features=pick(self.out.features),
            corr_guidance=pick(self.out.corr_guidance),
            aux_logits=pick(self.out.aux_logits),
        )
        return _Group([self.members[r] for r in rows], enc, out, self.kept, list(self.survivors))


# Device memory one labels-graph run may use per intermediate (N, R, X) array, where the
# engines set no bound (the torch backend on a GPU).
LABEL_BLOCK_BYTES = 256 << 20
# Bands of label rows start at multiples of this many rows when there are several, so their
# views of the int64/float32 row tables stay 256-byte aligned (TensorRT binds no other address).
LABEL_ROW_ALIGN = 64


class Timer:
    """Wall time of named steps in ms. With ``synchronize`` each step waits for the device
    (queued work counts: per-part timings); without, only the total is recorded and no step
    adds a device synchronisation."""

    def __init__(self, synchronize: Callable[[], None] | None) -> None:
        self.synchronize = synchronize
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if self.synchronize is not None:
            self.synchronize()
            self.timings[name] = (time.perf_counter() - start) * 1e3


@dataclass
class Prediction:
    """labels (H0, W0) vocabulary ids in the smallest unsigned type that holds T; kept (T,) bool.

    ``probs`` (T, h, w) float32 at decoder resolution, rejected classes exactly 0, is fetched
    from the backend only when read: a caller that wants labels copies nothing else.
    """

    labels: np.ndarray
    kept: np.ndarray
    survivors: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    _fetch: Callable[[], np.ndarray] | None = field(default=None, repr=False)
    _probs: np.ndarray | None = field(default=None, repr=False)

    @property
    def probs(self) -> np.ndarray:
        """(T, h, w) float32 probabilities (the kept classes copied from the backend on first use)."""
        if self._probs is None:
            if self._fetch is None:
                raise StateError("this prediction holds no probabilities")
            self._probs, self._fetch = self._fetch(), None
        return self._probs


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
        class_chunk: int | None = None,
        profile: bool = False,
    ) -> None:
        """
        Args:
            backend: what runs the graphs (activated by the caller).
            topk: CER's k (None: no rejection).
            cache: text features by vocabulary (memory and disk).
            progress: show progress of text encoding and of long predictions.
            text_batch_size: prompts per text-encoder run.
            class_chunk: classes per decoder-graph run (default: the engines' largest).
            profile: time every part (each waits for the device); default: the total only.
        """
        check_topk(topk)
        limit = backend.class_chunk if backend.limits is not None else None
        if class_chunk is not None and (class_chunk < 1 or (limit is not None and class_chunk > limit)):
            raise ConfigError(
                f"--class-chunk must be between 1 and {limit if limit is not None else 'any'} (the engines' chunk), got {class_chunk}"
            )
        self.class_chunk = class_chunk or backend.class_chunk
        self.backend = backend
        self.topk = topk
        self.cache = cache
        self.progress = progress
        self.text_batch_size = text_batch_size
        self.profile = profile
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
        classes = list(classes)
        limit = self.backend.max_classes  # the size first: it costs nothing to check
        if limit is not None and len(classes) > limit:
            raise VocabularyError(
                f"the vocabulary has {len(classes)} classes but the engines were exported for at most {limit}; re-export with --max-classes {len(classes)}"
            )
        on_host = not self.backend.device_resident  # a device backend's decoder state is in device memory
        need = vocabulary_bytes(len(classes), self.backend.dims, self.backend.specs, decoder=on_host)
        check_memory(need, f"a vocabulary of {len(classes)} classes", error=VocabularyError)
        classes = validate_vocabulary(classes)
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

    def encode_image(self, feeds: dict[str, Array]) -> EncoderOutputs:
        """Image encoder on a pre-processed batch (runtime.image.preprocess's arrays, on the backend)."""
        out = self.backend.run(IMAGE_ENCODER, feeds)
        return EncoderOutputs(
            clip_dense=out["clip_dense"],
            guidance_terms=(out["guidance_term1"], out["guidance_term2"], out["guidance_term3"]),
        )

    def run_chunked(
        self,
        graph: str,
        per_class: dict[str, Array],
        shared: dict[str, Array],
        *,
        select: dict[str, Any] | None = None,
        into: dict[str, Array] | None = None,
    ) -> dict[str, Array]:
        """Run ``graph`` over all classes of ``per_class``, ``class_chunk`` at a time.

        Args:
            per_class: inputs with the class axis (N in the spec).
            shared: inputs without it (the same for every chunk).
            select: for some per-class inputs, the sorted indices of the classes to run
                (CER survivors, as :meth:`ArrayOps.index` gives them); the others hold
                exactly the classes to run.
            into: preallocated outputs to fill; an input may be passed as its own output
                (each chunk reads classes ``select[a:b] >= a`` before it writes ``[a, b)``).

        Returns:
            Outputs with the class axis for the classes run, in order; running sums
            (:data:`sed_trt.runtime.io_spec.RUNNING_SUMS`: zeros into the first chunk, each chunk's
            output into the next) as left by the last chunk.
        """
        spec = self.backend.specs[graph]
        axes = {t.name: t.shape.index(CLASS_AXIS) for t in (*spec.inputs, *spec.outputs) if CLASS_AXIS in t.shape}
        select = select or {}
        some = next(iter(per_class))
        total = len(select[some]) if some in select else per_class[some].shape[axes[some]]
        ops = self.backend.ops
        shared = dict(shared)
        batch = per_class[some].shape[0] if axes[some] > 0 else 1
        for t in spec.inputs:
            if t.name in RUNNING_SUMS and t.name not in shared:
                shared[t.name] = ops.zeros(t.concrete({"B": batch}))
        out: dict[str, Array] = dict(into or {})
        for a in range(0, total, self.class_chunk):
            b = min(a + self.class_chunk, total)
            feeds = dict(shared)
            for name, x in per_class.items():
                if name in select:
                    feeds[name] = ops.take(x, select[name][a:b], axes[name])
                else:
                    feeds[name] = ops.narrow(x, axes[name], a, b)
            res = self.backend.run(graph, feeds)
            for carried, produced in RUNNING_SUMS.items():
                if carried in shared:
                    shared[carried] = out[produced] = res[produced]
            for name in spec.output_names:
                if name not in axes:
                    continue
                y = res[name]
                ax = axes[name]
                if name not in out:
                    shape = list(y.shape)
                    shape[ax] = total
                    out[name] = ops.empty(tuple(shape))
                ops.write(out[name], ax, a, y)
        for name in spec.output_names:
            if name in axes and name in out:
                out[name] = ops.narrow(out[name], axes[name], 0, total)
        return out

    def decode_stage0(self, enc: EncoderOutputs) -> StageOutput:
        """Cost map + embedding for the whole vocabulary."""
        out = self.run_chunked(DECODER_STAGE0, {"text_features": self._text}, {"clip_dense": enc.clip_dense})
        return StageOutput.from_graph(out)

    def decode_stage(self, k: int, prev: StageOutput, enc: EncoderOutputs, select: Any = None) -> StageOutput:
        """Decoder stage k (1..3) on the classes ``select`` of ``prev`` (None: all); stage 3 gives probabilities."""
        spatial = self.run_chunked(
            SUMMARY_GRAPHS[k - 1],
            {"features": prev.features},
            {},
            select=None if select is None else {"features": select},
            into={"spatial_features": prev.features},  # in place: the features are not needed again
        )
        out = self.run_chunked(
            FUSE_GRAPHS[k - 1],
            {"spatial_features": spatial["spatial_features"], "corr_guidance": prev.corr_guidance},
            {"class_kv": spatial["class_kv"], f"guidance_term{k}": enc.guidance_terms[k - 1]},
            select=None if select is None else {"corr_guidance": select},
        )
        return StageOutput(probs=out["probs"]) if k == 3 else StageOutput.from_graph(out)

    def reject(self, k: int, aux_logits: Array, topk: int | None) -> np.ndarray | None:
        """CER (top-``topk``) before decoder stage k: the sorted indices of the classes kept, None for all."""
        t = int(aux_logits.shape[1])
        if keeps_all(topk, t):
            return None
        assert topk is not None
        ops = self.backend.ops
        if self.backend.device_resident:  # the rule as a graph; a (T,) mask crosses to the host
            rank = ops.from_numpy(np.array([topk - 1], dtype=np.int64))
            keep = ops.to_numpy(self.backend.run(CER_GRAPHS[k - 1], {"aux_logits": aux_logits, "rank": rank})["keep"])
            sel = np.flatnonzero(keep > 0)
        else:
            sel = topk_union(ops.to_numpy(aux_logits), topk)
        return None if len(sel) == t else sel

    def labels(self, probs: Array, kept: np.ndarray, out_hw: tuple[int, int], num_classes: int) -> np.ndarray:
        """The (H0, W0) label map (vocabulary ids ``kept``) of the survivors' probabilities (1, T', h, w)."""
        dtype = label_dtype(num_classes)
        if not self.backend.device_resident:
            return labels_from_probs(
                self.backend.ops.to_numpy(probs)[0], out_hw, kept, dtype=dtype, threads=self.backend.threads
            )
        return self._device_labels(probs, kept, out_hw, dtype)

    def _device_labels(self, probs: Array, kept: np.ndarray, out_hw: tuple[int, int], dtype: np.dtype) -> np.ndarray:
        """The labels graph over bands of rows, tiles of columns and chunks of classes; one
        download per tile. A chunk carries the best value and label into the next.

        Every run of one tile has one shape, so engines never switch shapes inside a photo and
        CUDA graphs replay: the last band is padded (its extra rows read a valid source row and
        are cropped), and the last class chunk overlaps the one before instead of being short
        (re-seen classes never beat the running maximum: it takes only a strictly larger value,
        so ties keep the lower class, as argmax does). The row and column tables go up once per
        tile; bands are views of them."""
        ops = self.backend.ops
        t, side = int(probs.shape[1]), int(probs.shape[-1])
        h0, w0 = out_hw
        limits = self.backend.limits
        chunk = min(t, self.class_chunk) if limits is not None else t
        starts = list(range(0, t - chunk, chunk)) + [t - chunk]  # the last chunk ends at t (overlapping)
        cols_max = limits.label_cols if limits is not None else w0
        iy, ly = source_positions(h0, side)
        ix, lx = source_positions(w0, side)
        ids = ops.from_numpy(np.asarray(kept, dtype=np.int32))
        out = np.empty((h0, w0), dtype=dtype)  # each tile's int32 labels cast as they are copied in
        for x0 in range(0, w0, cols_max):
            x1 = min(x0 + cols_max, w0)
            rows_max = max(1, LABEL_BLOCK_BYTES // (4 * chunk * (x1 - x0)))
            if limits is not None:
                rows_max = min(rows_max, limits.label_rows)
            if rows_max < h0 and rows_max >= LABEL_ROW_ALIGN:  # bands start at aligned table offsets
                rows_max -= rows_max % LABEL_ROW_ALIGN
            rows_max = min(rows_max, h0)
            padded = -(-h0 // rows_max) * rows_max
            pad = padded - h0  # the last band's extra rows read the last row's sources, then are dropped
            rows = ops.from_numpy(np.concatenate([iy, np.repeat(iy[-1:], pad, axis=0)]))
            row_weights = ops.from_numpy(np.concatenate([ly, np.repeat(ly[-1:], pad)]).astype(np.float32))
            cols = ops.from_numpy(ix[x0:x1])
            col_weights = ops.from_numpy(lx[x0:x1])
            start = ops.from_numpy(np.full((rows_max, x1 - x0), -1, dtype=np.float32))  # below every probability
            # The first chunk's labels where nothing beats -1 (a NaN probability): the first kept
            # class, never an uninitialised id.
            first = ops.from_numpy(np.full((rows_max, x1 - x0), int(kept[0]), dtype=np.int32))
            tile = ops.empty((h0, x1 - x0), "int32")
            for y0 in range(0, h0, rows_max):
                y1 = min(y0 + rows_max, h0)
                feeds = {
                    "rows": ops.narrow(rows, 0, y0, y0 + rows_max),
                    "row_weights": ops.narrow(row_weights, 0, y0, y0 + rows_max),
                    "cols": cols,
                    "col_weights": col_weights,
                    "best_in": start,
                    "labels_in": first,
                }
                for a in starts:
                    res = self.backend.run(
                        LABELS,
                        {
                            **feeds,
                            "probs": ops.narrow(probs, 1, a, a + chunk),
                            "class_ids": ops.narrow(ids, 0, a, a + chunk),
                        },
                    )
                    feeds["best_in"], feeds["labels_in"] = res["best"], res["labels"]
                ops.write(tile, 0, y0, ops.narrow(feeds["labels_in"], 0, 0, y1 - y0))
            out[:, x0:x1] = ops.to_numpy(tile)
        return out

    def predict(self, image: np.ndarray, *, topk: int | None = None) -> Prediction:
        """Segment one RGB uint8 image (H, W, 3); ``topk``: CER's k for this call (None: the predictor's)."""
        return self.predict_batch([image], topk=topk)[0]

    def predict_batch(
        self, images: Sequence[np.ndarray], *, topk: int | None = None, cer_union: bool = False
    ) -> list[Prediction]:
        """Segment a batch of RGB uint8 images (H_b, W_b, 3) of any sizes in one pass.

        The image encoder and decoder stage 0 run once for the batch (each photo resized to the
        canvas on its own). CER decides per image, so every result is the one the photo gets
        alone: images whose kept sets agree decode together, the others apart. ``cer_union``
        keeps instead a class that is in some pixel's top-k of some image (the official rule
        for B > 1, for evaluation): a photo may then keep classes it would have rejected alone.
        """
        if self._text is None:
            raise StateError("no vocabulary: call set_classes() first")
        check_topk(topk)
        topk = self.topk if topk is None else topk
        batch = len(images)
        limit = self.backend.limits.max_batch if self.backend.limits is not None else None
        if batch < 1 or (limit is not None and batch > limit):
            raise InputError(
                f"a batch of {batch} images; the engines take 1 to {limit} (export with --max-batch for more)"
            )
        ops = self.backend.ops
        timer = Timer(ops.synchronize if self.profile else None)
        start = time.perf_counter()
        num_classes = len(self.classes)
        if batch > 1 and not self.backend.device_resident:
            need = batch * vocabulary_bytes(num_classes, self.backend.dims, self.backend.specs)
            check_memory(need, f"a batch of {batch} images with {num_classes} classes", error=InputError)
        # Stages of a long prediction (10-40 s on a CPU at full size): a bar on a terminal.
        with Progress(6, "predict", enabled=self.progress, unit="stage") as bar:
            with timer("preprocess_ms"):
                feeds = {
                    k: ops.from_numpy(v) for k, v in preprocess(list(images), self.backend.dims.image_size).items()
                }
            with timer("image_encoder_ms"):
                enc = self.encode_image(feeds)
            bar.update(1, "image encoder")
            with timer("decoder_stage0_ms"):
                out = self.decode_stage0(enc)
            bar.update(1, "decoder stage 0")
            group = _Group(list(range(batch)), enc, out, np.arange(num_classes), [])
            done = self._decode_groups([group], topk, cer_union, timer, bar)
            with timer("postprocess_ms"):  # labels where the probabilities are; only they come back
                labels: dict[int, np.ndarray] = {}
                for g in done:
                    for i, b in enumerate(g.members):
                        im = images[b]
                        probs = ops.narrow(g.out.probs, 0, i, i + 1)
                        labels[b] = self.labels(probs, g.kept, (im.shape[0], im.shape[1]), num_classes)
            bar.update(1, "labels")
        timings = dict(timer.timings, total_ms=(time.perf_counter() - start) * 1e3)
        backend = self.backend

        def fetcher(probs: Array, kept: np.ndarray) -> Callable[[], np.ndarray]:
            def fetch() -> np.ndarray:
                if not backend.active:  # a device backend has freed the maps with its memory
                    raise StateError("read Prediction.probs before the backend is deactivated")
                return ops.scatter_classes(probs, kept, num_classes)[0]

            return fetch

        results: dict[int, Prediction] = {}
        for g in done:
            mask = np.zeros(num_classes, dtype=bool)
            mask[g.kept] = True
            for i, b in enumerate(g.members):
                probs = ops.narrow(g.out.probs, 0, i, i + 1)
                results[b] = Prediction(
                    labels=labels[b],
                    kept=mask,
                    survivors=list(g.survivors),
                    timings=timings,
                    _fetch=fetcher(probs, g.kept),
                )
        return [results[b] for b in range(batch)]

    def _decode_groups(
        self, groups: list[_Group], topk: int | None, cer_union: bool, timer: Timer, bar: Progress
    ) -> list[_Group]:
        """Decoder stages 1-3 with CER before each. A group is images decoded together; CER splits
        a group whose images keep different classes (per image), unless ``cer_union``."""
        ops = self.backend.ops
        for k in (1, 2, 3):
            nxt: list[_Group] = []
            for g in groups:
                with timer(f"cer{k}_ms"):  # keep the classes in some pixel's top-k; their indices uploaded once
                    n = len(g.members)
                    if n == 1 or cer_union or keeps_all(topk, len(g.kept)):
                        parts = [(list(range(n)), self.reject(k, g.out.aux_logits, topk))]
                    else:  # each image's own rule; images that agree stay together
                        by_sel: dict[tuple[int, ...] | None, list[int]] = {}
                        for i in range(n):
                            sel = self.reject(k, ops.narrow(g.out.aux_logits, 0, i, i + 1), topk)
                            by_sel.setdefault(None if sel is None else tuple(sel), []).append(i)
                        parts = [
                            (rows, None if key is None else np.array(key, dtype=np.int64))
                            for key, rows in by_sel.items()
                        ]
                for rows, sel in parts:
                    sub = g if len(rows) == n else g.rows(rows, ops)
                    kept = sub.kept if sel is None else sub.kept[sel]
                    index = None if sel is None else ops.index(sel)
                    with timer(f"decoder_stage{k}_ms"):
                        out = self.decode_stage(k, sub.out, sub.enc, index)
                    nxt.append(_Group(sub.members, sub.enc, out, kept, [*sub.survivors, len(kept)]))
            groups = nxt
            bar.update(1, f"decoder stage {k}")
        return groups
