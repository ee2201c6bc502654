"""Shared fixtures: the official parity vectors, tiny models, and exported engine directories."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

if TYPE_CHECKING:
    from tests.training_run import TrainedRun

ROOT = Path(__file__).resolve().parents[1]
# The official outputs of the tiny model: the trimmed copy in the repository (tests/parity.py),
# or a full vector directory such as ../shared/parity/sed_tiny_linear.
PARITY = Path(
    os.environ.get("SED_PARITY_DIR") or ROOT / "tests" / "data" / "parity" / "sed_tiny_linear"
)  # empty: unset


# Where a test session may write besides its tmp_path: a fake HOME (OpenVINO's ~/intel, ONNX
# Runtime's files, anything keyed on ~), sed-trt's cache (text features, numba kernels, OpenVINO
# blobs) and a private temporary directory (servers' state folders), all under the session's
# temporary root. Set for this process and inherited by every subprocess a test starts.
HERMETIC_VARS = ("HOME", "XDG_CACHE_HOME", "SED_TRT_CACHE", "TMPDIR", "NUMBA_CACHE_DIR")


@pytest.fixture(scope="session", autouse=True)
def hermetic_environment(tmp_path_factory: pytest.TempPathFactory):
    """No test touches the user's home, caches or the machine's shared /tmp (another sed-trt
    server on the machine cannot disturb a test, nor a test it)."""
    root = tmp_path_factory.mktemp("env")
    paths = {"HOME": root / "home", "XDG_CACHE_HOME": root / "home" / ".cache", "SED_TRT_CACHE": root / "cache"}
    paths["TMPDIR"] = root / "tmp"
    saved = {name: os.environ.get(name) for name in HERMETIC_VARS}
    for name, path in paths.items():
        path.mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(path)
    os.environ.pop("NUMBA_CACHE_DIR", None)  # numba's kernels go to SED_TRT_CACHE/numba
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again
    yield paths
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    tempfile.tempdir = None


@pytest.fixture(scope="session")
def parity_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The vector as files the commands read: image.png, meta.json, cfg/ and checkpoint.pth."""
    from tests.parity import write_checkpoint

    if not (PARITY / "expected.npz").is_file():
        raise FileNotFoundError(f"no parity vector at {PARITY} (SED_PARITY_DIR)")
    if (PARITY / "checkpoint.pth").is_file():
        return PARITY
    out = tmp_path_factory.mktemp("parity") / PARITY.name
    shutil.copytree(PARITY, out)
    write_checkpoint(PARITY, out / "checkpoint.pth")
    return out


@pytest.fixture(scope="session")
def parity(parity_dir: Path) -> dict:
    """meta, classes and the expected arrays (trimmed: compare ``tests.parity.trim(name, x)``)."""
    from tests.parity import load_expected

    meta = json.loads((parity_dir / "meta.json").read_text())
    return {"meta": meta, "classes": meta["classes"], "expected": load_expected(parity_dir)}


@pytest.fixture(scope="session")
def parity_model(parity_dir: Path):
    from sed_trt.sed import load_sed

    return load_sed(parity_dir / "cfg" / "sed_tiny_linear.json", parity_dir / "checkpoint.pth")


@pytest.fixture(scope="session")
def parity_image(parity_dir: Path) -> np.ndarray:
    from sed_trt.runtime.image import load_image

    return load_image(parity_dir / "image.png")


PARITY_CALIBRATION_PHOTOS = 6


@pytest.fixture(scope="session")
def parity_calibration_dir(tmp_path_factory: pytest.TempPathFactory, parity_dir: Path) -> Path:
    """Photos for int8 calibration, made from the parity image (tests.synthetic)."""
    from sed_trt.runtime.image import load_image
    from tests.synthetic import write_calibration_photos

    out = tmp_path_factory.mktemp("calibration")
    return write_calibration_photos(load_image(parity_dir / "image.png"), out, PARITY_CALIBRATION_PHOTOS)


@pytest.fixture(scope="session")
def parity_engine_dir(
    tmp_path_factory: pytest.TempPathFactory, parity_dir: Path, parity_model, parity_calibration_dir: Path
) -> Path:
    """The parity model exported to ONNX (768 input, like the real models), with fp16 and int8 graphs."""
    from sed_trt.export.onnx_export import run_export
    from sed_trt.export.qdq import QuantRequest
    from sed_trt.runtime.io_spec import ExportLimits

    out = tmp_path_factory.mktemp("engine_parity")
    run_export(
        parity_model,
        out,
        backbone="sed_tiny_linear",
        weights=parity_dir / "checkpoint.pth",
        limits=ExportLimits(max_classes=64, class_chunk=4),
        fp16=True,  # the mixed-precision graphs too (fp16 TensorRT engines; their accuracy is tested)
        quant=QuantRequest(parity_calibration_dir, formats=("int8", "fp8")),
        progress=False,
    )
    return out


@pytest.fixture(scope="session")
def small_model():
    """sed_tiny_linear at a 64x64 canvas: decoder stages at 2/4/8/16 px, so large T stays cheap."""
    from sed_trt.sed import build_sed, load_config

    torch.manual_seed(0)
    cfg = dataclasses.replace(load_config("sed_tiny_linear"), image_size=64)
    return build_sed(cfg).eval()


@pytest.fixture(scope="session")
def small_engine_dir(tmp_path_factory: pytest.TempPathFactory, small_model) -> Path:
    from sed_trt.export.onnx_export import run_export
    from sed_trt.runtime.io_spec import ExportLimits

    out = tmp_path_factory.mktemp("engine_small")
    run_export(
        small_model,
        out,
        backbone="sed_tiny_linear",
        weights=None,
        limits=ExportLimits(max_classes=1000, max_batch=4),  # batches: the serving tests use it too
        validate=False,
        progress=False,
    )
    return out


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """`sed-trt train` for 20 steps on synthetic COCO-Stuff, exported with class-attention pooling 2
    (the training tests check the chain; the front-door tests open an export whose pooling is not
    the default)."""
    from tests.training_run import train_and_export

    return train_and_export(tmp_path_factory.mktemp("trained"), iters=20, n_train=8, pooling=2)


@pytest.fixture
def toy_backend(monkeypatch):
    """The toy backend plug-in (tests/toy_backend.py) registered for one test, as a user would register theirs."""
    from sed_trt.runtime.backends import registry
    from tests import toy_backend

    monkeypatch.setattr(registry, "_MODULES", dict(registry._MODULES))
    monkeypatch.setattr(registry, "_SPECS", dict(registry._SPECS))
    toy_backend.BUILT.clear()
    registry.register_backend("tests.toy_backend")
    return toy_backend
