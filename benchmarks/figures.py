"""Benchmark figures from ``bench.json`` (matplotlib, the ``[bench]`` extra).

Three figures, each titled with the backbone, input size and machine line:
latency vs vocabulary size (log x) per backend with no CER, CER top-k and the fixed-survivor
line; stacked per-part bars per backend at one setting; peak memory vs vocabulary size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sed_trt.runtime.errors import install_hint

# Parts of a prediction as the predictor times them, grouped for the stacked bars.
PART_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pre-processing", ("preprocess_ms",)),
    ("image encoder", ("image_encoder_ms",)),
    ("decoder stage 0", ("decoder_stage0_ms",)),
    ("decoder stage 1", ("decoder_stage1_ms",)),
    ("decoder stage 2", ("decoder_stage2_ms",)),
    ("decoder stage 3", ("decoder_stage3_ms",)),
    ("CER", ("cer1_ms", "cer2_ms", "cer3_ms")),
    ("post-processing", ("postprocess_ms",)),
)
BACKEND_COLORS = {
    "torch": "#d62728",
    "onnxruntime": "#1f77b4",
    "tensorrt": "#2ca02c",
    "openvino": "#9467bd",
    "openvino-bf16": "#ff7f0e",
}
SETTING_STYLES = {"no_cer": "-", "cer": "--", "fixed": ":"}
FIG_SIZE = (9.0, 5.2)  # inches at DPI: 1080 x 624 px, readable at README width
DPI = 120


@dataclass
class Figure:
    """What was drawn: the file, its title, and the legend / category labels (what tests check)."""

    path: Path
    title: str
    labels: list[str] = field(default_factory=list)


def setting_label(row: dict[str, Any]) -> str:
    """'no CER', 'CER top-8' or 'stages 1-3 at 16 classes'."""
    if row["setting"] == "no_cer":
        return "no CER"
    if row["setting"] == "cer":
        return f"CER top-{row['topk']}"
    return f"stages 1-3 at {row['setting'].removeprefix('fixed_')} classes"


def _title(result: dict[str, Any], what: str, sizes: list[int]) -> str:
    cfg, m = result["config"], result["machine"]
    weights = "trained" if cfg.get("weights") else "random"
    px = ", ".join(f"{s} px" for s in sizes)
    machine = f"{m['processor']}, {m['cpu_count']} CPUs" + (f", {m['cuda']}" if m.get("cuda") else "")
    return f"SED {cfg['backbone']} ({weights} weights), {px}: {what}\n{machine}"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_figure(result: dict[str, Any], path: Path) -> Figure:
    """ms/image (median, p90 as error bar) vs vocabulary size, one line per backend and setting."""
    plt = _pyplot()
    rows = result["rows"]
    sizes = sorted({r["image_size"] for r in rows})
    fig, ax = plt.subplots(figsize=FIG_SIZE, dpi=DPI)
    series: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for r in rows:
        series.setdefault((r["backend"], r["image_size"], setting_label(r)), []).append(r)
    labels = []
    for (backend, size, setting), pts in sorted(series.items()):
        pts = sorted(pts, key=lambda r: r["vocab"])
        style = SETTING_STYLES["fixed" if pts[0]["setting"].startswith("fixed") else pts[0]["setting"]]
        label = f"{backend}, {setting}" + (f", {size} px" if len(sizes) > 1 else "")
        xs, med = [r["vocab"] for r in pts], [r["ms"]["median"] for r in pts]
        err = [[0] * len(pts), [r["ms"]["p90"] - r["ms"]["median"] for r in pts]]
        ax.errorbar(
            xs,
            med,
            yerr=err,
            fmt="o" + style,
            color=BACKEND_COLORS.get(backend, "k"),
            label=label,
            capsize=3,
            lw=1.8,
            ms=5,
        )
        labels.append(label)
    vocabs = sorted({r["vocab"] for r in rows})
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(vocabs, [str(v) for v in vocabs])
    ax.minorticks_off()
    ax.set_xlabel("vocabulary size (classes)")
    ax.set_ylabel("ms per image (median; bar to p90)")
    ax.grid(True, which="major", alpha=0.3)
    title = _title(result, "latency vs vocabulary", sizes)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", ncol=2 if len(labels) > 6 else 1)
    return _save(fig, path, title, labels)


def parts_figure(result: dict[str, Any], path: Path, *, vocab: int | None = None, setting: str = "no_cer") -> Figure:
    """Stacked per-part bars (encoder, each decoder stage, CER, post-processing) per backend at one setting."""
    plt = _pyplot()
    rows = [r for r in result["rows"] if r["setting"] == setting and r["parts_ms"]]
    vocabs = sorted({r["vocab"] for r in rows})
    if vocab is None:
        vocab = 150 if 150 in vocabs else vocabs[len(vocabs) // 2]
    rows = sorted((r for r in rows if r["vocab"] == vocab), key=lambda r: (r["image_size"], r["backend"]))
    sizes = sorted({r["image_size"] for r in rows})
    bars = [f"{r['backend']}" + (f"\n{r['image_size']} px" if len(sizes) > 1 else "") for r in rows]
    fig, ax = plt.subplots(figsize=FIG_SIZE, dpi=DPI)
    bottom = [0.0] * len(rows)
    cmap = plt.get_cmap("tab10")
    labels = []
    for i, (name, keys) in enumerate(PART_GROUPS):
        heights = [sum(r["parts_ms"].get(k, 0.0) for k in keys) for r in rows]
        if not any(heights):
            continue
        ax.bar(bars, heights, bottom=bottom, color=cmap(i), label=name, width=0.6)
        bottom = [b + h for b, h in zip(bottom, heights)]
        labels.append(name)
    for x, total in enumerate(bottom):
        ax.text(x, total, f"{total:.0f} ms", ha="center", va="bottom", fontsize=9)
    ax.set_ylabel("ms per image (medians of the parts)")
    ax.set_ylim(0, max(bottom, default=1) * 1.12)
    ax.grid(True, axis="y", alpha=0.3)
    title = _title(
        result, f"where the time goes, {vocab} classes, {setting_label({'setting': setting, 'topk': None})}", sizes
    )
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.subplots_adjust(right=0.78)
    return _save(fig, path, title, labels + bars)


def memory_figure(result: dict[str, Any], path: Path) -> Figure:
    """Peak host RSS (and peak device memory where measured) vs vocabulary size per backend."""
    plt = _pyplot()
    rows = [r for r in result["rows"] if r["setting"] == "no_cer"]
    sizes = sorted({r["image_size"] for r in rows})
    fig, ax = plt.subplots(figsize=FIG_SIZE, dpi=DPI)
    labels = []
    for backend, size in sorted({(r["backend"], r["image_size"]) for r in rows}):
        pts = sorted((r for r in rows if r["backend"] == backend and r["image_size"] == size), key=lambda r: r["vocab"])
        tail = f", {size} px" if len(sizes) > 1 else ""
        color = BACKEND_COLORS.get(backend, "k")
        ax.plot(
            [r["vocab"] for r in pts],
            [r["peak_host_mb"] / 1024 for r in pts],
            "o-",
            color=color,
            label=f"{backend} host RSS{tail}",
        )
        labels.append(f"{backend} host RSS{tail}")
        if any(r.get("peak_torch_device_mb") is not None for r in pts):
            ax.plot(
                [r["vocab"] for r in pts],
                [(r.get("device_used_mb") or 0) / 1024 for r in pts],
                "s--",
                color=color,
                label=f"{backend} device used{tail}",
            )
            labels.append(f"{backend} device used{tail}")
    vocabs = sorted({r["vocab"] for r in rows})
    ax.set_xscale("log")
    ax.set_xticks(vocabs, [str(v) for v in vocabs])
    ax.minorticks_off()
    ax.set_ylim(bottom=0)
    ax.set_xlabel("vocabulary size (classes), no CER")
    ax.set_ylabel("peak memory (GiB)")
    ax.grid(True, alpha=0.3)
    title = _title(result, "peak memory vs vocabulary", sizes)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path, title, labels)


def _save(fig: Any, path: Path, title: str, labels: list[str]) -> Figure:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return Figure(Path(path), title, labels)


def write_figures(result: dict[str, Any], out_dir: str | Path) -> list[Figure]:
    """bench_latency.png, bench_parts.png, bench_memory.png next to bench.json."""
    out = Path(out_dir)
    return [
        latency_figure(result, out / "bench_latency.png"),
        parts_figure(result, out / "bench_parts.png"),
        memory_figure(result, out / "bench_memory.png"),
    ]


def load_bench_json(path: str | Path) -> dict[str, Any]:
    """A bench.json written by ``sed-trt bench``, or a one-line :class:`ConfigError`."""
    import json

    from sed_trt.runtime.errors import ConfigError

    reason = matplotlib_missing()
    if reason:
        raise ConfigError(f"cannot draw figures: {reason}")
    try:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
        rows = result["rows"]
        result["config"]["backbone"], result["machine"]["processor"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{str(path)!r} is not a bench.json written by 'sed-trt bench' ({type(exc).__name__})"
        ) from None
    if not rows:
        raise ConfigError(f"{str(path)!r} holds no measurements")
    return result


def matplotlib_missing() -> str | None:
    """Why figures cannot be drawn here (None if they can)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return f"matplotlib is not installed ({install_hint('bench')})"
    return None
