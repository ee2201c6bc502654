"""Serving: a model repository in the tritonserver binary PyTriton's wheel bundles, on loopback,
with the tiny model (a 64 px export, batches of up to 4), and the service alone."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from sed_trt.runtime.backends import create_backend
from sed_trt.runtime.errors import ConfigError, ServeError, VocabularyError
from sed_trt.runtime.predictor import Predictor
from sed_trt.serve.load_test import free_ports
from sed_trt.serve.service import SegmentationService

pytestmark = pytest.mark.parity
ROOT = Path(__file__).resolve().parents[2]
VOCABULARIES = [
    ["sky", "tree", "road, street", "person"],
    ["wall", "floor", "ceiling"],
    ["car", "grass", "water", "dog", "cat"],
]


def _images(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((70, 120), (96, 64), (50, 50))]


class Server:
    """``sed-trt serve`` in a subprocess (its log in a file), polled from start-up."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.http, self.grpc, self.metrics = free_ports(3)
        ports = ["--http-port", str(self.http), "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics)]
        self.log = log
        self.statuses: list[int] = []  # /v2/health/ready and a request, polled from start until ready
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sed_trt", "serve", *args, *ports],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )

    @property
    def url(self) -> str:
        return f"localhost:{self.http}"

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited:\n{self.log.read_text()[-3000:]}")
            status = _status(f"http://{self.url}/v2/health/ready")
            self.statuses.append(status)
            if status == 200:
                return
            time.sleep(0.1)
        self.proc.kill()
        pytest.fail(f"server not ready after {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self, timeout: float = 60) -> float:
        start = time.time()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=timeout)
        return time.time() - start


def _status(url: str, data: bytes | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except Exception:
        return 0  # not listening yet


@pytest.fixture(scope="module")
def engine_dir(small_engine_dir):
    """The tiny model exported at 64 px with batches of up to 4 (fast requests)."""
    return small_engine_dir


@pytest.fixture(scope="module")
def server(engine_dir, tmp_path_factory):
    pytest.importorskip("pytriton", reason="serving needs the [serve] extra (its wheel bundles tritonserver)")
    repo = tmp_path_factory.mktemp("repo") / "repository"
    from sed_trt.cli import main

    assert (
        main(
            [
                "triton-repo",
                "--backend",
                "onnxruntime",
                "--engine-dir",
                str(engine_dir),
                "--out",
                str(repo),
                "--max-batch",
                "4",
                "--queue-delay-us",
                "100000",
                "--no-cache",
                "--quiet",
            ]
        )
        == 0
    )
    s = Server(["--repository", str(repo)], tmp_path_factory.mktemp("log") / "server.log")
    s.wait_ready()
    yield s
    if s.proc.poll() is None:
        s.stop()


@pytest.fixture(scope="module")
def local(engine_dir):
    backend = create_backend("onnxruntime", engine_dir=engine_dir).activate()

    def predict(image, classes, topk=None):
        pred = Predictor(backend, topk=topk)
        pred.set_classes(classes)
        return pred.predict(image)

    return predict


def _send(url: str, jobs: list[tuple[np.ndarray, list[str], int | None]]) -> dict[int, object]:
    from sed_trt.serve.client import SedClient

    results: dict[int, object] = {}

    def send(i: int) -> None:
        with SedClient(url) as client:
            try:
                results[i] = client.segment(jobs[i][0], jobs[i][1], topk=jobs[i][2], probs=True)
            except ServeError as exc:
                results[i] = exc

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_ready_only_when_the_model_answers(server):
    """Polled from start-up: no 200 before the model is loaded and warmed up, and the first
    request after ready is answered (strict readiness; the sed model warms up in initialize)."""
    assert server.statuses[-1] == 200 and all(s in (0, 400, 503) for s in server.statuses[:-1]), server.statuses
    assert _status(f"http://{server.url}/v2/models/sed/ready") == 200


def test_concurrent_requests_over_http_and_grpc_equal_predict(server, local):
    images = _images()
    jobs = [(images[i % 3], VOCABULARIES[i % 3], None) for i in range(9)]
    before = _metrics(server.metrics)
    for url in (server.url, f"grpc://localhost:{server.grpc}"):
        results = _send(url, jobs)
        for i, (image, vocabulary, topk) in enumerate(jobs):
            want = local(image, vocabulary, topk)
            # batched with other photos: equal up to float rounding (a near-tie of the tiny model may flip)
            np.testing.assert_allclose(results[i].probs, want.probs, atol=1e-5)
            assert (results[i].labels == want.labels).mean() >= 0.999
    after = _metrics(server.metrics)
    requests = after["nv_inference_count"] - before["nv_inference_count"]
    executions = after["nv_inference_exec_count"] - before["nv_inference_exec_count"]
    assert requests == 18 and executions < requests, (requests, executions)  # requests shared batches


def test_cer_requests_alone_equal_predict(server, local):
    image = _images()[0]
    (result,) = _send(server.url, [(image, VOCABULARIES[2], 1)]).values()
    want = local(image, VOCABULARIES[2], 1)
    np.testing.assert_array_equal(result.labels, want.labels)
    np.testing.assert_array_equal(result.kept, want.kept)


def test_concurrent_cer_requests_batched_together_answer_as_alone(server, local):
    """6 clients at once, one vocabulary, CER top-1, max batch 4: the dynamic batcher puts them
    in batches, and each still gets exactly the answer it gets alone (CER per image: a batch-mate
    neither adds classes to an answer nor leaks into it)."""
    rng = np.random.default_rng(11)
    images = [rng.integers(0, 255, (48 + 4 * i, 64, 3), dtype=np.uint8) for i in range(6)]
    images[1][:] = 128  # flat photos keep other classes than noisy ones
    images[4][:, :32] = 20
    alone = [local(im, VOCABULARIES[2], 1) for im in images]
    assert len({tuple(a.kept) for a in alone}) > 1, "every photo keeps the same classes: no batch-mate could matter"
    before = _metrics(server.metrics)
    results = _send(server.url, [(im, VOCABULARIES[2], 1) for im in images])
    after = _metrics(server.metrics)
    requests = after["nv_inference_count"] - before["nv_inference_count"]
    executions = after["nv_inference_exec_count"] - before["nv_inference_exec_count"]
    assert requests == 6 and executions < requests, (requests, executions)  # some were batched
    for i, want in enumerate(alone):
        np.testing.assert_array_equal(results[i].kept, want.kept)
        np.testing.assert_array_equal(results[i].labels, want.labels)


def test_bad_requests_get_one_line_errors_and_the_server_keeps_serving(server, local):
    import tritonclient.http as http

    from sed_trt.serve.client import SedClient

    image = _images()[0]
    with SedClient(server.url) as client:
        with pytest.raises(VocabularyError, match="empty"):  # refused before sending
            client.segment(image, [])
        with pytest.raises(ServeError, match="at most 1000"):
            client.segment(image, [f"class {i}" for i in range(1001)])
        with pytest.raises(ServeError, match="cannot fit CLIP"):  # bytes counted before any tokenizing
            client.segment(image, ["x" * 3000])
    raw = http.InferenceServerClient(server.url)

    def infer(img: np.ndarray, classes: np.ndarray, dtype: str = "UINT8") -> object:
        x = http.InferInput("image", list(img.shape), dtype)
        x.set_data_from_numpy(img)
        c = http.InferInput("classes", list(classes.shape), "BYTES")
        c.set_data_from_numpy(classes)
        return raw.infer("sed", [x, c])

    cat = np.array([[b"cat"]], dtype=object)
    cases = [
        (np.zeros((1, 0, 0, 3), np.uint8), cat, "non-empty image"),
        (np.zeros((1, 64, 0, 3), np.uint8), cat, "non-empty image"),
        (np.zeros((1, 8, 8, 3), np.uint8), np.zeros((1, 0), dtype=object), "empty"),
    ]
    for img, classes, message in cases:
        result = infer(img, classes)
        error = result.as_numpy("error").reshape(-1)[0].decode()
        assert message in error and "\n" not in error and "Traceback" not in error, error
    with pytest.raises(Exception, match="(?i)datatype|FP32"):  # Triton's own type check
        infer(np.zeros((1, 8, 8, 3), np.float32), cat, "FP32")
    # a request carrying a batch of two images: two rows, each answered
    two = np.stack(_images()[:1] * 2)
    result = infer(two, np.array([[b"sky", b"tree"]] * 2, dtype=object))
    assert result.as_numpy("labels").shape == (2, *two.shape[1:3]) and not any(result.as_numpy("error").reshape(-1))
    raw.close()
    np.testing.assert_array_equal(
        _send(server.url, [(image, VOCABULARIES[0], None)])[0].labels, local(image, VOCABULARIES[0]).labels
    )
    assert server.proc.poll() is None


def test_client_command_writes_what_predict_writes(server, local, parity_dir, tmp_path, capsys):
    from sed_trt.cli import main

    common = ["--image", str(parity_dir / "image.png"), "--classes", "sky; tree; road"]
    assert main(["client", "--url", server.url, *common, "--save-npz", str(tmp_path / "c.npz")]) == 0
    out, err = capsys.readouterr()
    assert "wrote" in out
    # the server's engines were exported without --weights: the client is told, as local predict is
    assert "random weights" in err and err.count("WARNING") == 1
    from sed_trt.runtime.image import load_image

    want = local(load_image(parity_dir / "image.png"), ["sky", "tree", "road"])
    np.testing.assert_array_equal(np.load(tmp_path / "c.npz")["labels"], want.labels)
    assert main(["client", "--url", "localhost:1", *common]) == 2
    assert capsys.readouterr().err.strip().startswith("sed-trt: error: localhost:1:")


def test_two_servers_side_by_side_and_sigterm_drains(server, engine_dir, local, tmp_path):
    """A second server on other ports answers too; a request in flight at SIGTERM is answered,
    then the server stops in seconds although a client keeps an idle connection open, and its
    backend directory copy is gone."""
    states = set(Path(tempfile.gettempdir()).glob("sed-trt-serve-*"))
    second = Server(
        ["--backend", "onnxruntime", "--engine-dir", str(engine_dir), "--no-cache", "--quiet"], tmp_path / "second.log"
    )
    second.wait_ready()
    image = _images()[1]
    for url in (server.url, second.url):
        np.testing.assert_array_equal(
            _send(url, [(image, VOCABULARIES[1], None)])[0].labels, local(image, VOCABULARIES[1]).labels
        )
    idle = socket.create_connection(("localhost", second.http))  # an idle keep-alive connection
    idle.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    idle.recv(1024)
    slow = [
        " ".join(f"word{i}x{j}" for j in range(5)) for i in range(60)
    ]  # 60 new long names: text encoding takes a while
    done: dict[str, float] = {}
    results: dict[int, object] = {}

    def send() -> None:
        results.update(_send(second.url, [(np.zeros((1500, 1500, 3), np.uint8), slow, None)]))
        done["at"] = time.time()

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(0.5)  # the request is in flight
    sigterm_at = time.time()
    seconds = second.stop()
    sender.join()
    idle.close()
    assert done["at"] > sigterm_at, "the request finished before SIGTERM: nothing was drained"
    assert not isinstance(results[0], Exception) and results[0].labels.shape == (1500, 1500)
    assert seconds < 20, seconds  # not Triton's exit timeout (60 s) for the idle connection
    assert "server stopped" in second.log.read_text()
    assert second.proc.returncode == 0  # a drained stop is a clean exit (docs/serving.md)
    assert set(Path(tempfile.gettempdir()).glob("sed-trt-serve-*")) <= states


def _metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://localhost:{port}/metrics", timeout=10).read().decode()
    out = {}
    for name in ("nv_inference_count", "nv_inference_exec_count"):
        m = re.search(rf'^{name}{{[^}}]*model="sed"[^}}]*}} (\S+)$', text, re.M)
        out[name] = float(m.group(1)) if m else 0.0
    return out


# The service alone (no Triton): rows, groups by vocabulary, per-row errors, the bounded cache.


def test_service_groups_rows_and_isolates_bad_ones(engine_dir, local):
    from sed_trt.runtime.text_cache import TextFeatureCache

    service = SegmentationService(
        create_backend("onnxruntime", engine_dir=engine_dir), cache=TextFeatureCache(None), max_batch=4
    )
    image = _images()[0][None]
    a = np.array([[c.encode() for c in VOCABULARIES[0]]], dtype=object)
    b = np.array([[c.encode() for c in VOCABULARIES[1]]], dtype=object)
    requests = [
        {"image": image, "classes": a},
        {"image": image, "classes": np.zeros((1, 0), dtype=object)},
        {"image": image.astype(np.float32), "classes": a},
        {"image": image, "classes": b, "topk": np.array([[1]], np.int32), "want_probs": np.array([[True]])},
        {"image": image, "classes": a},
        {"image": np.zeros((1, 0, 0, 3), np.uint8), "classes": a},
    ]
    out = service(requests)
    errors = [r["error"][0, 0].decode() for r in out]
    assert errors[0] == errors[3] == errors[4] == "", errors
    assert "empty" in errors[1] and "uint8" in errors[2] and "non-empty" in errors[5]
    assert out[0]["labels"].shape == (1, 70, 120) and out[1]["labels"].tolist() == [[[-1]]]
    assert out[3]["probs"].shape[1] == 3 and out[0]["probs"].shape == (1, 1, 1, 1)
    # rows 0 and 4 ran in one batch: equal to the photo alone up to float rounding (ONNX Runtime's
    # kernels round by batch position; a near-tie of the tiny model may flip a pixel)
    for i in (0, 4):
        assert (out[i]["labels"][0] == local(image[0], VOCABULARIES[0]).labels).mean() >= 0.999
    assert service.errors == 3


def test_memory_is_bounded_under_distinct_vocabularies(engine_dir):
    """Text features in memory stay within the cache's budget and the tokenizer's word cache
    within its bound, whatever the number of distinct vocabularies."""
    from sed_trt.runtime.text_cache import TextFeatureCache
    from sed_trt.runtime.tokenizer import BPE_CACHE_WORDS

    cache = TextFeatureCache(None, memory_bytes=2 * 3 * 80 * 48 * 4)  # two 3-class vocabularies
    service = SegmentationService(create_backend("onnxruntime", engine_dir=engine_dir), cache=cache)
    image = _images()[2][None]
    for i in range(30):
        names = np.array([[f"thing{i}a".encode(), f"stuff{i}b".encode(), f"item{i}c".encode()]], dtype=object)
        assert service([{"image": image, "classes": names}])[0]["error"][0, 0] == b""
        assert cache.nbytes <= cache.memory_bytes
    assert len(service.predictor.tokenizer._cache) <= BPE_CACHE_WORDS


def test_disk_cache_is_capped(tmp_path):
    from sed_trt.runtime.text_cache import TextFeatureCache

    cache = TextFeatureCache(tmp_path, disk_bytes=3 * 5000)
    for i in range(10):
        cache.put(f"key{i}", np.full((1, 10, 100), i, np.float32))
        time.sleep(0.01)
    sizes = [p.stat().st_size for p in (tmp_path / "text").glob("*.npz")]
    assert sum(sizes) <= 3 * 5000 and len(sizes) >= 2
    assert TextFeatureCache(tmp_path).get("key9") is not None and TextFeatureCache(tmp_path).get("key0") is None


def test_serve_refuses_taken_ports_and_a_missing_repository(tmp_path):
    from sed_trt.serve.server import ServerConfig, check_ports, serve_repository

    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        taken = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"port {taken} is in use"):
            check_ports(ServerConfig(http_port=taken, grpc_port=taken + 1, metrics_port=taken + 2))
    with pytest.raises(ConfigError, match="holds no sed/config.pbtxt"):
        serve_repository(tmp_path, ServerConfig())
    assert not os.listdir(tmp_path)


def test_repository_configs_parse_as_triton_model_configs(engine_dir, tmp_path):
    """Both forms' config.pbtxt parse with Triton's own ModelConfig message; the bls form's plan
    models take their shapes from the I/O spec."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from sed_trt.runtime.deployment import Deployment
    from sed_trt.runtime.io_spec import DECODER_GRAPHS
    from sed_trt.serve.repository import BLS_PREFIX, InstanceConfig, write_repository
    from tests.checks import fake_plans

    written = write_repository(tmp_path / "python", Deployment(engine_dir=str(engine_dir)), InstanceConfig(instances=2))
    config = text_format.Parse(
        (tmp_path / "python" / "sed" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert config.backend == "python" and config.max_batch_size == 4 and config.instance_group[0].count == 2
    assert {i.name for i in config.input} == {"image", "classes", "topk", "want_probs"} and len(written) == 3
    # settings.json is the deployment: the batch from the engines, the server's own default cache
    stored = Deployment.from_json((tmp_path / "python" / "sed" / "settings.json").read_text())
    assert stored.batch_size == 4 and stored.cache == "default" and Path(stored.engine_dir).is_absolute()
    with pytest.raises(ConfigError, match="exported for batches of up to 4"):
        write_repository(tmp_path / "big", Deployment(engine_dir=str(engine_dir), batch_size=8))
    with pytest.raises(ConfigError, match="needs TensorRT engines"):
        write_repository(tmp_path / "bls0", Deployment(engine_dir=str(engine_dir)), form="bls")
    fake = tmp_path / "fake_engines"
    manifest = fake_plans(engine_dir, fake)
    write_repository(tmp_path / "bls", Deployment(engine_dir=str(fake)), form="bls")
    for name, spec in manifest.specs.items():
        plan = text_format.Parse(
            (tmp_path / "bls" / f"{BLS_PREFIX}{name}" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
        )
        assert plan.platform == "tensorrt_plan" and [i.name for i in plan.input] == spec.input_names
        assert [list(i.dims) for i in plan.input] == [
            [d if isinstance(d, int) else -1 for d in t.shape] for t in spec.inputs
        ]
    assert json.loads((tmp_path / "bls" / "sed" / "settings.json").read_text())["backend"] == "triton-bls"
    # --cuda-graphs: Triton captures the full-chunk shape of every graph that shape fixes
    write_repository(tmp_path / "bls_g", Deployment(engine_dir=str(fake), options={"cuda_graphs": True}), form="bls")
    chunk, captured = manifest.limits.class_chunk, set()
    for name, spec in manifest.specs.items():
        plan = text_format.Parse(
            (tmp_path / "bls_g" / f"{BLS_PREFIX}{name}" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
        )
        if plan.optimization.cuda.graphs:
            (graph,) = plan.optimization.cuda.graph_spec
            assert graph.batch_size == 0 and set(graph.input) == set(spec.input_names)
            dims = {n: list(graph.input[n].dim) for n in spec.input_names}
            for t in spec.inputs:
                want = [{"B": 1, "N": chunk}.get(d, d) if isinstance(d, str) else d for d in t.shape]
                assert dims[t.name] == want, (name, t.name)
            captured.add(name)
    assert set(DECODER_GRAPHS) <= captured and "image_encoder" not in captured and "labels" not in captured


def test_load_test_counts_answers_that_differ():
    """The load test's label check: answers to one request must agree, and agree with it served alone."""
    from sed_trt.serve.load_test import Tally, digest

    a, b = digest(np.zeros((2, 2), np.int32)), digest(np.ones((2, 2), np.int32))
    assert a != b and a == digest(np.zeros((2, 2), np.uint8))  # the label values, not their dtype
    tally = Tally(answers={(1, 0): {a}, (1, 2): {a}, (0, 0): {a, b}})
    assert tally.mismatches({0: a, 2: a}) == 1  # (0, 0) answered two ways
    assert tally.mismatches({0: b, 2: a}) == 2  # and (1, 0) differs from the answer served alone


def test_repositories_the_stub_cannot_load_are_refused_before_triton_starts(engine_dir, tmp_path):
    """A path with a space (Triton's Python stub would never start: the server used to wait 15
    minutes), a missing sed/1/model.py, a settings file that is not a deployment: one line each."""
    from sed_trt.runtime.deployment import Deployment
    from sed_trt.serve.repository import check_repository, write_repository

    with pytest.raises(ConfigError, match="cannot load a model from a path with ' '"):
        write_repository(tmp_path / "my repo", Deployment(engine_dir=str(engine_dir)))
    assert not (tmp_path / "my repo").exists()
    repo = tmp_path / "repo"
    write_repository(repo, Deployment(engine_dir=str(engine_dir)))
    check_repository(repo)  # a good one passes
    (repo / "sed" / "1" / "model.py").unlink()
    with pytest.raises(ConfigError, match="model.py is missing"):
        check_repository(repo)
    (repo / "sed" / "1" / "model.py").write_text("")
    (repo / "sed" / "settings.json").write_text('{"engine_dir": 3}')
    with pytest.raises(ConfigError, match="engine_dir"):
        check_repository(repo)
    (repo / "sed" / "settings.json").write_text("[" * 100000)
    with pytest.raises(ConfigError, match="nested deeper"):
        check_repository(repo)


def test_a_multi_row_request_gives_probabilities_to_every_row_that_asks(engine_dir, local):
    """Row 0 no longer decides the probabilities of every row: a row 0 that does not ask, or is
    refused, leaves a valid row 1 that asked with its (T, h, w) maps (release 0.2 gave it a
    (1, 1, 1) zero array and no error)."""
    from sed_trt.runtime.text_cache import TextFeatureCache

    service = SegmentationService(
        create_backend("onnxruntime", engine_dir=engine_dir), cache=TextFeatureCache(None), max_batch=4
    )
    image = _images()[0]
    names = [c.encode() for c in VOCABULARIES[0]]
    want = local(image, VOCABULARIES[0])
    for row0 in (names, [b""] * len(names)):  # valid without asking; refused (an empty vocabulary)
        request = {
            "image": np.stack([image, image]),
            "classes": np.array([row0, names], dtype=object),
            "want_probs": np.array([[False], [True]]),
        }
        (out,) = service([request])
        assert (out["error"][0, 0].decode() == "") == (row0 is names) and out["error"][1, 0].decode() == ""
        assert out["probs"].shape[1:] == want.probs.shape, out["probs"].shape
        np.testing.assert_allclose(out["probs"][1], want.probs, atol=1e-4)
        assert not out["probs"][0].any()  # row 0 did not ask


@pytest.mark.slow
def test_a_killed_server_leaves_no_triton_and_the_next_one_sweeps_its_files(engine_dir, tmp_path):
    """SIGKILL runs no clean-up: Triton dies with its parent (PR_SET_PDEATHSIG), and the next
    server removes the killed one's state directory and the Python backend's shared-memory
    regions (named after the killed process), never a live server's."""
    from sed_trt.serve.server import SHM_DIR, STATE_PREFIX, sweep_stale

    killed = Server(
        ["--backend", "onnxruntime", "--engine-dir", str(engine_dir), "--no-cache", "--quiet"], tmp_path / "k.log"
    )
    killed.wait_ready()
    pid = killed.proc.pid
    states = list(Path(tempfile.gettempdir()).glob(f"{STATE_PREFIX}{pid}-*"))
    regions = list(SHM_DIR.glob(f"sed-trt-{pid}-*"))
    assert len(states) == 1 and regions, (states, regions)
    triton = [p for p in Path("/proc").glob("[0-9]*") if _cmdline_has(p, str(states[0]))]
    assert triton, "no tritonserver found for the server"
    killed.proc.kill()
    killed.proc.wait()
    deadline = time.time() + 60
    while any(p.exists() for p in triton) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(p.exists() for p in triton), "tritonserver outlived its killed parent"
    live = Path(tempfile.gettempdir()) / f"{STATE_PREFIX}{os.getpid()}-live"  # this live process's: kept
    live.mkdir()
    shm = tmp_path / "shm"  # stands for /dev/shm: a region Triton could not remove (it was killed too)
    shm.mkdir()
    (shm / f"sed-trt-{pid}-region").write_bytes(b"x")
    (shm / f"sed-trt-{os.getpid()}-region").write_bytes(b"x")
    removed = sweep_stale(shm_dir=shm)
    assert not states[0].exists() and live.exists() and states[0] in removed
    assert sorted(p.name for p in shm.iterdir()) == [f"sed-trt-{os.getpid()}-region"]
    assert not any(r.exists() for r in regions)  # Triton's own, gone with it
    live.rmdir()


def _cmdline_has(proc: Path, text: str) -> bool:
    try:
        return text in (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
