"""The benchmark writes JSON, a Markdown table and a plot with both CPU backends measured."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sed_trt.benchmarks.bench import BenchConfig, run_bench


def test_bench_tiny_writes_table_and_plot(tmp_path, toy_backend, small_engine_dir):
    """Also a plug-in's rows: the toy backend (tests/toy_backend.py) is measured like the others.

    The session's export of the same backbone, size and (random) weights is reused as the bench
    reuses its own earlier exports (the export itself is tested in tests/export)."""
    shutil.copytree(small_engine_dir, tmp_path / "engines" / "sed_tiny_linear_64")
    cfg = BenchConfig(
        backbone="sed_tiny_linear",
        image_sizes=(64,),
        vocab_sizes=(3, 20),
        topks=(None, 1),
        fixed_survivors=2,
        backends=("torch", "onnxruntime", "tensorrt", "toy"),
        repeats=2,
        warmup=1,
        out_dir=str(tmp_path),
    )
    result = run_bench(cfg)
    data = json.loads((tmp_path / "bench.json").read_text())
    assert {r["backend"] for r in data["rows"]} == {"torch", "onnxruntime", "toy"}
    assert len(data["rows"]) == 3 * 2 * 3 == len(result["rows"])
    assert len(toy_backend.BUILT) == 1
    cer = [r for r in data["rows"] if r["setting"] == "cer"]
    assert all(len(r["survivors"]) == 3 and r["survivors"][-1] <= r["vocab"] for r in cer)
    assert all(r["ms"]["median"] > 0 and r["ms"]["max"] >= r["ms"]["p90"] >= r["ms"]["median"] for r in data["rows"])
    table = (tmp_path / "bench.md").read_text()
    assert "| onnxruntime | 64 | 20 | CER top-1 |" in table and "| torch | 64 | 3 | no CER |" in table
    for name in ("bench_latency.png", "bench_parts.png", "bench_memory.png"):
        assert (tmp_path / name).stat().st_size > 1000
    # memory per configuration: host RSS always (at least the loaded model), device only with CUDA
    assert all(r["peak_host_mb"] > 50 for r in data["rows"])
    assert all((r["peak_torch_device_mb"] is None) == (data["machine"]["cuda"] is None) for r in data["rows"])


def test_figures_from_a_fixed_bench_json(tmp_path):
    """Each figure is drawn from a small real bench.json, with the expected size, title and legend."""
    from PIL import Image

    from sed_trt.benchmarks.figures import write_figures

    result = json.loads((Path(__file__).parent / "data" / "bench_small.json").read_text())
    latency, parts, memory = write_figures(result, tmp_path)
    for fig in (latency, parts, memory):
        assert Image.open(fig.path).size == (1080, 624)
        assert fig.title.startswith("SED sed_tiny_linear (random weights), 64 px") and "AMD EPYC, 2 CPUs" in fig.title
    assert set(latency.labels) == {
        f"{b}, {s}" for b in ("torch", "onnxruntime") for s in ("no CER", "CER top-2", "stages 1-3 at 2 classes")
    }
    assert "150 classes, no CER" in parts.title
    assert (
        parts.labels[-2:] == ["onnxruntime", "torch"]
        and "post-processing" in parts.labels
        and "image encoder" in parts.labels
    )
    assert memory.labels == ["onnxruntime host RSS", "torch host RSS"]


def test_figures_command(tmp_path, capsys):
    from sed_trt.cli import main

    shutil.copyfile(Path(__file__).parent / "data" / "bench_small.json", tmp_path / "bench.json")
    assert main(["figures", str(tmp_path / "bench.json")]) == 0
    assert "bench_parts.png" in capsys.readouterr().out and (tmp_path / "bench_memory.png").is_file()
    (tmp_path / "bad.json").write_text("{}")
    assert main(["figures", str(tmp_path / "bad.json")]) == 2
    assert "is not a bench.json" in capsys.readouterr().err


def test_release_floor_states_the_rate_each_target_needs(parity_engine_dir, monkeypatch):
    """The target arithmetic of benchmarks.decoder_release, on the tiny model (SED-B's full decoder)."""
    import sed_trt.benchmarks.bench
    from sed_trt.benchmarks.decoder_release import floor

    monkeypatch.setattr(sed_trt.benchmarks.bench, "gemm_gflops", lambda threads=None: 200.0)
    ms = {"encoder_ms": 1000.0, "decoder_ms": 4000.0, "postprocess_ms": 500.0, "total_ms": 5500.0}
    timing = {"classes": 10, "median_ms": {"old": dict(ms, decoder_ms=5000.0, total_ms=7000.0), "new": ms}}
    f = floor(timing, parity_engine_dir, None)
    assert 3.5 < f["decoder_gflop_per_class"] < 3.7  # the 3.58 GFLOP per class of SED-B's decoder
    work = f["decoder_gflop_per_class"] * 10
    dec, e2e = f["targets"]["decoder 2.5x"], f["targets"]["end to end 2x"]
    assert dec["decoder_ms_allowed"] == 2000.0 and e2e["decoder_ms_allowed"] == 3500.0 - 1500.0
    assert abs(dec["gflops_needed"] - work / 2.0) < 1e-9 and abs(dec["share_of_gemm"] - work / 400.0) < 1e-9
    assert abs(f["decoder_gflops_now"] - work / 4.0) < 1e-9


def test_gpu_bench_writes_its_tables(tmp_path):
    """The GPU bench's one prepared run, here on the CPU with a 64 px tiny model (no CUDA-graph rows).
    Every row is compared with an fp32 eager reference made first, not with whichever
    configuration the flags list first (bf16 here)."""
    from sed_trt.benchmarks.gpu_bench import main as gpu_bench

    args = ["--backbone", "sed_tiny_linear", "--image-size", "64", "--device", "cpu", "--classes", "voc20"]
    assert (
        gpu_bench(
            [*args, "--topk", "none", "2", "--precisions", "bf16", "fp32", "--repeats", "2", "--out-dir", str(tmp_path)]
        )
        == 0
    )
    result = json.loads((tmp_path / "gpu_bench.json").read_text())
    rows = {(r["precision"], r["topk"]): r for r in result["rows"]}
    assert set(rows) == {("fp32", None), ("fp32", 2), ("bf16", None), ("bf16", 2)}
    assert rows["fp32", None]["labels_equal"] == 1.0 and rows["fp32", None]["max_dprob"] == 0.0
    assert 0 < rows["bf16", 2]["max_dprob"] < 2e-2 and rows["bf16", 2]["kept_same"]
    assert rows["bf16", None]["max_dprob"] > 0 and rows["bf16", None]["labels_equal_eager"] is None
    assert rows["fp32", 2]["survivors"][0] < 20 and all(r["e2e_ms"] > 0 for r in rows.values())
    assert result["onnxruntime_cuda"]["available"] is False
    md = (tmp_path / "gpu_bench.md").read_text()
    assert "| bf16 | off | voc20 | 2 |" in md and "ONNX Runtime CUDA provider: absent" in md


def test_gpu_bench_without_the_device_is_one_line(tmp_path, capsys):
    import torch

    from sed_trt.benchmarks.gpu_bench import main as gpu_bench

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is here: the bench would run")
    assert gpu_bench(["--backbone", "sed_tiny_linear", "--image-size", "64", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpu_bench: error: --device cuda: no CUDA GPU is available here"), err


def test_bench_interleaves_backends_in_a_rotating_order():
    """Each repetition runs every backend once and who goes first rotates, so load that comes and
    goes lands on all rows alike (release 0.2 timed one backend after another)."""
    from types import SimpleNamespace

    from sed_trt.benchmarks.bench import _time_predicts

    order: list[str] = []

    class Fake:
        def __init__(self, name: str) -> None:
            self.name = name

        def predict(self, image):
            order.append(self.name)
            return SimpleNamespace(timings={"image_encoder_ms": 1.0}, survivors=[1, 1, 1])

    out = _time_predicts({n: Fake(n) for n in "abc"}, None, repeats=3, warmup=1)
    assert order[:3] == ["a", "b", "c"]  # warm-up
    assert order[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(len(out[n][0]) == 3 for n in "abc")


def test_bench_int8_rows_run_the_int8_graphs_and_need_their_photos(
    tmp_path, parity_dir, parity_engine_dir, parity_calibration_dir, capsys
):
    """onnxruntime-int8 is a row like any other (the reused export has its int8 graphs); without
    --int8-calibration, or with an empty folder, an int8 row is refused in one line before any work."""
    from sed_trt.cli import main

    shutil.copytree(parity_engine_dir, tmp_path / "engines" / "sed_tiny_linear_768")
    cfg = BenchConfig(
        backbone="sed_tiny_linear",
        weights=str(parity_dir / "checkpoint.pth"),
        image_sizes=(768,),
        vocab_sizes=(3,),
        topks=(None,),
        fixed_survivors=2,
        backends=("onnxruntime", "onnxruntime-int8"),
        repeats=1,
        warmup=0,
        out_dir=str(tmp_path),
        int8_calibration=str(parity_calibration_dir),
    )
    run_bench(cfg)
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert {r["backend"] for r in rows} == {"onnxruntime", "onnxruntime-int8"}
    base = [
        "bench",
        "--backbone",
        "sed_tiny_linear",
        "--out-dir",
        str(tmp_path / "b"),
        "--backends",
        "onnxruntime-int8",
    ]
    assert main(base) == 2
    assert "int8 rows need --int8-calibration DIR" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([*base, "--int8-calibration", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "holds no photos" in err and len(err.strip().splitlines()) == 1
    base[-1] = "onnxruntime,onnxruntime-fp8"  # an emulation: its error is measured by compare, not timed
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "fp8 rows are not timed here" in err and len(err.strip().splitlines()) == 1
