"""mIoU evaluation of any runtime backend over a dataset.

The metric is detectron2's ``SemSegEvaluator`` (what the official numbers use): a
confusion matrix over labelled pixels; IoU and accuracy per class over the classes that
occur in the ground truth; mIoU, frequency-weighted IoU, mean and pixel accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sed_trt.runtime.datasets import IGNORE, SegDataset
from sed_trt.runtime.predictor import Predictor
from sed_trt.runtime.progress import Progress


class ConfusionMatrix:
    """Pixel counts ``conf[gt, pred]`` over labelled pixels."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one image: ``pred`` class ids (H, W), ``gt`` class ids with IGNORE (H, W)."""
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred.shape} and label {gt.shape} differ in size")
        valid = gt != IGNORE
        idx = gt[valid].astype(np.int64) * self.num_classes + pred[valid].astype(np.int64)
        self.matrix += np.bincount(idx, minlength=self.num_classes**2).reshape(self.num_classes, self.num_classes)


@dataclass
class SegMetrics:
    """Scores in percent; per-class arrays hold NaN for classes absent from the ground truth."""

    miou: float
    fwiou: float
    macc: float
    pacc: float
    iou: np.ndarray
    acc: np.ndarray
    pixels: np.ndarray = field(repr=False)

    def as_dict(self, classes: list[str] | None = None) -> dict[str, object]:
        d: dict[str, object] = {"mIoU": self.miou, "fwIoU": self.fwiou, "mACC": self.macc, "pACC": self.pacc}
        if classes is not None:
            d["per_class"] = {
                c: {"IoU": _none_if_nan(i), "ACC": _none_if_nan(a), "pixels": int(p)}
                for c, i, a, p in zip(classes, self.iou, self.acc, self.pixels)
            }
        return d


def _none_if_nan(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def compute_metrics(conf: ConfusionMatrix) -> SegMetrics:
    """detectron2 SemSegEvaluator.evaluate on a confusion matrix."""
    m = conf.matrix.astype(np.float64)
    tp = np.diag(m)
    pos_gt = m.sum(axis=1)
    pos_pred = m.sum(axis=0)
    acc = np.full(conf.num_classes, np.nan)
    iou = np.full(conf.num_classes, np.nan)
    valid = pos_gt > 0
    acc[valid] = tp[valid] / pos_gt[valid]
    union = pos_gt + pos_pred - tp
    iou_valid = valid & (union > 0)
    iou[iou_valid] = tp[iou_valid] / union[iou_valid]
    total = pos_gt.sum()
    if total == 0:
        raise ValueError("no labelled pixel was evaluated")
    weights = pos_gt / total
    return SegMetrics(
        miou=100 * float(np.sum(iou[iou_valid]) / np.sum(iou_valid)),
        fwiou=100 * float(np.sum(iou[iou_valid] * weights[iou_valid])),
        macc=100 * float(np.sum(acc[valid]) / np.sum(valid)),
        pacc=100 * float(tp.sum() / total),
        iou=100 * iou,
        acc=100 * acc,
        pixels=pos_gt.astype(np.int64),
    )


def evaluate(
    predictor: Predictor,
    dataset: SegDataset,
    *,
    limit: int | None = None,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
) -> tuple[SegMetrics | None, ConfusionMatrix]:
    """Predict every image of ``dataset`` with a :class:`sed_trt.runtime.predictor.Predictor` whose
    vocabulary is the dataset's classes, and score the label maps.

    ``shard=(rank, world)`` evaluates images rank, rank + world, ... only; the caller sums the
    confusion matrices (metrics are None when the shard holds no labelled pixel).
    """
    if list(predictor.classes) != list(dataset.classes):
        predictor.set_classes(dataset.classes)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    indices = range(shard[0], n, shard[1])
    conf = ConfusionMatrix(dataset.num_classes)
    bar = Progress(len(indices), f"eval {dataset.name}", enabled=progress)
    for i in indices:
        image, gt = dataset.load(i)
        pred = predictor.predict(image)
        conf.update(pred.labels, gt)
        valid = conf.matrix.sum()
        bar.update(extra=f"pACC so far {100 * np.trace(conf.matrix) / max(valid, 1):.1f}%")
    return (compute_metrics(conf) if conf.matrix.any() else None), conf


def format_table(metrics: SegMetrics, classes: list[str], *, title: str = "") -> str:
    """Per-class IoU/accuracy table (classes present in the ground truth) and the summary."""
    from sed_trt.runtime.vocab import display_name

    lines = [title] if title else []
    lines += ["| class | IoU | ACC | pixels |", "|---|---|---|---|"]
    for c, i, a, p in zip(classes, metrics.iou, metrics.acc, metrics.pixels):
        if p > 0:
            lines.append(f"| {display_name(c)} | {i:.2f} | {a:.2f} | {p} |")
    absent = int(np.sum(metrics.pixels == 0))
    lines += [
        "",
        f"mIoU {metrics.miou:.2f} | fwIoU {metrics.fwiou:.2f} | mACC {metrics.macc:.2f} | pACC {metrics.pacc:.2f}  ({len(classes) - absent} classes in the ground truth, {absent} absent)",
    ]
    return "\n".join(lines) + "\n"
