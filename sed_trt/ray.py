"""Bulk segmentation on Ray Data: a callable class that holds one loaded model per actor.

    import ray, sed_trt.ray
    ds = ray.data.read_images("s3://bucket/photos/")          # an "image" column
    ds = ds.map_batches(
        sed_trt.ray.Segment,
        fn_constructor_kwargs={"classes": "ade150", "engine_dir": "/models/convnext_b", "topk": 8},
        batch_size=16,
        concurrency=4,        # actors, each with its own model
        num_gpus=0,           # 1 per actor for tensorrt or torch on a GPU
    )
    ds.write_parquet("out/")                                   # image, labels, kept

The constructor takes ``classes`` and either ``deployment=`` (a
:class:`~sed_trt.runtime.deployment.Deployment`, its JSON or dict) or the keywords of
:meth:`sed_trt.Segmenter.from_engine_dir` (``engine_dir=``, ``backend=``, ``topk=``...) or of
:meth:`sed_trt.Segmenter.from_checkpoint` (``weights=``, ``backbone=``...). A batch's ``image``
column holds uint8 (H, W, 3) arrays (any sizes) or paths; ``labels`` (H, W) and ``kept`` (T,)
are added, each equal to ``sed-trt predict`` of that image. The ``[ray]`` extra installs Ray.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sed_trt.api import Segmenter
from sed_trt.runtime.deployment import Deployment
from sed_trt.runtime.errors import ConfigError


class Segment:
    """``ds.map_batches(Segment, fn_constructor_kwargs={...})``: the model loads once per actor."""

    def __init__(
        self,
        classes: str | Sequence[str],
        deployment: Deployment | str | dict[str, Any] | None = None,
        *,
        column: str = "image",
        **open_kwargs: Any,
    ) -> None:
        if deployment is not None:
            if open_kwargs:
                raise ConfigError(f"give deployment= or the opening keywords, not both ({sorted(open_kwargs)})")
            self.segmenter = Segmenter.from_deployment(deployment)
        elif "engine_dir" in open_kwargs:
            self.segmenter = Segmenter.from_engine_dir(**open_kwargs)
        elif "weights" in open_kwargs or "backbone" in open_kwargs:
            self.segmenter = Segmenter.from_checkpoint(open_kwargs.pop("weights", None), **open_kwargs)
        else:
            raise ConfigError("Segment needs deployment=, engine_dir= or weights=/backbone=")
        self.segmenter.set_vocabulary(classes if isinstance(classes, str) else list(classes))
        self.column = column

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.column not in batch:
            raise ConfigError(f"the batch has no {self.column!r} column (it has {sorted(batch)})")
        images = [_image(x) for x in batch[self.column]]
        results = list(self.segmenter.segment_many(images))
        labels = [r.labels for r in results]  # type: ignore[union-attr]
        out = dict(batch)
        if len({lab.shape for lab in labels}) == 1:
            out["labels"] = np.stack(labels)
        else:  # photos of different sizes: a ragged column
            ragged = np.empty(len(labels), dtype=object)
            ragged[:] = labels
            out["labels"] = ragged
        out["kept"] = np.stack([r.kept for r in results])  # type: ignore[union-attr]
        return out


def _image(x: Any) -> Any:
    """A column value: a path (str/bytes) or an (H, W, 3) array."""
    if isinstance(x, bytes):
        return x.decode("utf-8")
    return x
