"""``sed-trt serve`` on a real Triton server (PyTriton) with the tiny parity model on ONNX Runtime."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from runtime.backends import create_backend
from runtime.errors import ServeError, VocabularyError
from runtime.predictor import Predictor
from sed_trt.serve.load_test import free_ports
from sed_trt.serve.service import SegmentationService, VocabularyLRU

pytestmark = pytest.mark.parity
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(parity_engine_dir, tmp_path_factory):
    pytest.importorskip("pytriton", reason="serving needs the [serve] extra")
    from sed_trt.serve.client import SedClient

    http, grpc, metrics = free_ports(3)
    log = tmp_path_factory.mktemp("serve") / "server.log"
    cmd = [sys.executable, "-m", "sed_trt", "serve", "--backend", "onnxruntime", "--engine-dir", str(parity_engine_dir)]
    cmd += ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    cmd += ["--max-batch", "4", "--queue-delay-us", "200000", "--no-cache"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    client = SedClient(f"localhost:{http}")
    deadline = time.time() + 180
    while not client.ready():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    client.close()
    yield {"url": f"localhost:{http}", "grpc": f"grpc://localhost:{grpc}", "metrics": metrics, "proc": proc, "log": log}
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("server did not stop within 60 s of SIGTERM")
    assert "server stopped" in log.read_text()


@pytest.fixture(scope="module")
def local(parity_engine_dir):
    backend = create_backend("onnxruntime", engine_dir=parity_engine_dir).activate()

    def predict(image, classes, topk):
        pred = Predictor(backend, topk=topk)
        pred.set_classes(classes)
        return pred.predict(image)

    return predict


def test_served_labels_equal_predict(server, local, parity, parity_image):
    from sed_trt.serve.client import SedClient

    for url in (server["url"], server["grpc"]):
        with SedClient(url) as client:
            got = client.segment(parity_image, parity["classes"], topk=2, probs=True)
        want = local(parity_image, parity["classes"], 2)
        np.testing.assert_array_equal(got.labels, want.labels)
        np.testing.assert_array_equal(got.kept, want.kept)
        np.testing.assert_allclose(got.probs, want.probs, atol=1e-6)


def _send_concurrently(url: str, jobs: list[tuple[np.ndarray, list[str]]]) -> dict[int, object]:
    from sed_trt.serve.client import SedClient

    results: dict[int, object] = {}

    def send(i: int) -> None:
        with SedClient(url) as client:
            results[i] = client.segment(*jobs[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_requests_with_different_vocabularies_are_batched(server, local, parity, parity_image):
    """Triton batches requests of equal shapes (PyTriton declares no ragged inputs): same image and
    vocabulary sizes, different images and vocabularies, in one batch, each answered correctly."""
    vocabularies = [parity["classes"][:10], parity["classes"][10:20]]
    crops = [parity_image[:200, :300], parity_image[100:300, 200:500]]
    jobs = [(crops[i % 2], vocabularies[i % 2]) for i in range(8)]
    before = _metrics(server["metrics"])
    results = _send_concurrently(server["url"], jobs)
    after = _metrics(server["metrics"])
    for i, (image, vocabulary) in enumerate(jobs):
        np.testing.assert_array_equal(results[i].labels, local(image, vocabulary, None).labels)
    requests = after["nv_inference_count"] - before["nv_inference_count"]
    executions = after["nv_inference_exec_count"] - before["nv_inference_exec_count"]
    assert requests == 8 and executions < requests, (requests, executions)  # some requests shared a batch


def test_concurrent_requests_of_any_size_and_vocabulary_are_answered(server, local, parity, parity_image):
    jobs = [
        (parity_image, parity["classes"]),
        (parity_image[:200, :300], parity["classes"][:10][::-1]),
        (parity_image[100:, 50:], parity["classes"][5:17]),
    ]
    results = _send_concurrently(server["url"], jobs)
    for i, (image, vocabulary) in enumerate(jobs):
        np.testing.assert_array_equal(results[i].labels, local(image, vocabulary, None).labels)


def test_bad_requests_get_one_line_errors_and_the_server_keeps_serving(server, parity, parity_image):
    import tritonclient.http as http

    from sed_trt.serve.client import SedClient

    with SedClient(server["url"]) as client:
        with pytest.raises(VocabularyError, match="empty"):  # refused before sending: no empty tensors
            client.segment(parity_image, [])
        with pytest.raises(ServeError, match="at most 64"):
            client.segment(parity_image, [f"class {i}" for i in range(65)])
        raw = http.InferenceServerClient(server["url"])
        x = http.InferInput("image", [1, 8, 8, 3], "FP32")
        x.set_data_from_numpy(np.zeros((1, 8, 8, 3), np.float32))
        c = http.InferInput("classes", [1, 1], "BYTES")
        c.set_data_from_numpy(np.array([[b"cat"]], dtype=object))
        with pytest.raises(Exception, match="(?i)datatype|FP32"):
            raw.infer("sed", [x, c])
        e = http.InferInput("classes", [1, 0], "BYTES")
        e.set_data_from_numpy(np.zeros((1, 0), dtype=object))
        img = http.InferInput("image", [1, 8, 8, 3], "UINT8")
        img.set_data_from_numpy(np.zeros((1, 8, 8, 3), np.uint8))
        with pytest.raises(Exception):  # noqa: B017 (PyTriton's own failure on an empty tensor; must not kill the server)
            raw.infer("sed", [img, e])
        raw.close()
        assert client.segment(parity_image, parity["classes"][:3]).labels.shape == parity_image.shape[:2]
    assert server["proc"].poll() is None


def test_client_command_writes_what_predict_writes(server, local, parity, parity_dir, parity_image, tmp_path, capsys):
    from runtime.vocab import load_vocabulary
    from sed_trt.cli import main

    spec = ",".join(c.split(",")[0] for c in parity["classes"][:6])
    common = ["--image", str(parity_dir / "image.png"), "--classes", spec]
    assert main(["client", "--url", server["url"], *common, "--save-npz", str(tmp_path / "c.npz")]) == 0
    assert "wrote" in capsys.readouterr().out
    served = np.load(tmp_path / "c.npz")
    want = local(parity_image, load_vocabulary(spec), None)
    np.testing.assert_array_equal(served["labels"], want.labels)
    np.testing.assert_array_equal(served["kept"], want.kept)
    np.testing.assert_allclose(served["probs"], want.probs, atol=1e-6)
    assert main(["client", "--url", "localhost:1", *common]) == 2
    assert capsys.readouterr().err.strip().startswith("sed-trt: error: localhost:1:")


def _metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://localhost:{port}/metrics", timeout=10).read().decode()
    out = {}
    for name in ("nv_inference_count", "nv_inference_exec_count"):
        m = re.search(rf'^{name}{{[^}}]*model="sed"[^}}]*}} (\S+)$', text, re.M)
        out[name] = float(m.group(1)) if m else 0.0
    return out


# The service alone (no Triton): batching by vocabulary, per-request errors, the LRU.


def test_service_isolates_bad_requests_and_reuses_vocabularies(parity_engine_dir, parity, parity_image):
    backend = create_backend("onnxruntime", engine_dir=parity_engine_dir)
    service = SegmentationService(backend, vocab_cache_bytes=10 * 2**20)
    a = np.array([[c.encode() for c in parity["classes"][:4]]], dtype=object)
    b = np.array([[c.encode() for c in parity["classes"][4:9]]], dtype=object)
    image = parity_image[None]
    requests = [
        {"image": image, "classes": a},
        {"image": image, "classes": np.zeros((1, 0), dtype=object)},
        {"image": image.astype(np.float32), "classes": a},
        {"image": image, "classes": b, "topk": np.array([[1]], np.int32), "want_probs": np.array([[True]])},
        {"image": image, "classes": a},
    ]
    out = service(requests)
    errors = [r["error"][0, 0].decode() for r in out]
    assert errors[0] == errors[3] == errors[4] == ""
    assert "empty" in errors[1] and "uint8" in errors[2]
    assert out[0]["labels"].shape == (1, *parity_image.shape[:2]) and out[1]["labels"].tolist() == [[[-1]]]
    assert out[3]["probs"].shape[1] == 5 and out[0]["probs"].shape == (1, 1, 1, 1)  # PyTriton sends no empty arrays
    np.testing.assert_array_equal(out[0]["labels"], out[4]["labels"])
    assert service.vocabularies.misses == 2 and service.errors == 2  # a: once, b: once


def test_vocabulary_lru_is_bounded_in_bytes():
    lru = VocabularyLRU(max_bytes=3 * 400)
    for i in range(5):
        lru.put((str(i),), np.zeros(100, np.float32))
    assert lru.nbytes <= 1200 and lru.get(("0",)) is None and lru.get(("4",)) is not None


def test_serve_refuses_taken_ports_and_an_existing_workspace(tmp_path):
    from runtime.errors import ConfigError
    from sed_trt.serve.triton import ServerConfig, check_ports, serve

    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        taken = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"port {taken} is in use"):
            check_ports(ServerConfig(http_port=taken, grpc_port=taken + 1, metrics_port=taken + 2))
    pytest.importorskip("pytriton")
    with pytest.raises(ConfigError, match="must not exist|needs a path it can create"):
        serve(lambda: None, ServerConfig(workspace=str(tmp_path)))  # type: ignore[arg-type, return-value]
    assert os.path.isdir(tmp_path)
