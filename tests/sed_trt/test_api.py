"""The Python API: one call, a loaded Segmenter, typed results and typed one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import sed_trt
from sed_trt import ConfigError, ImageError, StateError, VocabularyError
from tests.parity import trim

pytestmark = pytest.mark.parity


def test_one_call_reproduces_the_official_labels(parity_dir, parity_engine_dir, parity, parity_image):
    result = sed_trt.segment(parity_dir / "image.png", parity["classes"], engine_dir=parity_engine_dir)
    assert isinstance(result, sed_trt.Segmentation) and result.classes == tuple(parity["classes"])
    assert (result.labels == parity["expected"]["labels_pool1"]).mean() >= 0.999
    assert result.probs is None and result.kept.all() and result.timings["total_ms"] > 0
    areas = result.areas()
    assert abs(sum(areas.values()) - 1) < 1e-9 and list(areas.values()) == sorted(areas.values(), reverse=True)
    name = parity["classes"][int(result.labels[200, 300])]
    assert result.mask(name)[200, 300] and result.mask(name).sum() == (result.labels == result.labels[200, 300]).sum()
    vis = result.overlay(parity_image)  # the photo in class colours, a legend beside it
    assert vis.dtype == np.uint8 and vis.shape[0] >= 427 and vis.shape[1] > 640 and vis.shape[2] == 3


def test_segmenter_keeps_the_model_for_many_images(parity_dir, parity, parity_image):
    weights = parity_dir / "checkpoint.pth"
    backbone = str(parity_dir / "cfg" / "sed_tiny_linear.json")
    with sed_trt.Segmenter.from_checkpoint(weights, backbone=backbone, topk=2) as seg:
        seg.set_vocabulary(parity["classes"])
        first = seg.segment(parity_image, probs=True)  # an array
        again = seg.segment(Image.fromarray(parity_image), topk=8)  # a PIL image, another k for this image
        assert seg.backend.active
    assert not seg.backend.active
    exp = parity["expected"]
    np.testing.assert_array_equal(first.kept, exp["cer_k2_kept"])
    np.testing.assert_allclose(trim("cer_k2_probs", first.probs), exp["cer_k2_probs"], atol=1e-4)
    np.testing.assert_array_equal(again.kept, exp["cer_k8_kept"])


def test_errors_are_typed_and_one_line(parity_engine_dir, parity_image):
    seg = sed_trt.Segmenter.from_engine_dir(parity_engine_dir)
    with pytest.raises(StateError, match="no vocabulary"):
        seg.segment(parity_image)
    with pytest.raises(ImageError, match="expected a file path, a PIL image"):
        seg.segment([[1, 2]], ["sky"])
    with pytest.raises(ImageError, match="mode 'L'"):
        seg.segment(Image.new("L", (8, 8)), ["sky"])
    with pytest.raises(VocabularyError):
        seg.segment(parity_image, ["sky", "sky"])
    result = seg.segment(parity_image[:64, :64], ["sky", "tree"])
    with pytest.raises(VocabularyError, match="'road' is not in this result's vocabulary"):
        result.mask("road")
    with pytest.raises(ConfigError, match="unknown backend 'nope'"):
        sed_trt.Segmenter.from_engine_dir(parity_engine_dir, backend="nope")
    with pytest.raises(ConfigError, match="--precision bf16 does not apply to --backend onnxruntime"):
        sed_trt.Segmenter.from_engine_dir(parity_engine_dir, precision="bf16")
    with pytest.raises(ConfigError, match="runs exported graphs"):
        sed_trt.segment(parity_image, ["sky"], backend="openvino")
    seg.close()


def test_areas_names_open_masks_and_every_error_type_imports(parity_engine_dir, parity_image):
    """areas() names a class by its display name ("road" for "road, street"); mask() takes it."""
    result = sed_trt.segment(parity_image[:96, :96], ["sky", "road, street", "tree"], engine_dir=parity_engine_dir)
    for name in result.areas():
        assert result.mask(name).any()
    assert result.index("road") == result.index("road, street") == 1
    for name in sed_trt.__all__:  # every error type the library raises is importable from sed_trt
        assert getattr(sed_trt, name) is not None
    assert issubclass(sed_trt.CheckpointError, sed_trt.SedTrtError)


def test_checkpoint_failures_are_immediate_and_values_are_checked(parity_engine_dir, parity_image, tmp_path):
    """A missing checkpoint fails in from_checkpoint (not at the first image), before torch loads;
    topk as a string and an empty vocabulary are typed errors, not coerced or accepted."""
    with pytest.raises(sed_trt.CheckpointError, match="does not exist"):
        sed_trt.Segmenter.from_checkpoint(tmp_path / "missing.pth", backbone="sed_tiny_linear")
    with pytest.raises(ConfigError, match="topk"):
        sed_trt.Segmenter.from_engine_dir(parity_engine_dir, topk="8")  # type: ignore[arg-type]
    with sed_trt.Segmenter.from_engine_dir(parity_engine_dir) as seg:
        with pytest.raises(VocabularyError, match="empty"):
            seg.set_vocabulary([])
        with pytest.raises(ConfigError, match="topk"):
            seg.segment(parity_image[:64, :64], ["sky"], topk=2.5)  # type: ignore[arg-type]


def test_a_segmenter_shared_by_threads_answers_each_as_alone(parity_engine_dir, parity_image):
    """8 threads on one Segmenter, each with its own vocabulary: every answer equals the one the
    thread gets alone (labels and classes), none carries another thread's vocabulary."""
    import concurrent.futures

    words = ["sky", "tree", "road", "person", "car", "grass", "wall", "water", "building", "dog"]
    vocabularies = [words[i : i + 2 + i % 3] for i in range(8)]
    image = parity_image[:128, :160]
    with sed_trt.Segmenter.from_engine_dir(parity_engine_dir, topk=2) as seg:
        alone = [seg.segment(image, v) for v in vocabularies]

        def ask(i: int) -> list[sed_trt.Segmentation]:
            return [seg.segment(image, vocabularies[i]) for _ in range(3)]

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(8)))
    for i, runs in enumerate(answers):
        for got in runs:
            assert got.classes == tuple(vocabularies[i])
            np.testing.assert_array_equal(got.labels, alone[i].labels)
            np.testing.assert_array_equal(got.kept, alone[i].kept)


