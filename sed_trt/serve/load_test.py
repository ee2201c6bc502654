"""Load and fault test of ``sed-trt serve`` on loopback: throughput, latency percentiles, errors, server RSS.

Starts a real server (a subprocess) on free ports, sends each vocabulary once (the server
encodes its text features: timed apart), then, for each of ``--clients`` (1,2,4,8), runs that
many concurrent clients for ``--duration`` seconds, each sending images of mixed sizes with
one of several vocabularies, while the RSS of the server's whole process tree (sed-trt,
tritonserver, the Python backend stub) is sampled. Then ``--distinct`` requests each with a
vocabulary never seen before (the caches must stay bounded: RSS after all of them against
after the first 50), and the faults: clients that hang up mid-request, a malformed request,
and a server restart while clients retry. Writes ``load_test.json`` and prints a markdown
table. Bounded: the clients stop at their deadline, every call has a timeout.

    python -m sed_trt.serve.load_test --engine-dir engines/convnext_b --clients 1,2,4,8 --duration 60
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SIZES = ((240, 320), (480, 640), (768, 1024))


@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    answers: dict[tuple[int, int], set[str]] = field(default_factory=dict)  # (image, vocabulary) -> label digests
    lock: threading.Lock = field(default_factory=threading.Lock)

    def mismatches(self, alone: dict[int, str]) -> int:
        """Requests whose labels differ from another answer to the same request, or from the answer
        to it served alone (``alone``: vocabulary index -> digest, image 1)."""
        return sum(
            len(digests | ({alone[v]} if i == 1 and v in alone else set())) - 1
            for (i, v), digests in self.answers.items()
        )


def digest(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def tree_rss_mb(pid: int) -> float:
    """RSS of ``pid`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError, IndexError):
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        todo += children.get(p, [])
    return total / 2**20


class Server:
    """``sed-trt serve`` in a subprocess on the given ports."""

    def __init__(self, args: argparse.Namespace, ports: list[int], log: Path) -> None:
        self.cmd = [
            sys.executable,
            "-m",
            "sed_trt",
            "serve",
            "--backend",
            args.backend,
            "--engine-dir",
            args.engine_dir,
        ]
        self.cmd += ["--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])]
        self.cmd += ["--max-batch", str(args.max_batch), "--instances", str(args.instances), "--no-cache", "--quiet"]
        self.url = f"localhost:{ports[0]}"
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 600) -> float:
        from sed_trt.serve.client import SedClient

        start = time.perf_counter()
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT)
        with SedClient(self.url, timeout_s=5) as client:
            while not client.ready():
                if self.proc.poll() is not None or time.perf_counter() - start > timeout:
                    raise SystemExit(f"server did not start; see {self.log}")
                time.sleep(0.25)
        return time.perf_counter() - start

    def stop(self) -> float:
        assert self.proc is not None
        start = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)
        return time.perf_counter() - start


def make_images(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for h, w in SIZES:
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx / w * 255, yy / h * 255, (xx + yy) % 256], axis=-1)
        out.append(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))
    return out


def make_vocabularies(max_classes: int) -> list[list[str]]:
    from sed_trt.runtime.vocab import load_vocabulary

    ade = load_vocabulary("ade150")
    sizes = sorted({min(n, max_classes) for n in (8, 20, 50)})
    return [ade[i : i + n] for i, n in enumerate(sizes)]


def run_clients(
    url: str,
    n: int,
    duration: float,
    images: list,
    vocabs: list,
    tally: Tally,
    topk: int | None,
    ids: tuple[list[int], list[int]] | None = None,
) -> None:
    """``n`` clients sending random (image, vocabulary) pairs until ``duration`` s; ``ids``: the
    pairs' indices in the full lists (for :meth:`Tally.mismatches`)."""
    from sed_trt.serve.client import SedClient

    image_ids, vocab_ids = ids or (list(range(len(images))), list(range(len(vocabs))))

    deadline = time.perf_counter() + duration

    def worker(i: int) -> None:
        rng = np.random.default_rng(i)
        with SedClient(url, timeout_s=600) as client:
            while time.perf_counter() < deadline:
                i_image, i_vocab = int(rng.integers(len(images))), int(rng.integers(len(vocabs)))
                start = time.perf_counter()
                try:
                    result = client.segment(images[i_image], vocabs[i_vocab], topk=topk)
                    key = (image_ids[i_image], vocab_ids[i_vocab])
                    with tally.lock:
                        tally.latencies_ms.append(1e3 * (time.perf_counter() - start))
                        tally.answers.setdefault(key, set()).add(digest(result.labels))
                except Exception as exc:
                    with tally.lock:
                        tally.errors.append(str(exc)[:200])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def first_requests(
    url: str, image: np.ndarray, vocabs: list, topk: int | None = None
) -> tuple[dict[int, float], dict[int, str]]:
    """The first request with each vocabulary, one at a time: the server encodes its text features.
    Returns the times by vocabulary size and the labels' digests by vocabulary index (served alone)."""
    from sed_trt.serve.client import SedClient

    times, alone = {}, {}
    with SedClient(url, timeout_s=600) as client:
        for i, vocab in enumerate(vocabs):
            start = time.perf_counter()
            result = client.segment(image, vocab, topk=topk)
            times[len(vocab)] = round(1e3 * (time.perf_counter() - start), 1)
            alone[i] = digest(result.labels)
    return times, alone


def distinct_vocabularies(url: str, image: np.ndarray, n: int, pid: int) -> dict[str, Any]:
    """``n`` requests, each with a vocabulary never sent before; the server tree's RSS after 50 and after all."""
    from sed_trt.serve.client import SedClient

    rss: dict[str, float] = {}
    errors = 0
    with SedClient(url, timeout_s=600) as client:
        for i in range(n):
            try:
                client.segment(image, [f"thing {i} one", f"stuff {i} two", f"item {i} three"])
            except Exception:
                errors += 1
            if i + 1 in (50, n):
                rss[f"after_{i + 1}"] = round(tree_rss_mb(pid), 1)
    return {"requests": n, "errors": errors, "server_rss_mb": rss}


def hang_up_mid_request(url: str) -> None:
    """A client that sends half a request, and one that sends a whole one and leaves before the answer."""
    host, port = url.split(":")
    body = json.dumps(
        {"inputs": [{"name": "image", "shape": [1, 64, 64, 3], "datatype": "UINT8", "data": [0] * 12288}]}
    )
    for cut in (len(body) // 2, len(body)):
        with socket.create_connection((host, int(port)), timeout=10) as s:
            head = f"POST /v2/models/sed/infer HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            s.sendall(head.encode() + body[:cut].encode())


def malformed(url: str) -> str:
    import tritonclient.http as http

    client = http.InferenceServerClient(url)
    x = http.InferInput("image", [1, 8, 8, 3], "FP32")
    x.set_data_from_numpy(np.zeros((1, 8, 8, 3), np.float32))
    try:
        client.infer("sed", [x])
    except Exception as exc:
        return str(exc).splitlines()[0][:160]
    finally:
        client.close()
    return "ACCEPTED (unexpected)"


def restart_with_retrying_clients(server: Server, images: list, vocabs: list, n: int = 2) -> dict[str, Any]:
    """Stop and restart the server while ``n`` clients keep retrying; every client must end with a success."""
    from sed_trt.serve.client import SedClient

    results: dict[int, dict[str, Any]] = {}

    def worker(i: int) -> None:
        failures, start = 0, time.perf_counter()
        while time.perf_counter() - start < 600:
            try:
                with SedClient(server.url, timeout_s=60) as client:
                    client.segment(images[0], vocabs[0])
                if failures:  # succeeded after the outage
                    break
            except Exception:
                failures += 1
            time.sleep(0.5)
        results[i] = {"failed_attempts": failures, "recovered": failures > 0 and time.perf_counter() - start < 600}

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    time.sleep(2)
    stop_s = server.stop()
    restart_s = server.start()
    for t in threads:
        t.join()
    return {"stop_s": round(stop_s, 1), "restart_s": round(restart_s, 1), "clients": list(results.values())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--engine-dir", required=True)
    p.add_argument("--backend", default="onnxruntime", help="a backend label (onnxruntime, openvino, tensorrt, ...)")
    p.add_argument("--clients", default="1,2,4,8", help="comma list of concurrent client counts")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load per client count")
    p.add_argument("--max-batch", type=int, default=4)
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--topk", type=int, default=None)
    p.add_argument("--distinct", type=int, default=500, help="requests with new vocabularies (memory bound check)")
    p.add_argument("--same-request", action="store_true", help="every client sends one image with one vocabulary")
    p.add_argument("--no-faults", action="store_true", help="skip the hang-ups, malformed request and restart")
    p.add_argument("--out-dir", default="results/load_test")
    args = p.parse_args(argv)

    from sed_trt.runtime.manifest import Manifest

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest.load(args.engine_dir)
    server = Server(args, free_ports(3), out / "server.log")
    startup_s = server.start()
    print(f"server ready in {startup_s:.1f} s ({manifest.backbone}, {args.backend})", flush=True)
    images, vocabs = make_images(), make_vocabularies(manifest.limits.max_classes)
    assert server.proc is not None
    rss: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        t0 = time.perf_counter()
        while not stop.is_set():
            rss.append((round(time.perf_counter() - t0, 1), round(tree_rss_mb(server.proc.pid), 1)))  # type: ignore[union-attr]
            stop.wait(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    new_vocab_ms, alone = first_requests(
        server.url, images[1], vocabs, args.topk
    )  # each vocabulary's text features, once
    print(f"first request per vocabulary (text encoding included): {new_vocab_ms} ms", flush=True)
    rows: list[dict[str, Any]] = []
    load_images, load_vocabs = (images[1:2], vocabs[1:2]) if args.same_request else (images, vocabs)
    ids = ([1], [1]) if args.same_request else None
    for clients in (int(c) for c in args.clients.split(",")):
        tally = Tally()
        start = time.perf_counter()
        run_clients(server.url, clients, args.duration, load_images, load_vocabs, tally, args.topk, ids)
        elapsed = time.perf_counter() - start
        lat = np.array(tally.latencies_ms) if tally.latencies_ms else np.zeros(1)
        rows.append(
            {
                "clients": clients,
                "requests": len(tally.latencies_ms),
                "errors": len(tally.errors),
                "error_samples": tally.errors[:3],
                "label_mismatches": tally.mismatches(alone),
                "throughput_rps": round(len(tally.latencies_ms) / elapsed, 3),
                "latency_ms": {q: round(float(np.percentile(lat, int(q[1:]))), 1) for q in ("p50", "p95", "p99")},
                "server_rss_mb": round(tree_rss_mb(server.proc.pid), 1),
            }
        )
        print(
            f"{clients} clients: {rows[-1]['throughput_rps']} req/s, p50 {rows[-1]['latency_ms']['p50']} ms", flush=True
        )
    stop.set()
    sampler.join()
    distinct = distinct_vocabularies(server.url, images[0], args.distinct, server.proc.pid) if args.distinct else {}
    faults: dict[str, Any] = {}
    if not args.no_faults:
        hang_up_mid_request(server.url)
        faults["malformed_request"] = malformed(server.url)
        after_faults = Tally()
        run_clients(server.url, 1, 0.1, images[:1], vocabs[:1], after_faults, args.topk)
        faults["hang_ups_then_served"] = len(after_faults.latencies_ms) > 0 and not after_faults.errors
        faults["restart"] = restart_with_retrying_clients(server, images, vocabs)
    stop_s = server.stop()

    report = {
        "backbone": manifest.backbone,
        "backend": args.backend,
        "max_batch": args.max_batch,
        "duration_s_per_row": args.duration,
        "rows": rows,
        "image_sizes": [list(s) for s in SIZES],
        "vocabulary_sizes": [len(v) for v in vocabs],
        "server_startup_s": round(startup_s, 1),
        "server_stop_s": round(stop_s, 1),
        "first_request_per_vocabulary_ms": new_vocab_ms,
        "rss_over_time": rss,
        "distinct_vocabularies": distinct,
        "same_request": args.same_request,
        "faults": faults,
    }
    path = out / "load_test.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(
        "| clients | requests | errors | labels differing | req/s | p50 ms | p95 ms | p99 ms | server RSS MB |\n|---|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        lat = r["latency_ms"]
        print(
            f"| {r['clients']} | {r['requests']} | {r['errors']} | {r['label_mismatches']} | {r['throughput_rps']} | {lat['p50']} | {lat['p95']} | {lat['p99']} | {r['server_rss_mb']} |"
        )
    print(f"distinct vocabularies: {json.dumps(distinct)}")
    print(f"faults: {json.dumps(report['faults'])}")
    print(f"wrote {path}")
    ok = not any(r["errors"] for r in rows) and all(
        c["recovered"] for c in faults.get("restart", {}).get("clients", [])
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
