"""The one I/O contract of every exported graph, read by export and runtime alike.

Shapes are templates: an int is fixed, a string names a dynamic axis. The axes are
B (images), N (a chunk of categories: the decoder graphs run on at most ``class_chunk``
classes at a time, whatever the vocabulary size T), T (a whole vocabulary or its CER
survivors), Q (prompts), L (token columns), H, W (input image size) and R, X (a band of
rows and columns of the label map). Export generates dynamic-shape declarations from here; the
TensorRT builder generates optimisation profiles from here; the runtime validates feeds
against it.

The decoder runs chunk by chunk (see ``runtime.predictor``): an output with the N axis is
one slice of the whole-vocabulary tensor. The class-attention sums are a running sum
(:data:`RUNNING_SUMS`): a ``*_summaries`` graph adds its chunk's share to ``class_kv_in``
(zeros for the first chunk, the previous chunk's ``class_kv`` after that), so the sums
over the whole vocabulary, which the matching ``*_fuse`` graph takes, are added on the
device by the graphs themselves (no array arithmetic in any runtime).

Two graphs serve device backends between and after the decoder graphs, so nothing but
class ids and the label map reaches the host: ``cerK`` (CER before decoder stage K: which
classes are in some pixel's top-k of the auxiliary logits) and ``labels`` (the bilinear
resize of the survivors' probabilities to the photo and the argmax over classes, one band
of rows and columns and one chunk of classes at a time, with a running maximum carried
from chunk to chunk like the class-attention sums).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any

from sed_trt.runtime.errors import ConfigError, InputError

IMAGE_ENCODER = "image_encoder"
TEXT_ENCODER = "text_encoder"
DECODER_STAGE0 = "decoder_stage0"  # cost map and its embedding (per class)
SUMMARY_GRAPHS = ("decoder_stage1_summaries", "decoder_stage2_summaries", "decoder_stage3_summaries")
FUSE_GRAPHS = ("decoder_stage1_fuse", "decoder_stage2_fuse", "decoder_stage3_fuse")
DECODER_GRAPHS = (DECODER_STAGE0, *(g for pair in zip(SUMMARY_GRAPHS, FUSE_GRAPHS) for g in pair))
CER_GRAPHS = ("cer1", "cer2", "cer3")  # the rejection point before decoder stage 1, 2, 3
LABELS = "labels"
GRAPH_NAMES = (IMAGE_ENCODER, TEXT_ENCODER, *DECODER_GRAPHS, *CER_GRAPHS, LABELS)
CLASS_AXIS = "N"
RUNNING_SUMS = {"class_kv_in": "class_kv"}  # summaries-graph input -> output it is carried into, chunk to chunk
RUNNING_ARGMAX = {"best_in": "best", "labels_in": "labels"}  # the same for the labels graph
ENCODER_STRIDE = 32  # the cost map is at 1/32 of the network input (ConvNeXt's last stage)
# The network input side (--image-size): 768 is the paper's. Past 2048 the activations of one
# image (and an export's tracing) outgrow a workstation's memory; below 64 the decoder's
# smallest map is under 2 pixels.
MIN_NETWORK_SIZE, MAX_NETWORK_SIZE = 64, 2048

Dim = int | str


@dataclass
class StageOutput:
    """What leaves a decoder stage, per class (axis T): ``features`` (B, T, C, H, W) and the cost-map
    guidance ``corr_guidance`` (B, T, Gc, 2H, 2W) for the next stage, the head's ``aux_logits``
    (B, T, H, W; the CER auxiliary head, or the final head after stage 3), and, from the runtime's
    last stage, ``probs`` (their sigmoid). Arrays of any kind: torch tensors in the model, a
    backend's arrays in the predictor."""

    features: Any = None
    corr_guidance: Any = None
    aux_logits: Any = None
    probs: Any = None

    @classmethod
    def from_graph(cls, out: Mapping[str, Any]) -> StageOutput:
        """The outputs of decoder graph 0, 1 or 2 (named in this module's specs)."""
        return cls(features=out["next_features"], corr_guidance=out["next_corr_guidance"], aux_logits=out["aux_logits"])


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape template of one graph input or output."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def dynamic_axes(self) -> dict[int, str]:
        """Axis index -> axis name, for the dynamic axes of this tensor."""
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def concrete(self, sizes: dict[str, int]) -> tuple[int, ...]:
        """The shape with every named axis replaced by its size from ``sizes``."""
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.shape)

    def check(self, shape: tuple[int, ...], dtype: str, sizes: dict[str, int]) -> None:
        """Validate an actual array against this spec; binds unseen axis names into ``sizes``."""
        expected = "(" + ", ".join(str(d) for d in self.shape) + ")"
        if dtype != self.dtype:
            raise InputError(f"input {self.name!r} | got dtype {dtype} | expected {self.dtype}")
        if len(shape) != len(self.shape):
            raise InputError(f"input {self.name!r} | got shape {tuple(shape)} | expected {expected}")
        for want, got in zip(self.shape, shape):
            if isinstance(want, str):
                if sizes.setdefault(want, int(got)) != int(got):
                    raise InputError(
                        f"input {self.name!r} | got shape {tuple(shape)} | expected {expected} with {want}={sizes[want]}"
                    )
            elif want != got:
                raise InputError(f"input {self.name!r} | got shape {tuple(shape)} | expected {expected}")


