"""TensorRT builder (Polygraphy loaders) and the torch-free backend against a strict fake of TensorRT.

The fake runs on host memory (tests/fake_cuda.HostMemory behind the same DeviceMemory
interface as cuda-python), so every pointer, chunk offset and 2-D copy the backend computes
is exercised. Results are checked against the official parity vectors (the PyTorch
reference), not against the fake's own ONNX Runtime. Real-GPU tests: tests/test_gpu.py.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import threading
import traceback
from pathlib import Path

import numpy as np
import pytest

from sed_trt.export.trt_build import build_engine, build_engines, profile_shapes, timing_cache_name
from sed_trt.runtime.backends import create_backend
from sed_trt.runtime.backends.cuda_ops import CudaOps, DeviceArray
from sed_trt.runtime.errors import EngineError, ExportError, InputError
from sed_trt.runtime.image import canvas_positions
from sed_trt.runtime.io_spec import GRAPH_NAMES
from sed_trt.runtime.manifest import Manifest
from sed_trt.runtime.predictor import Predictor
from tests import fake_tensorrt
from tests.checks import check_device_copies, check_official
from tests.fake_cuda import HostMemory
from tests.parity import trim

pytestmark = pytest.mark.parity
GPU = ("Fake GPU", "9.0")


@pytest.fixture(params=["11.4.0.106", "10.16.0.72"], scope="module")
def trt(request):
    fake = fake_tensorrt.make(request.param)
    mp = pytest.MonkeyPatch()
    fake_tensorrt.install(fake, mp)
    yield fake
    mp.undo()
    fake_tensorrt.reset_polygraphy()


@pytest.fixture(scope="module")
def trt_dir(trt, parity_engine_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("trt") / "engines"
    shutil.copytree(parity_engine_dir, out)
    build_engines(out, trt=trt, gpu=GPU, progress=False)
    return out


def _once(trt):
    """CUDA-graph orchestration does not differ between TensorRT versions: test it against one."""
    if not trt.__version__.startswith("11"):
        pytest.skip("version-independent: runs once, against the TensorRT 11 fake")


def _engines_at(trt_dir, trt, precision, tmp_path):
    """A copy of the fp32 engine directory rebuilt with ``build-engines --precision``, and its manifest."""
    work = tmp_path / precision
    shutil.copytree(trt_dir, work)
    build_engines(work, precision=precision, trt=trt, gpu=GPU, progress=False)
    return work, Manifest.load(work)


def _backend(trt_dir, trt, memory=None, **kwargs):
    memory = memory or HostMemory()
    fake_tensorrt.use_memory(trt, memory)
    return create_backend("tensorrt", engine_dir=trt_dir, trt_module=trt, memory=memory, **kwargs)


def test_polygraphy_build_is_strongly_typed_without_tf32_with_chunk_profiles(trt, trt_dir):
    manifest = Manifest.load(trt_dir)
    assert set(manifest.engines) == set(GRAPH_NAMES)
    creates = [c[1] for c in trt.CALLS if c[0] == "create_network"]
    assert creates and all(f == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) for f in creates)
    assert all("TF32" not in c[2] for c in trt.CALLS if c[0] == "build_flags")
    builds = {c[1].split("/")[-1]: c[2] for c in trt.CALLS if c[0] == "build"}
    chunk = manifest.limits.class_chunk
    lo, opt, hi = builds["decoder_stage1_summaries.onnx"]["features"]
    assert (lo[1], opt[1], hi[1]) == (1, chunk, chunk)  # N: 1..class_chunk, tuned for a full chunk
    for name, spec in manifest.specs.items():
        assert manifest.engines[name].profiles == {
            inp: [list(s) for s in triple] for inp, triple in profile_shapes(spec, manifest.limits).items()
        }
    entry = manifest.engines["decoder_stage0"]
    assert (entry.tensorrt_version, entry.compute_capability, entry.precision) == (trt.__version__, "9.0", "fp32")
    cache = json.loads((trt_dir / timing_cache_name(trt.__version__, "9.0")).read_bytes())
    assert cache["trt"] == trt.__version__ and cache["entries"] == len(GRAPH_NAMES)  # one cache carried through


def test_refused_timing_cache_is_replaced_and_tf32_is_opt_in(trt, trt_dir, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("sed_trt"), "propagate", True)  # the CLI's handler stops it
    manifest = Manifest.load(trt_dir)
    spec = manifest.specs["decoder_stage0"]
    foreign = json.dumps({"trt": "9.0.0", "gpu": "Other GPU", "entries": 5}).encode()
    _, cache = build_engine(trt_dir / "decoder_stage0.onnx", spec, manifest.limits, timing_cache=foreign, trt=trt)
    assert "another GPU or TensorRT version" in caplog.text
    assert cache is not None and json.loads(cache)["trt"] == trt.__version__
    build_engine(trt_dir / "decoder_stage0.onnx", spec, manifest.limits, tf32=True, trt=trt)
    assert "TF32" in [c[2] for c in trt.CALLS if c[0] == "build_flags"][-1]


def test_build_failures_are_one_line_export_errors(trt, trt_dir, monkeypatch):
    manifest = Manifest.load(trt_dir)
    spec = manifest.specs["decoder_stage0"]
    monkeypatch.setattr(trt, "FAIL", {"build"})
    with pytest.raises(ExportError, match="could not build decoder_stage0.onnx"):
        build_engine(trt_dir / "decoder_stage0.onnx", spec, manifest.limits, trt=trt)
    monkeypatch.setattr(trt, "FAIL", set())
    with pytest.raises(ExportError, match="inputs"):  # a graph that is not the spec's
        build_engine(trt_dir / "text_encoder.onnx", spec, manifest.limits, trt=trt)
    with pytest.raises(ExportError, match="could not build"):
        build_engine(trt_dir / "missing.onnx", spec, manifest.limits, trt=trt)


@pytest.mark.parametrize("topk", [None, 2])
def test_backend_reproduces_the_official_outputs(trt, trt_dir, parity, parity_image, topk):
    memory = HostMemory()
    backend = _backend(trt_dir, trt, memory).activate()
    pred = Predictor(backend, topk=topk)
    pred.set_classes(parity["classes"])
    memory.downloads.clear()
    out = pred.predict(parity_image)
    # Only what the caller gets crosses to the host: CER's (T',) keep masks and the label map.
    masks = [] if topk is None else [4 * len(parity["classes"]), *(4 * n for n in out.survivors[:2])]
    assert memory.downloads == [*masks, 4 * parity_image.shape[0] * parity_image.shape[1]]
    check_official(out, parity, topk)
    assert out.survivors == [24, 24, 24] if topk is None else min(out.survivors) < len(parity["classes"])
    executes = [c for c in trt.CALLS if c[0] == "execute"]
    assert executes and all(stream == memory.stream_handle for *_, stream in executes)
    contexts = [c[1] for c in trt.CALLS if c[0] == "context"]
    assert contexts[-len(GRAPH_NAMES) :] == ["USER_MANAGED"] * len(GRAPH_NAMES)  # one shared block
    ctx = backend._contexts["decoder_stage3_fuse"]
    assert ctx.device_memory == backend._contexts["image_encoder"].device_memory
    backend.deactivate()
    del pred, backend, out
    gc.collect()
    assert memory.live_bytes == 0, "device buffers leaked"


def test_chunks_and_threads_agree(trt, trt_dir, parity, parity_image):
    _once(trt)  # the backend's runtime path does not differ between TensorRT versions
    backend = _backend(trt_dir, trt).activate()
    results, errors = {}, {}

    def run(chunk):
        try:
            pred = Predictor(backend, topk=2, class_chunk=chunk)
            pred.set_classes(parity["classes"])
            results[chunk] = pred.predict(parity_image)
        except Exception:  # a thread's exception is otherwise lost: the failure must name it
            errors[chunk] = traceback.format_exc()

    threads = [threading.Thread(target=run, args=(c,)) for c in (1, 3, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, "\n".join(f"chunk {c}:\n{tb}" for c, tb in errors.items())
    for chunk in (1, 3):
        np.testing.assert_allclose(results[chunk].probs, results[4].probs, atol=1e-5)
        np.testing.assert_array_equal(results[chunk].kept, results[4].kept)


def test_backend_refuses_mismatches(trt, trt_dir, parity, tmp_path):
    with pytest.raises(EngineError, match="no TensorRT engines"):
        create_backend("tensorrt", engine_dir=_edited(trt_dir, tmp_path / "plain", lambda m: m.engines.clear()))

    def old(m):
        m.engines["decoder_stage1_fuse"].tensorrt_version = "10.0.0"

    with pytest.raises(EngineError, match="built with TensorRT 10.0.0"):
        _backend(_edited(trt_dir, tmp_path / "old", old), trt).activate()
    with pytest.raises(EngineError, match="compute capability 9.0"):
        _backend(trt_dir, trt, HostMemory(properties=("Other GPU", "8.6"))).activate()

    backend = _backend(trt_dir, trt).activate()
    chunk = Manifest.load(trt_dir).limits.class_chunk
    feeds = {
        "clip_dense": np.zeros((1, 48, 24, 24), np.float32),
        "text_features": np.zeros((chunk + 1, 80, 48), np.float32),
    }
    with pytest.raises(InputError, match=f"the engines accept at most {chunk}"):
        backend.run("decoder_stage0", feeds)
    feeds = {"clip_dense": np.zeros((2, 48, 24, 24), np.float32), "text_features": np.zeros((1, 80, 48), np.float32)}
    with pytest.raises(InputError, match="got B=2 | the engines accept at most 1"):
        backend.run("decoder_stage0", feeds)
    small = {
        "image": np.zeros((1, 3, 16, 64), np.float32),
        **{k: v[None] for k, v in canvas_positions(16, 64, 768).items()},
    }
    with pytest.raises(EngineError, match="outside the engine profile"):  # below the profile: TensorRT refuses
        backend.run("image_encoder", small)


def test_fp16_io_and_failed_contexts_are_refused(trt, trt_dir, tmp_path, monkeypatch):
    """An engine whose output is fp16 would be read as fp32 garbage: refused at activation."""
    half = _edited(trt_dir, tmp_path / "half", lambda m: None)
    plan_file = half / Manifest.load(half).engines["decoder_stage0"].file
    plan = json.loads(plan_file.read_bytes())
    plan["dtype_override"] = {"aux_logits": "HALF"}
    plan_file.write_bytes(json.dumps(plan).encode())
    _rehash(half)
    with pytest.raises(EngineError, match="'aux_logits' is HALF"):
        _backend(half, trt).activate()
    monkeypatch.setattr(trt, "FAIL", {"context"})
    with pytest.raises(EngineError, match="could not create an execution context"):
        _backend(trt_dir, trt).activate()


def test_a_plan_of_another_tensorrt_version_is_refused(trt, trt_dir, tmp_path):
    other = fake_tensorrt.make("10.16.0.72" if trt.__version__.startswith("11") else "11.4.0.106")

    def relabel(m):
        for e in m.engines.values():
            e.tensorrt_version = other.__version__

    with pytest.raises(EngineError, match="could not deserialize"):
        _backend(_edited(trt_dir, tmp_path / "other", relabel), other).activate()


def test_cuda_ops_copies_match_numpy():
    ops = CudaOps(HostMemory())
    check_device_copies(ops)
    view = ops.narrow(ops.from_numpy(np.zeros((1, 7, 3), np.float32)), 1, 3, 5)
    assert isinstance(view, DeviceArray) and view._owner is not None  # B = 1: a pointer offset, no copy
    labels = np.arange(12, dtype=np.int32).reshape(3, 4)
    tile = ops.empty((5, 4), "int32")
    ops.write(tile, 0, 2, ops.from_numpy(labels))
    assert tile.dtype == np.int32 and (ops.to_numpy(tile)[2:] == labels).all()


def _edited(src, dst, edit):
    shutil.copytree(src, dst)
    manifest = Manifest.load(dst)
    edit(manifest)
    manifest.save(dst)
    return dst


def _rehash(directory):
    import hashlib

    manifest = Manifest.load(directory)
    for entry in manifest.engines.values():
        entry.sha256 = hashlib.sha256((directory / entry.file).read_bytes()).hexdigest()
    manifest.save(directory)


def test_the_tensorrt_runtime_never_imports_torch(trt, trt_dir, parity_dir, parity):
    """tensorrt + cuda-python + numpy: a deployment must not need a 5 GB torch install."""
    import subprocess
    import sys

    code = f"""
