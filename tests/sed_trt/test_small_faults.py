"""The third hostile-input battery's small items, each a typed one-line refusal or a right answer."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import sed_trt
from sed_trt.runtime.errors import ConfigError, ImageError


def test_server_urls_are_checked_in_one_line():
    from sed_trt.serve.client import parse_url

    assert parse_url("localhost:8000") == ("http", "localhost:8000")
    assert parse_url("grpc://10.0.0.1:8001") == ("grpc", "10.0.0.1:8001")
    assert parse_url("http://[::1]:8000/") == ("http", "[::1]:8000")
    for bad in ("localhost:abc", "https://host:1", "localhost", "host:99999", "host:8000/v2"):
        with pytest.raises(ConfigError, match="--url"):
            parse_url(bad)


def test_gpu_lists_and_printable_names():
    from sed_trt.cli.serve import parse_gpus
    from sed_trt.runtime.vocab import printable

    assert parse_gpus("0,1") == (0, 1) and parse_gpus(None) == ()
    with pytest.raises(ConfigError, match="--gpus 'a,b'"):
        parse_gpus("a,b")
    assert printable("sky\x1b[2J\nsed-trt: error: x") == "sky\\x1b[2J\\nsed-trt: error: x"


def test_pil_images_and_overlays_of_another_size_are_image_errors(tmp_path):
    from sed_trt.api import Segmentation, read_image

    path = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    closed = Image.open(path)
    closed.close()
    with pytest.raises(ImageError, match="cannot read the PIL image"):
        read_image(closed)
    result = Segmentation(labels=np.zeros((8, 8), np.uint8), classes=("sky",), kept=np.ones(1, bool))
    with pytest.raises(ImageError, match="expected the segmented image's 8x8"):
        result.overlay(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ImageError, match="above the limit"):
        read_image(np.zeros((20, 20, 3), np.uint8), max_pixels=100)


def test_a_multi_page_tiff_is_read_at_its_largest_page(tmp_path):
    from sed_trt.runtime.image import load_image

    thumb = Image.fromarray(np.full((8, 10, 3), 50, np.uint8))
    full = Image.fromarray(np.full((40, 60, 3), 200, np.uint8))
    thumb.save(tmp_path / "pages.tif", save_all=True, append_images=[full])
    assert load_image(tmp_path / "pages.tif").shape == (40, 60, 3)


def test_each_instance_counts_in_flight_through_its_own_file(tmp_path, monkeypatch):
    from sed_trt.serve.triton_model import STATE_DIR_ENV, InFlight

    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path))
    counter = InFlight()
    with counter:
        assert counter.path is not None and counter.path.read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == [counter.path.name]  # no shared inflight.tmp left


def test_topk_beyond_the_cer_bound_and_errors_are_importable():
    from sed_trt.runtime.cer import MAX_CER_TOPK, check_topk

    check_topk(MAX_CER_TOPK)
    with pytest.raises(ConfigError, match="k from 1 to"):
        check_topk(MAX_CER_TOPK + 1)
    assert issubclass(sed_trt.WriteError, sed_trt.SedTrtError)


def test_export_into_a_linked_engine_directory_writes_the_target(small_engine_dir, tmp_path, capsys, monkeypatch):
    """`current -> v2`: an export to `current` re-exports v2 in place and keeps the link (release
    0.2 replaced the link, moved the user's files out of v2 and left a hidden .current.old-*).
    The graphs themselves are the small export's, copied into the staging directory: the directory
    handling (link, staging, swap) is what runs here; writing graphs is tested elsewhere."""
    import shutil

    import sed_trt.export.onnx_export as onnx_export
    from sed_trt.cli import main
    from sed_trt.runtime.manifest import Manifest
    from tests.checks import tiny_export

    def graphs_from_the_small_export(model, out, **kwargs):
        for f in small_engine_dir.iterdir():
            shutil.copyfile(f, out / f.name)
        return Manifest.load(out)

    monkeypatch.setattr(onnx_export, "_export_into", graphs_from_the_small_export)

    v2 = tmp_path / "v2"
    shutil.copytree(small_engine_dir, v2)
    (v2 / "notes.txt").write_text("mine")
    before = (v2 / "manifest.json").stat().st_mtime_ns
    (tmp_path / "current").symlink_to("v2")
    assert main(tiny_export(tmp_path / "current", "--no-validate", "--quiet")) == 0
    capsys.readouterr()
    assert (tmp_path / "current").is_symlink() and (tmp_path / "current").resolve() == v2.resolve()
    assert (v2 / "notes.txt").read_text() == "mine" and (v2 / "manifest.json").is_file()
    assert (v2 / "manifest.json").stat().st_mtime_ns > before and Manifest.load(v2).dims.image_size == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "v2"]  # no hidden staging or .old-* left


def test_export_refuses_an_opset_it_cannot_write(tmp_path, capsys):
    """--opset 17 is refused before any work (torch's exporter writes 18 and later; release 0.2
    wrote opset 18 under a manifest saying 17, with three tracebacks)."""
    from sed_trt.cli import main
    from tests.checks import tiny_export

    with pytest.raises(SystemExit) as exit_:
        main(tiny_export(tmp_path / "e", "--opset", "17", "--quiet"))
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--opset" in err[0] and "17" in err[0] and "Traceback" not in err[0], err
    assert not (tmp_path / "e").exists()


def test_numba_that_cannot_start_is_one_line(parity_dir, parity_engine_dir):
    """NUMBA_NUM_THREADS=0 makes numba refuse to import: predict says so in one line, exit 2."""
    import os
    import subprocess
    import sys

    from tests.checks import onnxruntime_predict

    args = [*onnxruntime_predict(parity_engine_dir, parity_dir / "image.png"), "--classes", "sky; tree", "--quiet"]
    env = {**os.environ, "NUMBA_NUM_THREADS": "0"}
    out = subprocess.run([sys.executable, "-m", "sed_trt", *args], capture_output=True, text=True, env=env)
    err = [ln for ln in out.stderr.strip().splitlines() if "WARNING" not in ln]
    assert out.returncode == 2 and len(err) == 1 and "numba cannot start" in err[0], out.stderr[-2000:]


def test_an_empty_parity_dir_variable_means_the_bundled_vector():
    """SED_PARITY_DIR= (empty) is the default vector, not the current directory."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = "import tests.conftest as c; print(c.PARITY)"
    env = {**os.environ, "SED_PARITY_DIR": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-1000:]
    assert out.stdout.strip() == str(ROOT / "tests" / "data" / "parity" / "sed_tiny_linear")


def test_the_next_server_sweeps_only_dead_servers_files(tmp_path):
    """What a killed `sed-trt serve` leaves (its state directory, the Python backend's shared-memory
    regions, both named after its pid) is removed by the next one; a live process's never is.
    (With a real server killed by SIGKILL: tests/sed_trt/test_serve.py, slow.)"""
    import os
    import subprocess
    import sys

    from sed_trt.serve.server import SHM_PREFIX, STATE_PREFIX, sweep_stale

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited
    temp, shm = tmp_path / "tmp", tmp_path / "shm"
    temp.mkdir()
    shm.mkdir()
    (temp / f"{STATE_PREFIX}{pid}-abc" / "backends").mkdir(parents=True)
    (temp / f"{STATE_PREFIX}{os.getpid()}-live").mkdir()
    (temp / f"{STATE_PREFIX}x-odd").mkdir()  # not a pid: left alone
    (shm / f"{SHM_PREFIX}{pid}-region").write_bytes(b"x")
    (shm / f"{SHM_PREFIX}{os.getpid()}-region").write_bytes(b"x")
    removed = sweep_stale(temp, shm)
    assert sorted(p.name for p in removed) == sorted([f"{STATE_PREFIX}{pid}-abc", f"{SHM_PREFIX}{pid}-region"])
    assert sorted(p.name for p in temp.iterdir()) == [f"{STATE_PREFIX}{os.getpid()}-live", f"{STATE_PREFIX}x-odd"]
    assert [p.name for p in shm.iterdir()] == [f"{SHM_PREFIX}{os.getpid()}-region"]
