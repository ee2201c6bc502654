"""The install: one import root, a torch-free base, a read-only install that runs.

The wheel is built from a copy of the source tree (no network: the build uses the setuptools of
the test environment); the torch-free run blocks torch, open_clip and onnx in a subprocess, as a
base install without the ``[torch]`` extra would lack them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.checks import onnxruntime_predict
from tests.conftest import ROOT

pytestmark = pytest.mark.parity

# What a base install lacks: the [torch] extra's packages.
TORCH_EXTRA = ("torch", "torchvision", "open_clip", "onnx", "onnxscript")
CLASSES = ["--classes", "sky,tree,road"]
BLOCK = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in TORCH_EXTRA)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src") / "sed-trt"
    ignore = shutil.ignore_patterns(".venv", ".git", "data", "__pycache__", "*.egg-info", "build", "results", "engines")
    shutil.copytree(ROOT, src, symlinks=True, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    (path,) = out.glob("sed_trt-*.whl")
    return path


def test_the_wheel_has_one_top_level_package_and_a_torch_free_base(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = next(z.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"sed_trt"}, top
    for sub in ("runtime", "sed", "export", "benchmarks"):
        assert f"sed_trt/{sub}/__init__.py" in names
    assert "sed_trt/runtime/vocabularies/ade150.json" in names and "sed_trt/sed/configs/convnext_b.json" in names
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    base = {
        r.split(";")[0].split(">")[0].split("=")[0].split("[")[0].strip().lower()
        for r in requires
        if "extra ==" not in r
    }
    assert base.isdisjoint({"torch", "open_clip_torch", "onnx", "onnxscript", "torchvision"}), base
    assert {"onnxruntime", "numpy", "numba", "pillow"} <= base
    assert "License-Expression: Apache-2.0" in meta


def test_a_script_beside_modules_named_like_the_layers_imports_sed_trt(tmp_path):
    """The user's own runtime.py / sed.py / export.py next to a script shadow nothing of ours."""
    for name in ("runtime", "sed", "export", "benchmarks"):
        (tmp_path / f"{name}.py").write_text("raise ImportError('the user module was imported')\n")
    (tmp_path / "script.py").write_text(
        "import sed_trt\nfrom sed_trt.runtime.vocab import load_vocabulary\n"
        "print(sed_trt.Segmenter.__name__, len(load_vocabulary('voc20')))\n"
    )
    res = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["Segmenter", "20"]


def test_predict_on_onnxruntime_runs_without_torch(parity_dir, parity_engine_dir, tmp_path):
    """What a base install (no [torch] extra) runs: predict, --version and doctor."""
    code = BLOCK + "from sed_trt.cli import main\nraise SystemExit(main(sys.argv[1:]))\n"
    out = tmp_path / "seg.npz"
    args = [*onnxruntime_predict(parity_engine_dir, parity_dir / "image.png"), *CLASSES, "--save-npz", str(out)]
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert out.is_file() and "torch" not in res.stderr
    res = subprocess.run([sys.executable, "-c", code, "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("sed-trt "), res.stderr
    # The torch backend without torch: one line that says how to install it.
    args = ["predict", "--backbone", "sed_tiny_linear", "--image", str(parity_dir / "image.png"), "--classes", "a,b"]
    res = subprocess.run([sys.executable, "-c", code, *args, "--out", str(tmp_path / "t.png")], capture_output=True)
    err = res.stderr.decode().strip()
    assert res.returncode == 2 and len(err.splitlines()) == 1 and "make install EXTRAS=torch" in err, err


def _can_mount_read_only() -> str | None:
    if not shutil.which("unshare"):
        return "no unshare(1)"
    res = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return None if res.returncode == 0 else "unshare -m is not permitted here (needs root or user namespaces)"


def test_predict_in_a_read_only_install_without_a_home(parity_dir, parity_engine_dir, tmp_path):
    """A service account: the package (this tree, the editable install) and the environment
    read-only, HOME pointing nowhere, no SED_TRT_CACHE. Predict succeeds twice, with at most
    one warning line (the cache), where numba's cache beside the code used to crash it."""
    why = _can_mount_read_only()
    if why:
        pytest.skip(why)
    prefix = Path(sys.prefix).resolve()
    mounts = " && ".join(
        f"mount --bind {p} {p} && mount -o remount,ro,bind {p}" for p in dict.fromkeys([ROOT.resolve(), prefix])
    )
    env = {k: v for k, v in os.environ.items() if k not in ("SED_TRT_CACHE", "XDG_CACHE_HOME", "NUMBA_CACHE_DIR")}
    env["HOME"] = "/nonexistent"
    for run in (1, 2):
        out = tmp_path / f"seg{run}.png"
        predict = [sys.executable, "-m", "sed_trt", *onnxruntime_predict(parity_engine_dir, parity_dir / "image.png")]
        predict += CLASSES
        script = f"{mounts} && touch {ROOT.resolve()}/.probe 2>/dev/null && exit 99; exec " + " ".join(
            f"'{a}'" for a in [*predict, "--out", str(out)]
        )
        res = subprocess.run(
            ["unshare", "-m", "sh", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True
        )
        assert res.returncode != 99, "the mount is not read-only"
        assert res.returncode == 0, res.stderr[-2000:]
        warnings = [line for line in res.stderr.splitlines() if "WARNING" in line]
        assert len(warnings) <= 1, warnings
        assert out.is_file()