import sys
sys.modules["torch"] = None  # any import of torch now fails
from sed_trt.runtime.backends import create_backend
from sed_trt.runtime.image import load_image
from sed_trt.runtime.predictor import Predictor
from tests import fake_tensorrt
from tests.checks import check_device_copies, check_official
from tests.fake_cuda import HostMemory
trt, memory = fake_tensorrt.make({trt.__version__!r}), HostMemory()
fake_tensorrt.use_memory(trt, memory)
backend = create_backend("tensorrt", engine_dir={str(trt_dir)!r}, trt_module=trt, memory=memory).activate()
pred = Predictor(backend, topk=2)
pred.set_classes({parity["classes"]!r})
print(int(pred.predict(load_image({str(parity_dir / "image.png")!r})).kept.sum()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) == int(parity["expected"]["cer_k2_kept"].sum())


def test_fp16_engines_are_built_from_the_mixed_precision_graphs(trt, trt_dir, parity, parity_image, tmp_path):
    work, manifest = _engines_at(trt_dir, trt, "fp16", tmp_path)
    stage0, text = manifest.engines["decoder_stage0"], manifest.engines["text_encoder"]
    assert (stage0.precision, stage0.onnx_file) == ("fp16", "decoder_stage0.fp16.onnx")
    assert (text.precision, text.onnx_file) == ("fp32", "text_encoder.onnx")  # run once per vocabulary
    backend = _backend(work, trt).activate()  # fp32 I/O: the runtime binds them as before
    pred = Predictor(backend, topk=2)
    pred.set_classes(parity["classes"])
    out = pred.predict(parity_image)
    np.testing.assert_array_equal(out.kept, parity["expected"]["cer_k2_kept"])
    assert 0 < np.abs(trim("cer_k2_probs", out.probs) - parity["expected"]["cer_k2_probs"]).max() < 2e-3


def test_int8_engines_take_the_qdq_image_encoder_and_parser_rules(trt, trt_dir, parity, parity_image, tmp_path, capfd):
    """build-engines --precision int8: the image encoder's engine from its Q/DQ graph, every other
    graph's from fp32; the backend reports int8. A Q/DQ graph with a zero point other than 0 is
    refused by the parser (onnx-tensorrt operators.md), in one line."""
    import onnx
    from onnx import numpy_helper

    from tests.export.test_qdq import INT8_MAX_DPROB

    _once(trt)  # the build and runtime path of int8 engines do not differ between TensorRT versions
    work, manifest = _engines_at(trt_dir, trt, "int8", tmp_path)
    encoder, stage0 = manifest.engines["image_encoder"], manifest.engines["decoder_stage0"]
    assert (encoder.precision, encoder.onnx_file) == ("int8", "image_encoder.int8.onnx")
    assert (stage0.precision, stage0.onnx_file) == ("fp32", "decoder_stage0.onnx")
    backend = _backend(work, trt).activate()
    assert backend.label == "tensorrt-int8"
    pred = Predictor(backend, topk=2)
    pred.set_classes(parity["classes"])
    out = pred.predict(parity_image)
    np.testing.assert_array_equal(out.kept, parity["expected"]["cer_k2_kept"])
    assert (
        0
        < np.abs(trim("cer_k2_probs", out.probs) - parity["expected"]["cer_k2_probs"]).max()
        < INT8_MAX_DPROB["onnxruntime"] + 1e-4
    )
    backend.deactivate()
    model = onnx.load(str(work / "image_encoder.int8.onnx"))
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    zp = next(i for i in model.graph.initializer if i.name == q.input[2])
    zp.CopyFrom(numpy_helper.from_array(np.ones_like(numpy_helper.to_array(zp)), zp.name))
    onnx.save(model, str(work / "asymmetric.onnx"))
    capfd.readouterr()
    with pytest.raises(ExportError, match="could not build asymmetric.onnx: Could not parse ONNX"):
        build_engine(work / "asymmetric.onnx", manifest.specs["image_encoder"], manifest.limits, trt=trt)
    assert "zero point must be 0" in capfd.readouterr().out  # Polygraphy logs the parser's errors


def test_fp8_engines_need_an_ada_or_hopper_gpu_and_match_their_emulation(trt, trt_dir, parity, parity_image, tmp_path):
    """build-engines --precision fp8: the image encoder's engine from its E4M3 Q/DQ graph on a
    compute-capability 9.0 GPU, its answer the ONNX Runtime emulation's (the fake runs the graph);
    on an 8.6 GPU sed-trt refuses in one line before TensorRT, and TensorRT itself (the fake, as
    the real one does) refuses to build fp8 Q/DQ layers there."""
    _once(trt)
    work, manifest = _engines_at(trt_dir, trt, "fp8", tmp_path)
    encoder, stage0 = manifest.engines["image_encoder"], manifest.engines["decoder_stage0"]
    assert (encoder.precision, encoder.onnx_file) == ("fp8", "image_encoder.fp8.onnx")
    assert (stage0.precision, stage0.onnx_file) == ("fp32", "decoder_stage0.onnx")
    outs = {}
    backend = _backend(work, trt).activate()
    assert backend.label == "tensorrt-fp8"
    with create_backend("onnxruntime", engine_dir=work, precision="fp8") as emulated:
        for b in (backend, emulated):
            pred = Predictor(b, topk=2)
            pred.set_classes(parity["classes"])
            out = pred.predict(parity_image)
            outs[b.label] = (out.kept, out.probs)
    backend.deactivate()
    (trt_kept, trt_probs), (ort_kept, ort_probs) = outs["tensorrt-fp8"], outs["onnxruntime-fp8"]
    np.testing.assert_array_equal(trt_kept, ort_kept)
    np.testing.assert_allclose(trt_probs, ort_probs, atol=1e-5)
    ampere = ("Fake A100", "8.0")
    with pytest.raises(ExportError, match=r"fp8 engines need an Ada or Hopper GPU .*Fake A100 is 8.0"):
        build_engines(work, precision="fp8", trt=trt, gpu=ampere, progress=False)
    trt.GPU["capability"] = (8, 0)
    try:
        with pytest.raises(ExportError, match="could not build image_encoder.fp8.onnx"):
            build_engine(work / "image_encoder.fp8.onnx", manifest.specs["image_encoder"], manifest.limits, trt=trt)
        assert "Networks with FP8 Q/DQ layers require hardware with FP8 support" in trt.ERRORS[-1]
    finally:
        trt.GPU["capability"] = (9, 0)


def test_cer_graphs_for_5000_classes_bound_topk_and_build(trt, small_engine_dir, tmp_path):
    """An export for 5000 classes: the CER graphs' TopK K is bounded by a constant (MAX_CER_TOPK),
    so TensorRT's 3840 cap holds at any T and the engines build; a K = T sort would not (the fake
    refuses what ITopKLayer refuses), and a --topk above the bound is one line."""
    import dataclasses

    import onnx
    from onnx import helper

    from sed_trt.export.check import check_trt_compatible
    from sed_trt.runtime.cer import MAX_CER_TOPK
    from sed_trt.runtime.errors import ConfigError

    out = small_engine_dir
    manifest = Manifest.load(out)
    # The class limit lives in the manifest and the engines' profiles, not in the ONNX graphs (their
    # class axis is symbolic), so these are the graphs an export for 5000 classes writes; the
    # engines are built with its limits.
    limits = dataclasses.replace(manifest.limits, max_classes=5000)
    for graph in ("cer1", "cer2", "cer3"):
        model = onnx.load(str(out / manifest.graphs[graph]))
        classes = model.graph.input[0].type.tensor_type.shape.dim[1]
        assert classes.dim_param and not classes.HasField("dim_value"), graph
        assert not check_trt_compatible(out / manifest.graphs[graph]), graph
        build_engine(out / manifest.graphs[graph], manifest.specs[graph], limits, trt=trt)
    # The same graph with K = T (the full sort of release 0.2): refused by the check and the build.
    model = onnx.load(str(out / manifest.graphs["cer1"]))
    topk = next(n for n in model.graph.node if n.op_type == "TopK")
    shape = helper.make_node("Shape", [topk.input[0]], ["t_shape"], start=1, end=2)
    model.graph.node.insert(0, shape)
    topk.input[1] = "t_shape"
    full_sort = tmp_path / "full_sort.onnx"
    onnx.save(model, str(full_sort))
    assert any("K has no constant upper bound" in v.reason for v in check_trt_compatible(full_sort))
    with pytest.raises(ExportError, match="could not build"):
        build_engine(full_sort, manifest.specs["cer1"], limits, trt=trt)
    assert any("above TensorRT's 3840" in e for e in trt.ERRORS)
    backend = create_backend("onnxruntime", engine_dir=out).activate()
    with pytest.raises(ConfigError, match=f"k from 1 to {MAX_CER_TOPK}"):
        Predictor(backend, topk=MAX_CER_TOPK + 1)


@pytest.mark.parametrize("topk", [None, 2])
def test_cuda_graphs_capture_per_shape_and_replay_the_official_outputs(trt, trt_dir, parity, parity_image, topk):
    """--cuda-graphs: each (graph, input shapes) is enqueued once, captured, then replayed with
    the inputs copied in and the outputs copied out; the answers are the plain enqueue's, bit
    for bit, on the first photo (captures) and the next (replays)."""
    _once(trt)
    plain = Predictor(_backend(trt_dir, trt).activate(), topk=topk)
    plain.set_classes(parity["classes"])
    want = plain.predict(parity_image)
    memory, start = HostMemory(), len(trt.CALLS)
    backend = _backend(trt_dir, trt, memory, cuda_graphs=True).activate()
    pred = Predictor(backend, topk=topk)
    pred.set_classes(parity["classes"])
    first = pred.predict(parity_image)
    stats = dict(backend.graph_stats)
    assert stats["captures"] > 0 and stats["failed_captures"] == 0 and stats["plain"] == 0
    second = pred.predict(parity_image)
    assert backend.graph_stats["captures"] == stats["captures"]  # every shape of the second photo was seen
    assert backend.graph_stats["replays"] > stats["replays"] and memory.launches == backend.graph_stats["replays"]
    for out in (first, second):
        check_official(out, parity, topk)
        np.testing.assert_array_equal(out.probs, want.probs)
        np.testing.assert_array_equal(out.labels, want.labels)
    captured = [c for c in trt.CALLS[start:] if c[0] == "capture"]
    assert len(captured) == stats["captures"]
    assert all(stream == memory.stream_handle for *_, stream in captured)
    backend.deactivate()
    del pred, backend, first, second
    gc.collect()
    assert memory.live_bytes == 0, "graph buckets leaked device buffers"


def test_cuda_graphs_fall_back_when_capture_is_refused_and_evict_within_their_memory(
    trt, trt_dir, parity, parity_image, monkeypatch, caplog
):
    """An engine TensorRT will not capture (its enqueue returns False under capture) runs that
    shape with plain enqueues from then on, with one warning, as trtexec does; with no memory
    for graphs, buckets are evicted and re-captured and the answers do not change."""
    _once(trt)
    monkeypatch.setattr(logging.getLogger("sed_trt"), "propagate", True)
    monkeypatch.setattr(trt, "FAIL", {"capture"})
    memory = HostMemory()
    backend = _backend(trt_dir, trt, memory, cuda_graphs=True).activate()
    pred = Predictor(backend, topk=2)
    pred.set_classes(parity["classes"])
    for _ in range(2):
        check_official(pred.predict(parity_image), parity, 2)
    stats = backend.graph_stats
    assert stats["captures"] == 0 and stats["failed_captures"] > 0 and stats["plain"] > 0 and memory.launches == 0
    assert not memory.capturing
    # one warning: one record (counted by identity: once an in-process CLI run has given the sed_trt
    # logger its handlers, the same record can reach the capture twice, as seen in one full run)
    warned = {id(r) for r in caplog.records if r.getMessage().startswith("CUDA graphs:")}
    assert len(warned) == 1 and "runs without a graph" in caplog.text
    backend.deactivate()
    monkeypatch.setattr(trt, "FAIL", set())
    backend = _backend(trt_dir, trt, HostMemory(), cuda_graphs=True, graph_memory_mb=0).activate()
    pred = Predictor(backend, topk=2)
    pred.set_classes(parity["classes"])
    for _ in range(2):
        check_official(pred.predict(parity_image), parity, 2)
    assert backend.graph_stats["evictions"] > 0 and len(backend._buckets) == 1
    backend.deactivate()


def test_the_fakes_refuse_what_cuda_and_tensorrt_refuse_under_capture(trt, trt_dir):
    """The rules the CUDA-graph path is tested against: no synchronisation or pageable upload
    while capturing (the capture is invalidated), no capture of a context's first enqueue after
    a shape change, no enqueue on a stream of another device."""
    from sed_trt.runtime.errors import DeviceError

    memory = HostMemory()
    memory.begin_capture()
    with pytest.raises(DeviceError, match="cudaErrorStreamCaptureUnsupported"):
        memory.synchronize()
    with pytest.raises(DeviceError, match="invalidated"):
        memory.end_capture()
    memory.begin_capture()
    with pytest.raises(DeviceError, match="pageable"):
        memory.upload(0, np.zeros(1, np.float32))
    memory.abort_capture()

    backend = _backend(trt_dir, trt, memory).activate()
    engine = backend._engines["cer1"]
    ctx = engine.create_execution_context()
    lo = engine.get_tensor_profile_shape("aux_logits", 0)[0]
    shape = (1, 3, *lo[2:])
    assert ctx.set_input_shape("aux_logits", shape) and ctx.set_input_shape("rank", (1,))
    bufs = [memory.alloc(4 * int(np.prod(shape))), memory.alloc(8), memory.alloc(12)]
    for name, ptr in zip(("aux_logits", "rank", "keep"), bufs):
        ctx.set_tensor_address(name, ptr)
    memory.memset0(bufs[1], 8)
    memory.begin_capture()
    assert not ctx.execute_async_v3(memory.stream_handle)  # not enqueued since the shape was set
    memory.abort_capture()
    assert ctx.execute_async_v3(memory.stream_handle)
    memory.begin_capture()
    assert ctx.execute_async_v3(memory.stream_handle)  # warmed up: captured
    graph = memory.end_capture()
    memory.launch(graph)
    memory.destroy_graph(graph)
    assert not ctx.execute_async_v3(HostMemory(device_index=1).stream_handle)  # a stream of GPU 1
    assert trt.CALLS[-1] == ("execute_failed", "a stream or current device other than the engine's device 0")
    HostMemory(device_index=1).bind()  # this thread's current device is now 1
    try:
        assert not ctx.execute_async_v3(memory.stream_handle)
    finally:
        memory.bind()
    backend.deactivate()
