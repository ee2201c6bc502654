"""One short `sed-trt train` -> `sed-trt export` chain on synthetic COCO-Stuff, shared by the
training tests and (exported with class-attention pooling 2) the front-door tests, so the suite
pays for one training export instead of a training export and a separate pooling-2 export."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sed_trt.runtime.datasets import BUILTIN_DATASETS
from tests.synthetic import write_split

# The synthetic sets use COCO-Stuff ids 0..3 only; training on all 171 names costs ~1.7 s a
# step on 2 CPU cores, so the runs name just those four classes (a user's --classes).
FOUR = "person,bicycle,car,motorcycle"
MODEL_ARGS = ("--backbone", "sed_tiny_linear", "--image-size", "64")


def synthetic_coco(root: Path, n_train: int, n_val: int) -> None:
    """COCO-Stuff's train and val layout under ``root`` with generated 64x80 photos."""
    for name, n, seed in (("coco_stuff_train", n_train, 10), ("coco_stuff_val", n_val, 20)):
        spec = BUILTIN_DATASETS[name]
        write_split(root, spec.image_dir, spec.label_dir, n, seed=seed, size=(64, 80))


@dataclass(frozen=True)
class TrainedRun:
    """What the chain wrote: the data, the run directory, its final checkpoint and the export."""

    data: Path
    out: Path
    checkpoint: Path
    engines: Path
    iters: int
    pooling: int

    @property
    def common(self) -> list[str]:
        """Model, data and class arguments shared by `train` and `eval`."""
        return [*MODEL_ARGS, "--data-root", str(self.data), "--classes", FOUR]


def train_and_export(root: Path, *, iters: int, n_train: int, pooling: int = 1) -> TrainedRun:
    """`sed-trt train` (checkpoints and in-training evaluation at half and end), then `sed-trt
    export` of the final checkpoint with ``--pooling``; each command must exit 0."""
    from sed_trt.cli import main

    run = TrainedRun(root / "data", root / "run", root / "run" / "model_final.pth", root / "eng", iters, pooling)
    synthetic_coco(run.data, n_train, 12)
    half, period = iters // 2, iters // 10
    train = ["train", *run.common, "--out-dir", str(run.out), "--iters", str(iters), "--lr", "2e-3"]
    train += ["--batch-size", "4", "--workers", "0", "--log-period", str(period), "--checkpoint-period", str(half)]
    train += ["--device", "cpu", "--quiet", "--eval-dataset", "coco_stuff_val", "--eval-period", str(half)]
    assert main(train) == 0
    export = ["export", *MODEL_ARGS, "--weights", str(run.checkpoint), "--out-dir", str(run.engines)]
    export += ["--max-classes", "8", "--class-chunk", "3", "--pooling", str(pooling), "--engines", "skip"]
    export += ["--no-validate", "--quiet"]  # the tests compare torch and ONNX Runtime themselves
    assert main(export) == 0
    return run