def test_one_deployment_opens_through_every_front_door(trained_run, tmp_path):
    """An engine directory exported with --pooling 2 opens from the Python API (engine dir and
    deployment), the CLI and the Triton model's settings, with the export's pooling."""
    from sed_trt.cli import main
    from sed_trt.runtime.deployment import Deployment
    from sed_trt.runtime.manifest import Manifest
    from sed_trt.serve.triton_model import open_service

    engines = trained_run.engines
    assert Manifest.load(engines).pooling == 2
    image = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    with sed_trt.Segmenter.from_engine_dir(engines) as seg:
        want = seg.segment(image, ["sky", "tree", "road"])
        assert seg.backend.pooling == 2
    deployment = Deployment(engine_dir=str(engines), cache="off")
    with sed_trt.Segmenter.from_deployment(deployment.to_json()) as seg:
        np.testing.assert_array_equal(seg.segment(image, ["sky", "tree", "road"]).labels, want.labels)
    Image.fromarray(image).save(tmp_path / "x.png")
    args = ["predict", "--engine-dir", str(engines), "--image", str(tmp_path / "x.png"), "--classes", "sky,tree,road"]
    assert main([*args, "--save-npz", str(tmp_path / "x.npz"), "--quiet"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "x.npz")["labels"], want.labels)
    service = open_service(deployment.to_dict(), "cpu")
    assert service.predictor.backend.pooling == 2
    with pytest.raises(ConfigError, match="exported with --pooling 2"):
        Deployment(engine_dir=str(engines), pooling=1).open_backend()