@dataclass(frozen=True)
class GraphSpec:
    """Inputs and outputs of one exported graph."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


@dataclass(frozen=True)
class ModelDims:
    """The sizes that fix every graph's static axes (from the model config; no defaults here:
    their one home is ``sed.config``)."""

    embed_dim: int
    num_templates: int
    hidden_dim: int
    decoder_dims: tuple[int, int, int]
    guidance_dims: tuple[int, int, int]
    corr_guidance_dims: tuple[int, int, int]
    num_heads: int
    feature_size: int
    image_size: int

    @classmethod
    def from_config(cls, cfg: Any) -> ModelDims:
        """Dims of a ``sed_trt.sed.config.SEDConfig`` (duck-typed: runtime does not import sed)."""
        dec = cfg.decoder
        return cls(
            embed_dim=cfg.clip.embed_dim,
            num_templates=dec.num_templates,
            hidden_dim=dec.hidden_dim,
            decoder_dims=tuple(dec.decoder_dims),
            guidance_dims=tuple(dec.guidance_proj_dims),
            corr_guidance_dims=tuple(dec.corr_guidance_dims),
            num_heads=dec.num_heads,
            feature_size=cfg.image_size // ENCODER_STRIDE,
            image_size=cfg.image_size,
        )

    @property
    def stage_channels(self) -> tuple[int, int, int, int]:
        """Per-class feature channels entering stage 1, 2, 3 and leaving stage 3."""
        return (self.hidden_dim, *self.decoder_dims)

    def stage_size(self, k: int) -> int:
        """Spatial size of the per-class features entering decoder stage k (1..3)."""
        return self.feature_size * 2 ** (k - 1)

    def check_pooling(self, pooling: int) -> int:
        """Class-attention pooling must fit the smallest decoder map (``feature_size``)."""
        if not isinstance(pooling, int) or not 1 <= pooling <= self.feature_size:
            raise ConfigError(
                f"--pooling must be between 1 and {self.feature_size} (the smallest decoder map), got {pooling}"
            )
        return pooling

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelDims:
        d = dict(d)
        for key in ("decoder_dims", "guidance_dims", "corr_guidance_dims"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


@dataclass(frozen=True)
class DynamicRange:
    """min / opt / max of one named axis (TensorRT optimisation profiles use these)."""

    min: int
    opt: int
    max: int


@dataclass(frozen=True)
class ExportLimits:
    """Ranges of the dynamic axes that exported graphs and engines promise to accept."""

    max_batch: int = 1
    max_classes: int = 1000  # the largest vocabulary the runtime accepts (no graph has a T axis)
    class_chunk: int = 16  # the largest chunk of classes a decoder graph runs on (axis N)
    max_prompts: int = 1024
    opt_prompts: int = 80
    min_image_side: int = 32
    opt_image_hw: tuple[int, int] = (640, 853)
    max_image_side: int = 2560
    label_rows: int = 256  # the largest band of label-map rows one labels-graph run computes (axis R)
    label_cols: int = 4096  # ... and of columns (axis X); wider photos run in tiles

    def range_of(self, axis: str) -> DynamicRange:
        """The min/opt/max of a named axis."""
        table = {
            "B": DynamicRange(1, 1, self.max_batch),
            "N": DynamicRange(1, self.class_chunk, self.class_chunk),
            "Q": DynamicRange(1, min(self.opt_prompts, self.max_prompts), self.max_prompts),
            "L": DynamicRange(2, 16, 77),
            "H": DynamicRange(self.min_image_side, self.opt_image_hw[0], self.max_image_side),
            "W": DynamicRange(self.min_image_side, self.opt_image_hw[1], self.max_image_side),
            "T": DynamicRange(1, min(150, self.max_classes), self.max_classes),
            "R": DynamicRange(1, self.label_rows, self.label_rows),
            "X": DynamicRange(1, min(self.opt_image_hw[1], self.label_cols), self.label_cols),
        }
        if min(self.class_chunk, self.max_classes, self.label_rows, self.label_cols) < 1:
            raise ConfigError(
                f"class_chunk, max_classes, label_rows and label_cols must be >= 1, got {self.class_chunk}, "
                f"{self.max_classes}, {self.label_rows} and {self.label_cols}"
            )
        if axis not in table:
            raise KeyError(f"unknown dynamic axis {axis!r}; known: {sorted(table)}")
        return table[axis]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ExportLimits:
        d = dict(d)
        if "opt_image_hw" in d:
            d["opt_image_hw"] = tuple(d["opt_image_hw"])
        return cls(**d)


@functools.lru_cache(maxsize=16)
def graph_specs(dims: ModelDims, pooling: int = 1) -> Mapping[str, GraphSpec]:
    """The I/O contract of every graph, for a model of the given sizes and class-attention pooling
    (computed once per model: every graph run reads it)."""
    f32, i32, i64 = "float32", "int32", "int64"
    s = dims.feature_size
    chans = dims.stage_channels
    corr = dims.corr_guidance_dims
    n = CLASS_AXIS
    specs = {
        IMAGE_ENCODER: GraphSpec(
            IMAGE_ENCODER,
            inputs=(
                # a padded batch of photos (after the shortest-edge resize) and, per photo, where each
                # canvas row and column reads it: the 768 resize of runtime.image.canvas_positions
                TensorSpec("image", f32, ("B", 3, "H", "W")),
                TensorSpec("canvas_rows", i64, ("B", 2, dims.image_size)),
                TensorSpec("canvas_row_weights", f32, ("B", dims.image_size)),
                TensorSpec("canvas_cols", i64, ("B", 2, dims.image_size)),
                TensorSpec("canvas_col_weights", f32, ("B", dims.image_size)),
            ),
            outputs=(
                TensorSpec("clip_dense", f32, ("B", dims.embed_dim, s, s)),
                # SFM's first-conv response to the encoder guidance of stage k (once per image)
                *(
                    TensorSpec(
                        f"guidance_term{k}", f32, ("B", chans[k], 2 * dims.stage_size(k), 2 * dims.stage_size(k))
                    )
                    for k in (1, 2, 3)
                ),
            ),
        ),
        TEXT_ENCODER: GraphSpec(
            TEXT_ENCODER,
            inputs=(TensorSpec("tokens", i64, ("Q", "L")),),
            outputs=(TensorSpec("text_embeddings", f32, ("Q", dims.embed_dim)),),
        ),
        DECODER_STAGE0: GraphSpec(
            DECODER_STAGE0,
            inputs=(
                TensorSpec("clip_dense", f32, ("B", dims.embed_dim, s, s)),
                TensorSpec("text_features", f32, (n, dims.num_templates, dims.embed_dim)),
            ),
            outputs=(
                TensorSpec("next_features", f32, ("B", n, chans[0], s, s)),
                TensorSpec("next_corr_guidance", f32, ("B", n, corr[0], 2 * s, 2 * s)),
                TensorSpec("aux_logits", f32, ("B", n, s, s)),
            ),
        ),
    }
    for k in (1, 2, 3):
        size = dims.stage_size(k)
        c = chans[k - 1]
        heads = dims.num_heads
        positions = (size // pooling) ** 2
        # per position and head: key-value sums (D, D) and key sums (D, 1) side by side
        kv_shape = ("B", positions, heads, c // heads, c // heads + 1)
        summaries = (TensorSpec("class_kv", f32, kv_shape),)
        specs[SUMMARY_GRAPHS[k - 1]] = GraphSpec(
            SUMMARY_GRAPHS[k - 1],
            inputs=(TensorSpec("features", f32, ("B", n, c, size, size)), TensorSpec("class_kv_in", f32, kv_shape)),
            outputs=(TensorSpec("spatial_features", f32, ("B", n, c, size, size)), *summaries),
        )
        outputs: tuple[TensorSpec, ...]
        if k < 3:
            outputs = (
                TensorSpec("next_features", f32, ("B", n, chans[k], 2 * size, 2 * size)),
                TensorSpec("next_corr_guidance", f32, ("B", n, corr[k], 4 * size, 4 * size)),
                TensorSpec("aux_logits", f32, ("B", n, 2 * size, 2 * size)),
            )
        else:
            outputs = (TensorSpec("probs", f32, ("B", n, 2 * size, 2 * size)),)
        specs[FUSE_GRAPHS[k - 1]] = GraphSpec(
            FUSE_GRAPHS[k - 1],
            inputs=(
                TensorSpec("spatial_features", f32, ("B", n, c, size, size)),
                *summaries,
                TensorSpec("corr_guidance", f32, ("B", n, corr[k - 1], 2 * size, 2 * size)),
                TensorSpec(f"guidance_term{k}", f32, ("B", chans[k], 2 * size, 2 * size)),
            ),
            outputs=outputs,
        )
        # CER before stage k: aux logits of the stage before (B, T, s_k, s_k) and k - 1 of top-k
        specs[CER_GRAPHS[k - 1]] = GraphSpec(
            CER_GRAPHS[k - 1],
            inputs=(TensorSpec("aux_logits", f32, ("B", "T", size, size)), TensorSpec("rank", i64, (1,))),
            outputs=(TensorSpec("keep", f32, ("T",)),),
        )
    side = 8 * s  # the decoder's output maps
    band = ("R", "X")
    specs[LABELS] = GraphSpec(
        LABELS,
        inputs=(
            TensorSpec("probs", f32, (1, n, side, side)),
            TensorSpec("class_ids", i32, (n,)),
            TensorSpec("rows", i64, ("R",)),
            TensorSpec("row_weights", f32, ("R",)),
            TensorSpec("cols", i64, ("X",)),
            TensorSpec("col_weights", f32, ("X",)),
            TensorSpec("best_in", f32, band),
            TensorSpec("labels_in", i32, band),
        ),
        outputs=(TensorSpec("best", f32, band), TensorSpec("labels", i32, band)),
    )
    return MappingProxyType(specs)
