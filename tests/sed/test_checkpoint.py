"""Strict checkpoint loading: every mismatch is a clear error naming the keys."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from sed_trt.runtime.errors import CheckpointError
from sed_trt.sed import build_sed
from sed_trt.sed.checkpoint import load_sed_checkpoint, text_tower_fingerprint, to_official_state_dict


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_sed("sed_tiny_linear")


def test_roundtrip_official_layout_and_bare_dict(tiny, tmp_path):
    sd = to_official_state_dict(tiny)
    torch.save({"model": sd, "iteration": 3}, tmp_path / "wrapped.pth")
    torch.save(sd, tmp_path / "bare.pth")
    for name in ("wrapped.pth", "bare.pth"):
        other = build_sed("sed_tiny_linear")
        load_sed_checkpoint(other, tmp_path / name)
        assert text_tower_fingerprint(other) == text_tower_fingerprint(tiny)
        assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), tiny.state_dict().values()))


def test_missing_file_says_where_official_weights_are(tiny, tmp_path):
    with pytest.raises(CheckpointError, match="github.com/xb534/SED"):
        load_sed_checkpoint(tiny, tmp_path / "nope.pth")


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda sd: sd.pop("sem_seg_head.predictor.transformer.head.bias"), "missing keys: transformer.head.bias"),
        (
            lambda sd: sd.__setitem__("sem_seg_head.predictor.transformer.extra", torch.zeros(1)),
            "unexpected keys: transformer.extra",
        ),
        (
            lambda sd: sd.__setitem__("sem_seg_head.predictor.transformer.head.bias", torch.zeros(2)),
            "shape mismatches: transformer.head.bias",
        ),
    ],
)
def test_mismatch_is_an_error_naming_keys(tiny, tmp_path, edit, message):
    sd = to_official_state_dict(tiny)
    edit(sd)
    torch.save({"model": sd}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=message.replace(".", r"\.")):
        load_sed_checkpoint(build_sed("sed_tiny_linear"), tmp_path / "bad.pth")


def test_wrong_backbone_and_garbage(tmp_path):
    torch.save({"model": to_official_state_dict(build_sed("sed_tiny_mlp"))}, tmp_path / "mlp.pth")
    with pytest.raises(CheckpointError, match="unexpected keys: clip_model.visual.head.mlp"):
        load_sed_checkpoint(build_sed("sed_tiny_linear"), tmp_path / "mlp.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read SED checkpoint"):
        load_sed_checkpoint(build_sed("sed_tiny_linear"), tmp_path / "junk.pth")


def test_sed_imports_without_export_backends():
    code = (
        "import sys\n"
        "for name in ('onnx', 'onnxruntime', 'tensorrt', 'onnxscript', 'sed_trt.export'):\n"
        "    sys.modules[name] = None  # makes 'import name' fail as if not installed\n"
        "import sed_trt.sed.backend, sed_trt.runtime.predictor, sed_trt.runtime.backends.onnxruntime_backend\n"
        "from sed_trt.sed import build_sed\n"
        "m = build_sed('sed_tiny_linear')\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]
