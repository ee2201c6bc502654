"""The benchmark writes JSON, a Markdown table and a plot with both CPU backends measured."""

from __future__ import annotations

import json

from benchmarks.bench import BenchConfig, run_bench


def test_bench_tiny_writes_table_and_plot(tmp_path):
    cfg = BenchConfig(backbone="sed_tiny_linear", image_sizes=(64,), vocab_sizes=(3, 20), topks=(None, 1), fixed_survivors=2, backends=("torch", "onnxruntime", "tensorrt"), repeats=2, warmup=1, out_dir=str(tmp_path))
    result = run_bench(cfg)
    data = json.loads((tmp_path / "bench.json").read_text())
    assert {r["backend"] for r in data["rows"]} == {"torch", "onnxruntime"}
    assert len(data["rows"]) == 2 * 2 * 3 == len(result["rows"])
    cer = [r for r in data["rows"] if r["setting"] == "cer"]
    assert all(len(r["survivors"]) == 3 and r["survivors"][-1] <= r["vocab"] for r in cer)
    assert all(r["ms"]["median"] > 0 and r["ms"]["p90"] >= r["ms"]["median"] for r in data["rows"])
    table = (tmp_path / "bench.md").read_text()
    assert "| onnxruntime | 64 | 20 | CER top-1 |" in table and "| torch | 64 | 3 | no CER |" in table
    assert (tmp_path / "bench.png").stat().st_size > 1000
    # memory per configuration: host RSS always (at least the loaded model), device only with CUDA
    assert all(r["peak_host_mb"] > 50 for r in data["rows"])
    assert all((r["peak_torch_device_mb"] is None) == (data["machine"]["cuda"] is None) for r in data["rows"])
