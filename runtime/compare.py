"""How closely backends (and precisions) reproduce a reference on the same image and text features.

What a user needs before choosing a faster backend or a lower precision: the largest and mean
probability difference, the share of equal labels and whether CER kept the same classes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from sed_trt.runtime.backends.base import Backend
from sed_trt.runtime.predictor import Prediction, Predictor
from sed_trt.runtime.text_cache import TextFeatureCache


@dataclass(frozen=True)
class Agreement:
    """One backend against the reference (the reference itself is a row with zero differences)."""

    backend: str
    max_abs_dprob: float
    mean_abs_dprob: float
    label_agreement: float
    kept_identical: bool
    kept_differ: int
    ms: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _timed(predictor: Predictor, image: np.ndarray) -> tuple[Prediction, float]:
    predictor.predict(image)  # warm-up: first-call allocations and kernel selection
    start = time.perf_counter()
    pred = predictor.predict(image)
    return pred, (time.perf_counter() - start) * 1e3


def agreement(name: str, pred: Prediction, ref: Prediction, ms: float) -> Agreement:
    """Differences of ``pred`` from ``ref`` (probabilities at decoder resolution, labels at image size)."""
    diff = np.abs(pred.probs.astype(np.float64) - ref.probs)
    return Agreement(
        backend=name,
        max_abs_dprob=float(diff.max()),
        mean_abs_dprob=float(diff.mean()),
        label_agreement=float((pred.labels == ref.labels).mean()),
        kept_identical=bool((pred.kept == ref.kept).all()),
        kept_differ=int((pred.kept != ref.kept).sum()),
        ms=ms,
    )


def compare_backends(
    reference: Backend,
    others: list[Backend],
    image: np.ndarray,
    classes: list[str],
    *,
    topk: int | None = None,
    cache: TextFeatureCache | None = None,
) -> list[Agreement]:
    """Run ``reference`` then each of ``others`` on the reference's text features.

    The backends are given inactive and activated one at a time (and deactivated after), so
    memory is that of the largest one, not their sum.
    """
    with reference:
        ref_predictor = Predictor(reference, topk=topk, cache=cache)
        ref_predictor.set_classes(classes)
        ref, ref_ms = _timed(ref_predictor, image)
        ref.probs  # noqa: B018 (fetched while the backend holds them)
        features = ref_predictor.text_features
        assert features is not None  # set_classes set them
    rows = [agreement(reference.label, ref, ref, ref_ms)]
    for backend in others:
        with backend:
            predictor = Predictor(backend, topk=topk)
            predictor.set_text_features(classes, features)
            pred, ms = _timed(predictor, image)
            pred.probs  # noqa: B018 (fetched while the backend holds them)
        rows.append(agreement(backend.label, pred, ref, ms))
    return rows


def format_agreements(rows: list[Agreement], *, title: str) -> str:
    """A Markdown table of :func:`compare_backends`' rows."""
    lines = [
        title,
        "",
        "| backend | max abs dprob | mean abs dprob | labels equal | CER kept sets | ms |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows):
        kept = "reference" if i == 0 else ("identical" if r.kept_identical else f"{r.kept_differ} classes differ")
        lines.append(
            f"| {r.backend} | {r.max_abs_dprob:.2e} | {r.mean_abs_dprob:.2e} | {100 * r.label_agreement:.3f} % | {kept} | {r.ms:.0f} |"
        )
    return "\n".join(lines) + "\n"
