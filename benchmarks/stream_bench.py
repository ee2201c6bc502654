"""Folder mode against the loops users write without it, interleaved in one run; peak RSS by input count.

    python -m sed_trt.benchmarks.stream_bench --engine-dir DIR [--photos 24] [--rounds 2] [--rss 20,500]

Per round, in turn: ``sed-trt predict --image DIR --out-dir OUT --save-npz`` (folder mode), a
shell loop of one ``sed-trt predict`` per photo writing the same files, and a Python loop of
``Segmenter.segment`` that writes the same files (overlay and npz). The photos are generated
(mixed sizes, two of 12 MP). Peak RSS is the folder-mode process's, over ``--rss`` inputs.
Writes ``stream_bench.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PYTHON_LOOP = """
import sys, numpy as np
from pathlib import Path
from PIL import Image
import sed_trt
from sed_trt.runtime.fsutil import atomic_write, write_npz
from sed_trt.runtime.visualize import overlay
src, out, engine, classes = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
with sed_trt.Segmenter.from_engine_dir(engine) as seg:
    seg.set_vocabulary(classes)
    for path in sorted(src.glob("*.png")):
        image = np.asarray(Image.open(path).convert("RGB"))
        r = seg.segment(image, probs=True)
        vis = overlay(image, r.labels, list(r.classes))
        atomic_write(out / f"{path.stem}.png", lambda t: Image.fromarray(vis).save(t, format="PNG"))
        arrays = {"labels": r.labels.astype(np.int32), "kept": r.kept, "classes": np.array(r.classes), "probs": r.probs}
        atomic_write(out / f"{path.stem}.npz", lambda t: write_npz(t, arrays))
"""

RSS_WRAPPER = """
import resource, subprocess, sys
rc = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(rc)
"""


def make_photos(folder: Path, count: int, *, large: int = 2, seed: int = 0, cycle: int | None = None) -> None:
    """``count`` photos of mixed sizes (the first ``large`` 12 MP); ``cycle``: sizes repeat with
    that period, so runs over different counts see the same sizes (memory compared fairly)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = [(int(rng.integers(240, 900)), int(rng.integers(240, 1200))) for _ in range(cycle or count)]
    for i in range(count):
        if i < large:
            h, w = 3000, 4000
        else:
            h, w = sizes[i % len(sizes)]
        base = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        img = np.kron(base, np.ones((16, 16, 1), np.uint8))[:h, :w]  # blocky: compresses like a photo
        Image.fromarray(img).save(folder / f"photo{i:04d}.png")


def cli() -> list[str]:
    return [sys.executable, "-m", "sed_trt"]


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def folder_mode(photos: Path, out: Path, engine: str, classes: str) -> list[str]:
    return [*cli(), "predict", "--engine-dir", engine, "--image", str(photos), "--classes", classes,
            "--out-dir", str(out), "--save-npz", "--quiet"]  # fmt: skip


def shell_loop(photos: Path, out: Path, engine: str, classes: str) -> float:
    start = time.perf_counter()
    for path in sorted(photos.glob("*.png")):
        cmd = [*cli(), "predict", "--engine-dir", engine, "--image", str(path), "--classes", classes,
               "--out", str(out / f"{path.stem}.png"), "--save-npz", str(out / f"{path.stem}.npz"), "--quiet"]  # fmt: skip
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def peak_rss_mb(cmd: list[str]) -> float:
    res = subprocess.run([sys.executable, "-c", RSS_WRAPPER, *cmd], capture_output=True, text=True, check=True)
    return int(res.stdout.split()[-1]) / 1024


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m sed_trt.benchmarks.stream_bench", description=__doc__.splitlines()[0])
    p.add_argument("--engine-dir", required=True)
    p.add_argument("--classes", default="voc20")
    p.add_argument("--photos", type=int, default=24)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--rss", default="20,500", help="input counts whose folder-mode peak RSS is measured")
    p.add_argument("--out-dir", default="results/stream")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sed-trt-stream-"))
    rows: dict[str, list[float]] = {"folder mode": [], "shell loop of predict": [], "Python loop of segment": []}
    try:
        photos = work / "photos"
        make_photos(photos, args.photos)
        engine, classes = str(Path(args.engine_dir).resolve()), args.classes
        subprocess.run(folder_mode(photos, work / "warm", engine, classes), check=True)  # text-feature cache, numba
        for r in range(args.rounds):
            order = list(rows) if r % 2 == 0 else list(reversed(rows))
            for name in order:
                out = work / f"out_{r}_{len(rows[name])}_{name.split()[0]}"
                out.mkdir()
                if name == "folder mode":
                    rows[name].append(timed(folder_mode(photos, out, engine, classes)))
                elif name == "shell loop of predict":
                    rows[name].append(shell_loop(photos, out, engine, classes))
                else:
                    rows[name].append(
                        timed([sys.executable, "-c", PYTHON_LOOP, str(photos), str(out), engine, classes])
                    )
                print(f"round {r + 1}: {name} {rows[name][-1]:.1f} s", flush=True)
        rss = {}
        for n in (int(x) for x in args.rss.split(",")):
            many = work / f"rss_{n}"
            make_photos(many, n, large=0, seed=1, cycle=20)
            rss[n] = peak_rss_mb(folder_mode(many, work / f"rss_out_{n}", engine, classes))
            print(f"peak RSS over {n} inputs: {rss[n]:.0f} MB", flush=True)
            shutil.rmtree(many)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    folder = rows["folder mode"]
    result = {
        "photos": args.photos,
        "classes": args.classes,
        "engine_dir": args.engine_dir,
        "cpu": os.cpu_count(),
        "seconds": rows,
        "speedup_vs_shell_loop": [s / f for s, f in zip(rows["shell loop of predict"], folder)],
        "speedup_vs_python_loop": [s / f for s, f in zip(rows["Python loop of segment"], folder)],
        "peak_rss_mb": rss,
        "maxrss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "stream_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| run | seconds per round | vs folder mode |\n|---|---|---|")
    for name, secs in rows.items():
        ratio = " / ".join(f"{s / f:.2f}x" for s, f in zip(secs, folder))
        print(f"| {name} | {' / '.join(f'{s:.1f}' for s in secs)} | {ratio} |")
    print(f"peak RSS (folder mode): {', '.join(f'{n} inputs {v:.0f} MB' for n, v in rss.items())}")
    print(f"wrote {out_dir / 'stream_bench.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
