"""The sed-trt command: outputs as documented, and one-line errors with a non-zero exit."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sed_trt.cli import main
from sed_trt.runtime.io_spec import GRAPH_NAMES
from tests.parity import trim

pytestmark = pytest.mark.parity


def _predict_args(parity_dir, *extra):
    return [
        "predict",
        "--backbone",
        str(parity_dir / "cfg" / "sed_tiny_linear.json"),
        "--weights",
        str(parity_dir / "checkpoint.pth"),
        "--image",
        str(parity_dir / "image.png"),
        "--no-cache",
        "--quiet",
        *extra,
    ]


def test_predict_writes_overlay_and_npz(parity_dir, parity, tmp_path, capsys):
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps(parity["classes"]))
    rc = main(
        _predict_args(
            parity_dir,
            "--classes",
            str(classes),
            "--topk",
            "2",
            "--out",
            str(tmp_path / "seg.png"),
            "--save-npz",
            str(tmp_path / "out.npz"),
        )
    )
    assert rc == 0
    data = np.load(tmp_path / "out.npz")
    exp = parity["expected"]
    assert data["probs"].dtype == np.float32 and data["probs"].shape == (24, 192, 192)
    assert data["labels"].dtype == np.int32 and data["labels"].shape == (427, 640)
    np.testing.assert_array_equal(data["kept"], exp["cer_k2_kept"])
    np.testing.assert_allclose(trim("cer_k2_probs", data["probs"]), exp["cer_k2_probs"], atol=1e-4)
    assert (data["labels"] == exp["cer_k2_labels"]).mean() >= 0.999
    vis = Image.open(tmp_path / "seg.png")
    assert vis.size[0] > 640 and vis.size[1] >= 427  # image plus legend panel
    assert "kept 8" in capsys.readouterr().out


def test_predict_onnxruntime_backend(parity_dir, parity_engine_dir, tmp_path):
    rc = main(
        _predict_args(
            parity_dir,
            "--classes",
            "sky; tree; road, route",
            "--backend",
            "onnxruntime",
            "--engine-dir",
            str(parity_engine_dir),
            "--save-npz",
            str(tmp_path / "o.npz"),
        )
    )
    assert rc == 0
    assert np.load(tmp_path / "o.npz")["probs"].shape == (3, 192, 192)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--classes", " , "], "empty class names"),
        (["--classes", "cat,dog,cat"], "duplicate class names"),
        (["--classes", "cat", "--out", "/no/such/dir/x.png"], "does not exist"),
        (["--classes", "cat", "--backend", "onnxruntime"], "--engine-dir is required"),
        (
            ["--classes", "cat", "--pooling", "2", "--backend", "onnxruntime", "--engine-dir", "/no/such"],
            "does not exist",
        ),
    ],
)
def test_predict_bad_input_is_one_line(parity_dir, capsys, extra, message):
    assert main(_predict_args(parity_dir, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("sed-trt: error:")


def test_bad_image_backbone_and_checkpoint(parity_dir, tmp_path, capsys):
    Image.new("L", (4, 4)).save(tmp_path / "gray.png")
    base = ["predict", "--classes", "cat", "--no-cache", "--quiet"]
    cases = [
        (base + ["--backbone", "sed_tiny_linear", "--image", str(tmp_path / "gray.png")], "expected an RGB image"),
        (base + ["--backbone", "resnet_9000", "--image", str(parity_dir / "image.png")], "unknown model 'resnet_9000'"),
        (
            base
            + [
                "--backbone",
                "sed_tiny_mlp",
                "--weights",
                str(parity_dir / "checkpoint.pth"),
                "--image",
                str(parity_dir / "image.png"),
            ],
            "does not match the model",
        ),
        (
            base
            + [
                "--backbone",
                "sed_tiny_linear",
                "--weights",
                str(tmp_path / "none.pth"),
                "--image",
                str(parity_dir / "image.png"),
            ],
            "github.com/xb534/SED",
        ),
    ]
    for args, message in cases:
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    with pytest.raises(SystemExit) as exc:
        main(base + ["--backbone", "sed_tiny_linear", "--image", "x.png", "--topk", "0"])
    assert exc.value.code == 2


def test_train_and_eval_bad_input_is_one_line(tmp_path, capsys):
    from tests.synthetic import write_split

    write_split(tmp_path / "mine", "im", "lab", 2, seed=0)
    (tmp_path / "empty").mkdir()
    tiny = ["--backbone", "sed_tiny_linear", "--image-size", "64"]
    cases = [
        (
            ["eval", *tiny, "--dataset", "ade150", "--data-root", str(tmp_path / "none")],
            "does not exist; set --data-root",
        ),
        (["eval", *tiny], "needs --images, --labels and --classes"),
        (["eval", *tiny, "--dataset", "kitti"], "unknown dataset 'kitti'"),
        (
            [
                "eval",
                *tiny,
                "--images",
                str(tmp_path / "mine" / "im"),
                "--labels",
                str(tmp_path / "empty"),
                "--classes",
                "a,b,c,d",
            ],
            "no .png label files",
        ),
        (
            [
                "eval",
                *tiny,
                "--images",
                str(tmp_path / "mine" / "im"),
                "--labels",
                str(tmp_path / "mine" / "lab"),
                "--classes",
                "a,b,c,d",
                "--out-json",
                "/no/such/dir/x.json",
            ],
            "does not exist",
        ),
        (
            ["train", *tiny, "--out-dir", str(tmp_path / "run"), "--data-root", str(tmp_path / "none")],
            "does not exist; set --data-root",
        ),
        (
            [
                "train",
                "--backbone",
                "sed_tiny_linear",
                "--image-size",
                "60",
                "--out-dir",
                str(tmp_path / "run"),
                "--images",
                str(tmp_path / "mine" / "im"),
                "--labels",
                str(tmp_path / "mine" / "lab"),
                "--classes",
                "a,b,c,d",
            ],
            "multiple of 32",
        ),
        (
            [
                "train",
                *tiny,
                "--weights",
                str(tmp_path / "none.pth"),
                "--out-dir",
                str(tmp_path / "run"),
                "--images",
                str(tmp_path / "mine" / "im"),
                "--labels",
                str(tmp_path / "mine" / "lab"),
                "--classes",
                "a,b,c,d",
            ],
            "github.com/xb534/SED",
        ),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (args, err)


def test_doctor_reports_each_component_and_gpu_mode_fails_in_one_line(parity_engine_dir, capsys):
    from sed_trt.export.trt_build import tensorrt_unavailable_reason

    assert main(["doctor", "--engine-dir", str(parity_engine_dir)]) == 0
    out = capsys.readouterr().out
    assert "ok  backend onnxruntime" in out and f"engine directory {parity_engine_dir}" in out
    assert "usable backends: onnxruntime, openvino, torch" in out
    assert f"{len(GRAPH_NAMES)} graphs verified" in out
    if tensorrt_unavailable_reason() is None:
        pytest.skip("TensorRT and a GPU are present: --gpu passes here")
    assert main(["doctor", "--gpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sed-trt: error: TensorRT cannot run here:")


def test_doctor_checks_engines_against_this_tensorrt_and_gpu(parity_engine_dir, tmp_path):
    import shutil

    from sed_trt.cli.doctor import _engines
    from sed_trt.runtime.errors import ConfigError
    from sed_trt.runtime.fsutil import file_sha256
    from sed_trt.runtime.manifest import EngineEntry, Manifest

    work = tmp_path / "engines"
    shutil.copytree(parity_engine_dir, work)
    manifest = Manifest.load(work)
    (work / "e.plan").write_bytes(b"plan")
    manifest.engines["image_encoder"] = EngineEntry(
        "e.plan", "fp32", "10.16.0", "GPU", "9.0", sha256=file_sha256(work / "e.plan")
    )
    manifest.save(work)
    assert "1 engines verified" in _engines(str(work), {"tensorrt": "10.16.0", "capability": "9.0"})
    with pytest.raises(ConfigError, match="compute capability \\['9.0'\\], this GPU is 8.6"):
        _engines(str(work), {"tensorrt": "10.16.0", "capability": "8.6"})
    with pytest.raises(ConfigError, match="TensorRT \\['10.16.0'\\], this is 11.4.0"):
        _engines(str(work), {"tensorrt": "11.4.0"})


def test_the_backend_follows_what_was_given_and_flags_are_given_once(parity_dir, parity_engine_dir, tmp_path, capsys):
    """An engine directory opens in ONNX Runtime without --backend (not 'needs --backbone');
    a single-value flag given twice is refused (it used to keep the last silently)."""
    image = str(parity_dir / "image.png")
    args = ["predict", "--engine-dir", str(parity_engine_dir), "--image", image, "--classes", "sky,tree", "--quiet"]
    assert main([*args, "--save-npz", str(tmp_path / "o.npz")]) == 0
    assert (tmp_path / "o.npz").is_file() and "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main([*args, "--image", image])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.endswith("--image given more than once (see sed-trt predict --help)"), err
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("sed-trt ")


def test_debug_variable_off_values_keep_the_one_line(monkeypatch):
    from sed_trt.cli import debug_requested

    for value, on in (("", False), ("0", False), ("false", False), ("off", False), ("1", True), ("yes", True)):
        monkeypatch.setenv("SED_TRT_DEBUG", value)
        assert debug_requested() is on, value
