"""``sed-trt predict`` over many inputs: files, globs, directories, ``@lists`` and videos.

One deployment is opened once and every input runs through the pipelined runner
(:mod:`sed_trt.runtime.stream`): decoding ahead on reader threads, the model on this thread,
overlays and files on writer threads. Input ``rel/name.ext`` (relative to the directory, glob
root or list folder it came from) writes ``OUT/rel/name.png`` (the overlay; ``--out-format``),
with ``--save-npz`` ``OUT/rel/name.npz`` and with ``--save-labels`` ``OUT/rel/name.labels.png``.
A video writes ``OUT/name.mp4`` (an overlay video at the source's frame rate) and, with
``--save-npz``, ``OUT/name.npz`` (``labels`` (N, H, W), ``frames``, ``pts``). A bad input is
one line; the run goes on and exits 2 at the end.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from sed_trt.runtime.deployment import Deployment
from sed_trt.runtime.errors import ConfigError
from sed_trt.runtime.fsutil import atomic_write, check_writable_dir, write_npz
from sed_trt.runtime.sources import InputFile, expand_inputs
from sed_trt.runtime.stream import Outcome, Source, Summary, batch_size_for, run_stream
from sed_trt.runtime.vocab import printable

FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
RANDOM_BANNER = "RANDOM WEIGHTS: this segmentation is meaningless (no --weights)"


def result_arrays(
    labels: np.ndarray, kept: np.ndarray, classes: list[str], probs: np.ndarray | None
) -> dict[str, np.ndarray]:
    """What ``--save-npz`` holds for one image: labels (H0, W0) int32, kept (T,), classes (T,) and,
    when given, probs (T, h, w) float32 (one image or a folder alike)."""
    arrays = {"labels": labels.astype(np.int32), "kept": kept, "classes": np.array(classes, dtype=str)}
    if probs is not None:
        arrays["probs"] = np.asarray(probs, dtype=np.float32)
    return arrays


class Outputs:
    """The files one input writes under ``--out-dir``."""

    def __init__(self, args: argparse.Namespace, classes: list[str], random_weights: bool) -> None:
        self.root = Path(args.out_dir)
        self.suffix = "." + args.out_format
        self.npz = bool(args.save_npz)
        self.labels = bool(args.save_labels)
        self.alpha = args.alpha
        self.side_by_side = args.side_by_side
        self.classes = classes
        self.banner = RANDOM_BANNER if random_weights else None

    @staticmethod
    def names(root: Path, name: str, args: argparse.Namespace) -> list[Path]:
        """What input ``name`` may write under ``root`` (a video: its .mp4 and .npz)."""
        out = [root / f"{name}.{args.out_format}", root / f"{name}.mp4"]
        if args.save_npz:
            out.append(root / f"{name}.npz")
        if args.save_labels:
            out.append(root / f"{name}.labels.png")
        return out

    def paths(self, name: str) -> list[Path]:
        out = [self.root / f"{name}{self.suffix}"]
        if self.npz:
            out.append(self.root / f"{name}.npz")
        if self.labels:
            out.append(self.root / f"{name}.labels.png")
        return out

    def exist(self, source: Source) -> bool:
        return all(p.is_file() for p in self.paths(source.name))

    def write(self, outcome: Outcome) -> list[Path]:
        """Overlay, arrays and label map of one image (a writer thread); atomic, each one."""

        from sed_trt.runtime.visualize import overlay, save_picture

        name, pred, image, probs = outcome.source.name, outcome.prediction, outcome.image, outcome.probs
        assert image is not None and (probs is not None or not self.npz)
        written = []
        overlay_path, *rest = self.paths(name)
        overlay_path.parent.mkdir(parents=True, exist_ok=True)
        vis = overlay(
            image, pred.labels, self.classes, alpha=self.alpha, banner=self.banner, side_by_side=self.side_by_side
        )
        fmt = FORMATS[self.suffix[1:]]
        written.append(atomic_write(overlay_path, lambda tmp: save_picture(vis, tmp, fmt)))
        if self.npz:
            arrays = result_arrays(pred.labels, pred.kept, self.classes, probs)
            written.append(atomic_write(self.root / f"{name}.npz", lambda tmp: write_npz(tmp, arrays)))
        if self.labels:
            written.append(
                atomic_write(
                    self.root / f"{name}.labels.png", lambda tmp: label_png(pred.labels, len(self.classes), tmp)
                )
            )
        return written


def label_png(labels: np.ndarray, num_classes: int, path: str) -> None:
    """The label map as an indexed PNG whose palette is the overlay's colours (up to 256
    classes; more: a 16-bit grayscale PNG of the class ids)."""
    from sed_trt.runtime.visualize import palette, save_picture

    if num_classes <= 256:
        save_picture(labels.astype(np.uint8), path, "PNG", palette=palette(num_classes).reshape(-1).tolist())
    else:
        save_picture(labels.astype(np.uint16), path, "PNG")


def run_many(args: argparse.Namespace, deployment: Deployment, classes: list[str]) -> int:
    """Segment every input ``--image`` names into ``--out-dir``; exit 2 if any failed."""
    if not args.out_dir:
        raise ConfigError("several inputs (or a directory, glob, list or video) need --out-dir DIR")
    if args.out:
        raise ConfigError("--out names one file: with several inputs give --out-dir (overlays go there)")
    if isinstance(args.save_npz, str):
        raise ConfigError("--save-npz takes no file with several inputs: the arrays go to --out-dir")
    inputs = expand_inputs(args.image)
    check_writable_dir(args.out_dir, "--out-dir")
    out_root = Path(args.out_dir).resolve()
    written = {p.resolve() for item in inputs for p in Outputs.names(out_root, item.name, args)}
    for item in inputs:  # never write over an input
        if item.path.resolve() in written:
            raise ConfigError(f"--out-dir {args.out_dir!r}: an output would overwrite the input {str(item.path)!r}")
    backend = deployment.open_backend()
    summary = Summary()
    with backend:
        predictor = deployment.predictor(backend, progress=not args.quiet)
        predictor.set_classes(classes)
        predictor.progress = False  # the run's own bar counts images
        outputs = Outputs(args, classes, backend.random_weights)
        batch = batch_size_for(backend, deployment.batch_size)
        images = [i for i in inputs if not i.video]
        if images:
            _run_images(args, predictor, images, outputs, batch, summary)
        for item in (i for i in inputs if i.video):
            _run_video(args, predictor, item, outputs, batch, summary)
    print(summary.line())
    print(f"outputs in {args.out_dir}")
    return 2 if summary.failed else 0


def _run_images(
    args: argparse.Namespace,
    predictor: Any,
    images: list[InputFile],
    outputs: Outputs,
    batch: int,
    summary: Summary,
) -> None:
    from sed_trt.runtime.image import load_image

    sources = [Source(index=i, name=item.name, path=item.path) for i, item in enumerate(images)]
    stream = run_stream(
        predictor,
        sources,
        load=lambda s: load_image(s.path, max_pixels=args.max_pixels),
        write=outputs.write,
        skip=outputs.exist if args.skip_existing else None,
        batch_size=batch,
        keep_probs=outputs.npz,
        total=len(sources),
        progress=not args.quiet,
        summary=summary,
    )
    for outcome in stream:
        if outcome.error is not None:
            print(f"sed-trt: {printable(str(outcome.source.path))}: {outcome.error}", file=sys.stderr)


def _run_video(
    args: argparse.Namespace, predictor: Any, item: InputFile, outputs: Outputs, batch: int, summary: Summary
) -> None:
    """Every ``--frame-stride``-th frame through the same pipeline; the overlay video and arrays in order."""
    from sed_trt.runtime.errors import SedTrtError
    from sed_trt.runtime.video import VideoWriter, probe_video, read_frames
    from sed_trt.runtime.visualize import overlay

    video_path = outputs.root / f"{item.name}.mp4"
    npz_path = outputs.root / f"{item.name}.npz"
    if args.skip_existing and video_path.is_file() and (not outputs.npz or npz_path.is_file()):
        summary.skipped += 1
        return
    try:
        info = probe_video(item.path)
    except SedTrtError as exc:
        print(f"sed-trt: {printable(str(item.path))}: {exc}", file=sys.stderr)
        summary.failed += 1
        return
    rate = info.rate / args.frame_stride
    writer = VideoWriter(video_path, rate)
    height = info.height
    max_legend = max(1, (height - 8) // 18 - 2)  # the legend fits the frame: every frame one size

    def frames() -> Any:
        for i, (index, pts, rgb) in enumerate(read_frames(item.path, stride=args.frame_stride)):
            yield Source(index=i, name=item.name, image=rgb, frame=index, pts=pts)

    def draw(outcome: Outcome) -> np.ndarray:
        assert outcome.image is not None
        vis = overlay(
            outcome.image,
            outcome.prediction.labels,
            outputs.classes,
            alpha=outputs.alpha,
            banner=outputs.banner,
            max_legend=max_legend,
        )
        return vis[: outcome.image.shape[0]]

    labels, indices, stamps = [], [], []
    expected = (info.frames + args.frame_stride - 1) // args.frame_stride if info.frames else 0
    failed = False
    try:
        stream = run_stream(
            predictor,
            frames(),
            load=_frame,
            write=draw,
            batch_size=batch,
            total=expected or None,
            progress=not args.quiet,
            summary=summary,
        )
        for outcome in stream:
            if outcome.error is not None:
                print(
                    f"sed-trt: {printable(str(item.path))} frame {outcome.source.frame}: {outcome.error}",
                    file=sys.stderr,
                )
                failed = True
                continue
            writer.write(outcome.written)
            if outputs.npz:
                labels.append(outcome.prediction.labels)
                indices.append(outcome.source.frame)
                stamps.append(np.nan if outcome.source.pts is None else outcome.source.pts)
        if writer.frames == 0:
            raise SedTrtError(f"{str(item.path)!r}: no frame could be segmented")
        written = writer.close()
    except SedTrtError as exc:
        writer.abort()
        print(f"sed-trt: {printable(str(item.path))}: {exc}", file=sys.stderr)
        summary.failed += 1
        return
    except BaseException:
        writer.abort()
        raise
    if outputs.npz:
        arrays = {
            "labels": np.stack(labels).astype(np.int32),
            "frames": np.array(indices, dtype=np.int64),
            "pts": np.array(stamps, dtype=np.float64),
            "classes": np.array(outputs.classes, dtype=str),
        }
        atomic_write(npz_path, lambda tmp: write_npz(tmp, arrays))
    fps = float(rate)
    note = " (some frames failed)" if failed else ""
    print(f"{printable(str(item.path))}: {writer.frames} frames at {fps:.2f} fps -> {written} ({writer.codec}){note}")


def _frame(source: Source) -> np.ndarray:
    assert source.image is not None  # frames come decoded
    return source.image
