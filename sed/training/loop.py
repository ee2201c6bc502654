"""The training loop: official recipe, resumable checkpoints, JSON-lines logs, DDP under torchrun.

Determinism: the sample at global position g (= iteration x batch + slot) is drawn from
a per-epoch permutation seeded by (seed, epoch) and augmented with a generator seeded by
(seed, g). A resumed run therefore sees exactly the batches the uninterrupted run would
have seen, whatever the worker count, and the optimiser and RNG states come back from the
checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from sed_trt.runtime.datasets import SegDataset
from sed_trt.runtime.errors import CheckpointError, ConfigError, TrainingError
from sed_trt.runtime.progress import Progress, step
from sed_trt.sed.modeling.sed import SED
from sed_trt.sed.training.augment import AugmentConfig, augment
from sed_trt.sed.training.solver import (
    SolverConfig,
    build_optimizer,
    clip_gradients,
    freeze_text_tower,
    sed_loss,
    set_lr,
)

LAST_CHECKPOINT = "last_checkpoint"  # detectron2's pointer-file name


@dataclass(frozen=True)
class TrainConfig:
    """One training run; ``batch_size`` is the total over all processes (official: 4)."""

    out_dir: str
    batch_size: int = 4
    pooling: int | None = None  # None: the model's train_pooling (2)
    seed: int = 0
    workers: int = 2
    checkpoint_period: int = 5000
    log_period: int = 20
    device: str = "cpu"
    eval_period: int = (
        0  # evaluate on the eval dataset every N iterations and at the end (0: only at the end, if given)
    )
    eval_limit: int | None = None  # first N images of the eval dataset
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


class TrainSamples(torch.utils.data.Dataset):
    """Index g (global sample position) -> augmented (image (3, C, C) float, label (C, C) int64)."""

    def __init__(self, dataset: SegDataset, cfg: TrainConfig) -> None:
        self.dataset = dataset
        self.cfg = cfg
        self._perm: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:  # positions are unbounded; the sampler decides
        return 2**62

    def index(self, g: int) -> int:
        """Dataset index at global position g: per-epoch permutation seeded by (seed, epoch)."""
        n = len(self.dataset)
        epoch, pos = divmod(g, n)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.cfg.seed, epoch]).permutation(n))
        return int(self._perm[1][pos])

    def __getitem__(self, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.dataset.load(self.index(g))
        image, label = augment(image, label, np.random.default_rng([self.cfg.seed, 1, g]), self.cfg.augment)
        # (C, C, 3) HWC uint8 -> (3, C, C) float, raw 0-255 (the model normalises)
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float(), torch.from_numpy(
            np.ascontiguousarray(label)
        )


class PositionSampler(torch.utils.data.Sampler[int]):
    """Global positions of this rank's slots, batch after batch, from ``start_iter`` on."""

    def __init__(self, start_iter: int, max_iter: int, batch_size: int, rank: int, world: int) -> None:
        self.start_iter, self.max_iter = start_iter, max_iter
        self.batch_size, self.rank, self.world = batch_size, rank, world

    def __iter__(self) -> Iterator[int]:
        per = self.batch_size // self.world
        for it in range(self.start_iter, self.max_iter):
            base = it * self.batch_size + self.rank * per
            yield from range(base, base + per)

    def __len__(self) -> int:
        return (self.max_iter - self.start_iter) * (self.batch_size // self.world)


class TrainForward(torch.nn.Module):
    """``SED.forward_train`` as a module's forward, so DDP can wrap it."""

    def __init__(self, model: torch.nn.Module, pooling: int | None) -> None:
        super().__init__()
        self.model = model
        self.pooling = pooling

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # DDP hooks into plain tensor containers: the logits leave as a tuple in loss order
        return self.model.forward_train(images, text, pooling=self.pooling).in_loss_order()


def _dist() -> tuple[int, int]:
    """(rank, world size) under torchrun; initialises the process group once."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    return torch.distributed.get_rank(), world


def text_features_for(model: torch.nn.Module, classes: list[str]) -> torch.Tensor:
    """(T, P, E) prompt-ensembled text features from the frozen text tower."""
    from sed_trt.runtime.text_cache import encode_vocabulary
    from sed_trt.runtime.tokenizer import ClipTokenizer, default_bpe_path

    device = next(model.parameters()).device

    @torch.no_grad()
    def encode(tokens: np.ndarray) -> np.ndarray:
        return model.encode_text(torch.from_numpy(tokens).to(device)).float().cpu().numpy()

    feats = encode_vocabulary(
        encode, ClipTokenizer(default_bpe_path()), classes, num_templates=cast(SED, model).cfg.decoder.num_templates
    )
    return torch.from_numpy(feats).to(device)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint named in ``out_dir/last_checkpoint``, if any."""
    pointer = Path(out_dir) / LAST_CHECKPOINT
    if not pointer.is_file():
        return None
    path = Path(out_dir) / pointer.read_text().strip()
    if not path.is_file():
        raise CheckpointError(f"{str(pointer)!r} names {str(path)!r}, which does not exist")
    return path


def save_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, iteration: int, cfg: TrainConfig
) -> None:
    """Official layout under "model" (loadable by load_sed_checkpoint) + what resuming needs."""
    from sed_trt.sed.checkpoint import to_official_state_dict

    state = {
        "model": to_official_state_dict(model),
        "optimizer": optimizer.state_dict(),
        "iteration": iteration,
        "torch_rng": torch.get_rng_state(),
        "train_config": cfg.to_json(),
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    (path.parent / LAST_CHECKPOINT).write_text(path.name)


def _truncate_log(path: Path, iteration: int) -> None:
    """Drop records logged after ``iteration`` (work lost since the checkpoint) before resuming."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("iteration", 0) <= iteration:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the interruption
    path.write_text("".join(f"{line}\n" for line in keep), encoding="utf-8")


def evaluate_model(
    model: torch.nn.Module, dataset: SegDataset, *, limit: int | None = None, progress: bool = False
) -> dict[str, float]:
    """mIoU etc. of the model being trained (torch backend, official evaluation settings).

    Under DDP every process scores a shard and the confusion matrices are summed.
    """
    from sed_trt.runtime.evaluate import ConfusionMatrix, compute_metrics, evaluate
    from sed_trt.runtime.predictor import Predictor
    from sed_trt.sed.backend import TorchBackend

    rank, world = (
        (torch.distributed.get_rank(), torch.distributed.get_world_size())
        if torch.distributed.is_initialized()
        else (0, 1)
    )
    was_training = model.training
    device = next(model.parameters()).device
    try:
        backend = TorchBackend(cast(SED, model), device=str(device)).activate()
        _, conf = evaluate(Predictor(backend), dataset, limit=limit, progress=progress, shard=(rank, world))
    finally:
        model.train(was_training)
    if world > 1:
        total = torch.from_numpy(conf.matrix).to(device)
        torch.distributed.all_reduce(total)
        conf = ConfusionMatrix(dataset.num_classes)
        conf.matrix = total.cpu().numpy()
    metrics = compute_metrics(conf)
    return {
        "mIoU": metrics.miou,
        "fwIoU": metrics.fwiou,
        "mACC": metrics.macc,
        "pACC": metrics.pacc,
        "pixels": int(conf.matrix.sum()),
    }


def train(
    model: torch.nn.Module,
    dataset: SegDataset,
    cfg: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    eval_dataset: SegDataset | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``dataset`` for ``cfg.solver.max_iter`` iterations.

    With ``resume``, continue from ``out_dir/last_checkpoint`` (model, optimiser, iteration,
    RNG). Writes ``metrics.jsonl`` (losses and grad norm averaged over each ``log_period``,
    lr, seconds per iteration), ``model_XXXXXXX.pth``
    every ``checkpoint_period`` and ``model_final.pth``. With ``eval_dataset``, the model is
    evaluated every ``eval_period`` iterations and at the end (records with an "eval" key).
    Returns the last logged record.
    """
    rank, world = _dist()
    if cfg.batch_size % world:
        raise ConfigError(f"--batch-size {cfg.batch_size} is not divisible by the {world} processes")
    if cfg.augment.crop_size % 32:
        raise ConfigError(f"crop size must be a multiple of 32, got {cfg.augment.crop_size}")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(
        cfg.device if world == 1 or cfg.device == "cpu" else f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(cfg.seed)
    model.to(device).train()
    freeze_text_tower(model)
    optimizer = build_optimizer(model, cfg.solver)
    start_iter = 0
    ckpt = latest_checkpoint(out) if resume else None
    if resume and ckpt is None:
        step(f"no checkpoint in {str(out)!r} to resume from: starting at iteration 0", enabled=rank == 0)
    if ckpt is not None:
        from sed_trt.sed.checkpoint import load_strict, read_checkpoint, remap_official_state_dict

        state = read_checkpoint(ckpt, "training checkpoint")
        for key in ("model", "optimizer", "iteration"):
            if key not in state:
                raise CheckpointError(f"{str(ckpt)!r} lacks {key!r}: not a resumable training checkpoint")
        load_strict(model, remap_official_state_dict(state["model"]), what=f"checkpoint {str(ckpt)!r}")  # type: ignore[arg-type]
        optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
        start_iter = int(state["iteration"])  # type: ignore[call-overload]
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])  # type: ignore[arg-type]
        if "cuda_rng" in state and torch.cuda.is_available() and len(state["cuda_rng"]) == torch.cuda.device_count():  # type: ignore[arg-type]
            torch.cuda.set_rng_state_all(state["cuda_rng"])  # type: ignore[arg-type]
        step(f"resumed from {str(ckpt)!r} at iteration {start_iter}", enabled=rank == 0)
        if rank == 0:
            _truncate_log(out / "metrics.jsonl", start_iter)
    net: torch.nn.Module = TrainForward(model, cfg.pooling)
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )

    text = text_features_for(model, dataset.classes)
    num_classes = len(dataset.classes)
    max_iter = cfg.solver.max_iter
    loader = torch.utils.data.DataLoader(
        TrainSamples(dataset, cfg),
        batch_size=cfg.batch_size // world,
        sampler=PositionSampler(start_iter, max_iter, cfg.batch_size, rank, world),
        num_workers=cfg.workers,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG (drop path) untouched
    )
    bar = Progress(max_iter - start_iter, "train", enabled=progress and rank == 0, interval=5.0)
    log = open(out / "metrics.jsonl", "a", encoding="utf-8") if rank == 0 else None  # noqa: SIM115 (closed in finally)
    record: dict[str, Any] = {}
    window: dict[str, list[float]] = {}
    tick = time.perf_counter()
    try:
        for it, (images, labels) in enumerate(loader, start=start_iter):
            lr_factor = set_lr(optimizer, it, max_iter)
            outputs = net(images.to(device), text)
            losses = sed_loss(outputs, labels.to(device), num_classes)
            loss = torch.stack(list(losses.values())).sum()
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise TrainingError(f"loss became {loss_value} at iteration {it}; lower --lr or check the labels")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = clip_gradients(model, cfg.solver.clip_grad_norm)
            optimizer.step()
            done = it + 1
            for k, v in (
                ("loss", loss_value),
                *((k, float(v.detach())) for k, v in losses.items()),
                ("grad_norm", grad_norm),
            ):
                window.setdefault(k, []).append(v)
            if done % cfg.log_period == 0 or done == max_iter:
                # means over the iterations since the last record (one batch is noisy)
                now = time.perf_counter()
                n = len(window["loss"])
                record = {
                    "iteration": done,
                    **{k: sum(v) / n for k, v in window.items()},
                    "lr": cfg.solver.base_lr * lr_factor,
                    "sec_per_iter": (now - tick) / n,
                }
                window, tick = {}, now
                if log is not None:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
            bar.update(extra=f"loss {loss_value:.4f} lr {cfg.solver.base_lr * lr_factor:.2e}")
            if rank == 0 and (done % cfg.checkpoint_period == 0 or done == max_iter):
                name = "model_final.pth" if done == max_iter else f"model_{done - 1:07d}.pth"
                save_checkpoint(out / name, model, optimizer, done, cfg)
            if eval_dataset is not None and ((cfg.eval_period and done % cfg.eval_period == 0) or done == max_iter):
                scores = evaluate_model(model, eval_dataset, limit=cfg.eval_limit, progress=progress and rank == 0)
                bar.log(
                    f"iteration {done}: {eval_dataset.name} "
                    + " ".join(f"{k} {v:.2f}" for k, v in scores.items() if k != "pixels")
                )
                if log is not None:
                    log.write(json.dumps({"iteration": done, "eval": {"dataset": eval_dataset.name, **scores}}) + "\n")
                    log.flush()
                record = {**record, "eval": scores}
    finally:
        if log is not None:
            log.close()
    return record
