"""Backends are plug-ins: a toy backend registered in one call is found by predict, compare,
bench and doctor, with its own flag, and no other code names it (bench: tests/test_bench.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sed_trt.cli import main
from tests.checks import onnxruntime_engine

pytestmark = pytest.mark.parity


def _request(parity_dir):
    return ["--image", str(parity_dir / "image.png"), "--classes", "sky; tree; road", "--no-cache", "--quiet"]


def test_predict_compare_and_doctor_find_the_toy_backend(toy_backend, parity_dir, parity_engine_dir, tmp_path, capsys):
    npz = tmp_path / "toy.npz"
    args = ["predict", "--backend", "toy", "--engine-dir", str(parity_engine_dir), "--toy-level", "7"]
    assert main([*args, "--save-npz", str(npz), *_request(parity_dir)]) == 0
    assert [b.level for b in toy_backend.BUILT] == [7]
    assert np.load(npz)["labels"].shape == (427, 640)

    out = tmp_path / "cmp.json"
    cmp = ["compare", "--engine-dir", str(parity_engine_dir), "--backends", "toy", "--out-json", str(out)]
    assert main([*cmp, *_request(parity_dir)]) == 0
    ref, row = json.loads(out.read_text())["rows"]
    assert row["backend"] == "toy" and row["max_abs_dprob"] == 0.0  # the same graphs in the same library

    capsys.readouterr()
    assert main(["doctor"]) == 0
    doctor = capsys.readouterr().out
    assert (
        "ok  backend toy" in doctor
        and "toy 1.0, always ready" in doctor
        and "usable backends: onnxruntime, openvino, torch, toy" in doctor
    )

    # its option is its own: another backend refuses it in one line
    assert main([*onnxruntime_engine(parity_engine_dir), "--toy-level", "1", *_request(parity_dir)]) == 2
    assert "--toy-level applies to --backend toy only" in capsys.readouterr().err
