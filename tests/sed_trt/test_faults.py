"""The hostile-input and fault battery: one test per kind of fault, each checking the exit status,
the one-line message and what is left on disk (the server's faults: tests/sed_trt/test_serve.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sed_trt.cli import main
from sed_trt.runtime.errors import VocabularyError
from tests.checks import onnxruntime_predict, tiny_export
from tests.conftest import ROOT

pytestmark = pytest.mark.parity


def _error(capsys: pytest.CaptureFixture[str], message: str) -> str:
    lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if not ln.startswith("[sed-trt] WARNING")]
    assert len(lines) == 1 and lines[0].startswith("sed-trt") and message in lines[0], lines
    assert "Traceback" not in lines[0]
    return lines[0]


def _predict(parity_dir: Path, engine: Path, *extra: str, classes: str = "sky; tree; road") -> int:
    args = [
        "predict",
        "--backend",
        "onnxruntime",
        "--engine-dir",
        str(engine),
        "--image",
        str(parity_dir / "image.png"),
    ]
    return main([*args, "--classes", classes, "--no-cache", "--quiet", *extra])


# 1. Export never deletes what it did not write.


def test_export_refuses_a_directory_it_did_not_make(tmp_path, capsys):
    app = tmp_path / "webapp"
    (app / "src").mkdir(parents=True)
    (app / "manifest.json").write_text(json.dumps({"name": "my extension", "version": 3}))
    (app / "index.html").write_text("<html></html>")
    args = ["export", "--backbone", "sed_tiny_linear", "--image-size", "64", "--out-dir", str(app), "--quiet"]
    assert main(args) == 2
    _error(capsys, "not an engine directory made by 'sed-trt export'")
    assert sorted(p.name for p in app.iterdir()) == ["index.html", "manifest.json", "src"]


def test_reexport_keeps_the_users_files_and_a_killed_swap_is_repaired(small_engine_dir, tmp_path):
    from sed_trt.export.onnx_export import _remove_stale_staging, _swap_in

    out = tmp_path / "engine"
    shutil.copytree(small_engine_dir, out)
    (out / "notes.txt").write_text("mine")
    (out / "runs").mkdir()
    staging = tmp_path / ".engine.export-1-x"
    shutil.copytree(small_engine_dir, staging)  # a finished export
    _swap_in(staging, out)
    assert (out / "notes.txt").read_text() == "mine" and (out / "runs").is_dir() and (out / "manifest.json").is_file()
    # killed after hiding the old directory, before moving the user's files: the next export moves them
    dead = _dead_pid()
    hidden = tmp_path / f".engine.old-{dead}-x"
    os.rename(out, hidden)
    shutil.copytree(small_engine_dir, out)
    _remove_stale_staging(out)
    assert (out / "notes.txt").read_text() == "mine" and not hidden.exists()
    # killed between the two renames (no engine directory at all): the old one comes back
    os.rename(out, hidden)
    _remove_stale_staging(out)
    assert (out / "notes.txt").read_text() == "mine" and (out / "manifest.json").is_file()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# 2. Outputs go only to regular files or new names.


def test_outputs_that_are_devices_fifos_or_too_long_are_refused_before_any_work(
    parity_dir, parity_engine_dir, tmp_path, capsys
):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert _predict(parity_dir, parity_engine_dir, "--out", str(fifo)) == 2
    _error(capsys, "is not a regular file (a device, FIFO or socket)")
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert _predict(parity_dir, parity_engine_dir, "--save-npz", str(fifo)) == 2
    _error(capsys, "not a regular file")
    try:
        node = tmp_path / "null"
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a copy of /dev/null
    except PermissionError:
        node = None
    if node is not None:
        assert _predict(parity_dir, parity_engine_dir, "--out", str(node)) == 2
        _error(capsys, "not a regular file")
        assert stat.S_ISCHR(node.stat().st_mode)
    long_name = tmp_path / ("x" * 245 + ".png")
    assert _predict(parity_dir, parity_engine_dir, "--out", str(long_name)) == 2
    _error(capsys, "the file name is 249 bytes; at most 241 here")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["fifo", *(["null"] if node else [])])


# 4. Cheap checks before expensive work.


def test_a_huge_class_name_is_refused_without_tokenizing(parity_dir, parity_engine_dir, tmp_path, capsys, monkeypatch):
    from sed_trt.runtime.tokenizer import ClipTokenizer

    calls = []
    original = ClipTokenizer._bpe
    monkeypatch.setattr(ClipTokenizer, "_bpe", lambda self, token: calls.append(1) or original(self, token))
    names = tmp_path / "names.txt"
    names.write_text("sky\n" + "y" * 2_000_000 + "\n")
    assert _predict(parity_dir, parity_engine_dir, classes=str(names)) == 2
    _error(capsys, "2000000 bytes long; a class name of over 65536 cannot fit")
    assert _predict(parity_dir, parity_engine_dir, classes="sky; " + "y" * 3000) == 2  # under the cap, over 77 tokens
    _error(capsys, "cannot fit CLIP's 77 tokens")
    assert not calls  # refused from byte counts, no BPE


def test_a_huge_name_is_refused_while_another_request_holds_the_server(small_engine_dir):
    from sed_trt.runtime.backends import create_backend
    from sed_trt.serve.service import SegmentationService

    service = SegmentationService(create_backend("onnxruntime", engine_dir=small_engine_dir))
    out: list = []
    request = {"image": np.zeros((1, 8, 8, 3), np.uint8), "classes": np.array([[b"z" * 3_000_000]], dtype=object)}
    with service._lock:  # a long prediction in progress
        worker = threading.Thread(target=lambda: out.extend(service([request])))
        worker.start()
        worker.join(timeout=60)
        assert not worker.is_alive(), "the refusal waited for the lock"
    assert b"cannot fit CLIP" in out[0]["error"][0, 0]


# 6. Out of memory becomes a refusal that says how much is needed.


def test_vocabularies_and_inputs_beyond_memory_are_refused(parity_model, capsys):
    from sed_trt.runtime.backends import create_backend
    from sed_trt.runtime.predictor import Predictor

    with (
        create_backend("torch", model=parity_model) as backend,
        pytest.raises(
            VocabularyError, match=r"a vocabulary of 1150000 classes needs about .* GB of memory; this machine has"
        ),
    ):
        Predictor(backend).set_classes([f"class {i}" for i in range(1_150_000)])
    assert (
        main(["export", "--backbone", "sed_tiny_linear", "--image-size", "4096", "--out-dir", "/tmp/never", "--quiet"])
        == 2
    )
    _error(capsys, "--image-size must be a multiple of 32 between 64 and 2048, got 4096")


# 7. A full disk: one line naming the file, nothing partial, a failed cache write is a warning.


@pytest.fixture
def full_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        filler = mount / "filler"
        with open(filler, "wb", buffering=0) as f, pytest.raises(OSError):  # fill it, then free a few kB
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        os.truncate(filler, filler.stat().st_size - 24 * 1024)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_full_disk_is_one_line_and_leaves_nothing(parity_dir, parity_engine_dir, full_disk, tmp_path, capsys):
    for flag, name in (("--out", "seg.png"), ("--save-npz", "seg.npz")):
        assert _predict(parity_dir, parity_engine_dir, flag, str(full_disk / name)) == 2
        line = _error(capsys, f"cannot write '{full_disk / name}': No space left on device")
        assert "internal error" not in line
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]
    # the text-feature cache on the full disk: one warning, the run succeeds
    args = onnxruntime_predict(parity_engine_dir, parity_dir / "image.png")
    assert (
        main(
            [
                *args,
                "--classes",
                "sky; tree",
                "--cache-dir",
                str(full_disk / "cache"),
                "--save-npz",
                str(tmp_path / "o.npz"),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert err.count("WARNING") == 1 and "cannot write the cache at" in err and "Traceback" not in err
    # an export into the full disk: one line, no staging directory left
    assert main(tiny_export(full_disk / "e", "--no-validate", "--quiet")) == 2
    _error(capsys, "No space left on device")
    assert not [p for p in full_disk.iterdir() if p.name.startswith(".e.")]
    # a Triton repository on a disk with no room left: one line, no partial repository
    with open(full_disk / "filler", "ab", buffering=0) as f, pytest.raises(OSError):
        while True:
            f.write(b"\0" * 1024)
    repo = full_disk / "repo"
    assert main(["triton-repo", "--engine-dir", str(parity_engine_dir), "--out", str(repo), "--quiet"]) == 2
    assert "internal error" not in _error(capsys, "No space left on device")
    assert not [p.name for p in full_disk.iterdir() if "repo" in p.name]  # nor its staging directory


# 8. A malformed or edited manifest is refused before use, and never costs a good cache entry.


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda d: json.dumps([1, 2]).encode(), "not a manifest (a JSON list"),
        (lambda d: b"\xff\xfe" + json.dumps(d).encode(), "cannot read"),
        (
            lambda d: json.dumps({**d, "dims": {**d["dims"], "num_templates": 81}}).encode(),
            "do not give the graphs' I/O",
        ),
        (lambda d: json.dumps({**d, "dims": {**d["dims"], "embed_dim": "48"}}).encode(), "dims.embed_dim is '48'"),
        (lambda d: json.dumps({**d, "limits": {**d["limits"], "class_chunk": 0}}).encode(), "limits.class_chunk is 0"),
    ],
)
def test_malformed_manifests_are_one_line(parity_dir, parity_engine_dir, tmp_path, capsys, damage, message):
    engine = tmp_path / "engine"
    shutil.copytree(parity_engine_dir, engine)
    manifest = json.loads((engine / "manifest.json").read_text())
    (engine / "manifest.json").write_bytes(damage(manifest))
    assert _predict(parity_dir, engine) == 2
    _error(capsys, message)


def test_an_edited_manifest_never_deletes_a_good_cache_entry(parity_dir, parity_engine_dir, tmp_path, capsys):
    cache = tmp_path / "cache"
    args = ["predict", "--backend", "onnxruntime", "--image", str(parity_dir / "image.png"), "--classes", "sky; tree"]
    assert main([*args, "--engine-dir", str(parity_engine_dir), "--cache-dir", str(cache), "--quiet"]) == 0
    entries = sorted((cache / "text").glob("*.npz"))
    engine = tmp_path / "engine"
    shutil.copytree(parity_engine_dir, engine)
    manifest = json.loads((engine / "manifest.json").read_text())
    manifest["dims"]["embed_dim"] = 64
    manifest["io"] = {}
    (engine / "manifest.json").write_text(json.dumps(manifest))
    assert main([*args, "--engine-dir", str(engine), "--cache-dir", str(cache), "--quiet"]) == 2
    _error(capsys, "do not give the graphs' I/O")
    assert sorted((cache / "text").glob("*.npz")) == entries and entries


# 10. SIGTERM cleans up like SIGINT.


def test_sigterm_removes_the_temporary_file_of_a_write_in_progress(tmp_path):
    target = tmp_path / "out.png"
    code = f"""
import signal, time
from pathlib import Path
from sed_trt.runtime.fsutil import atomic_write
from sed_trt.cli import _terminate
signal.signal(signal.SIGTERM, _terminate)
def slow(tmp):
    Path(tmp).write_bytes(b"half")
    time.sleep(60)
try:
    atomic_write({str(target)!r}, slow)
except KeyboardInterrupt:
    raise SystemExit(130)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    deadline = time.time() + 60
    while not list(tmp_path.glob(".out.png.*.tmp")):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 130
    assert list(tmp_path.iterdir()) == []


def test_sigterm_during_predict_and_export_leaves_nothing(parity_dir, parity_engine_dir, tmp_path):
    base = [sys.executable, "-m", "sed_trt"]
    predict = [*base, *onnxruntime_predict(parity_engine_dir, parity_dir / "image.png")]
    predict += ["--classes", "pc59", "--no-cache", "--out", str(tmp_path / "seg.png"), "--quiet"]
    export = [*base, *tiny_export(tmp_path / "engine", "--quiet")]
    for cmd in (predict, export):
        proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 143 and err.strip().splitlines()[-1] == "sed-trt: terminated", err
    assert list(tmp_path.iterdir()) == []


# 11. The small ones.


def test_small_faults_are_one_line(parity_dir, parity_engine_dir, small_model, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:  # argparse: one line, no usage block
        main(["predict", "--image"])
    assert exit_.value.code == 2
    _error(capsys, "argument --image: expected at least one argument (see sed-trt predict --help)")
    for names, message in [
        (["cat", "ｃａｔ"], "duplicate class names"),
        (["cat & dog", "cat &amp; dog"], "duplicate class names"),
        (["cat", "c\x07at"], "duplicate class names"),
        (["sky", "a <end_of_text> b"], "special token"),
        (["sky", "\u200b"], "no letter, digit or symbol"),
        (["sky, ", "tree"], "synonym with no letter, digit or symbol"),
    ]:
        vocabulary = tmp_path / "names.json"
        vocabulary.write_text(json.dumps(names))
        assert _predict(parity_dir, parity_engine_dir, classes=str(vocabulary)) == 2
        _error(capsys, message)
    assert _predict(parity_dir, parity_engine_dir, "--device", "cuda:0") == 2
    _error(capsys, "--device cuda:0: the onnxruntime backend runs on the CPU")
    args = ["predict", "--backend", "torch", "--backbone", "sed_tiny_linear", "--engine-dir", str(parity_engine_dir)]
    assert main([*args, "--image", str(parity_dir / "image.png"), "--classes", "sky", "--quiet"]) == 2
    _error(capsys, "--engine-dir does not apply to --backend torch")
    fifo = tmp_path / "image.fifo"
    os.mkfifo(fifo)
    args = ["predict", "--backend", "onnxruntime", "--engine-dir", str(parity_engine_dir), "--quiet"]
    # a pipe (<(cat photo.png), /dev/stdin) is read whole, as a shell user expects
    writer = threading.Thread(target=lambda: fifo.write_bytes((parity_dir / "image.png").read_bytes()))
    writer.start()
    assert main([*args, "--classes", "sky", "--image", str(fifo), "--save-npz", str(tmp_path / "pipe.npz")]) == 0
    writer.join()
    capsys.readouterr()
    # an emoji-only class name is a name CLIP encodes (byte-level BPE): accepted
    assert main([*args, "--image", str(parity_dir / "image.png"), "--classes", "\U0001f436,sky"]) == 0
    capsys.readouterr()
    assert _predict(parity_dir, parity_engine_dir, "--max-pixels", "100") == 2
    _error(capsys, "above the limit of 100 pixels")
    assert _predict(parity_dir, parity_engine_dir, "--out", str(tmp_path / "seg.gif2")) == 2
    _error(capsys, "unknown image type '.gif2'")
    assert _predict(parity_dir, parity_engine_dir, "--out", str(tmp_path / "seg.jpg")) == 0
    assert (tmp_path / "seg.jpg").read_bytes()[:2] == b"\xff\xd8"  # JPEG, as the name says
    capsys.readouterr()
    bad_exif = tmp_path / "exif.jpg"
    _write_jpeg_with_corrupt_exif(bad_exif)
    with warnings.catch_warnings(record=True) as escaped:  # none may reach Python's warnings (stderr)
        warnings.simplefilter("always")
        assert main([*args, "--classes", "sky", "--image", str(bad_exif)]) == 0
    assert not escaped, [str(w.message) for w in escaped]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("[sed-trt] WARNING: image") and "Corrupt EXIF data" in err[0], err


def _write_jpeg_with_corrupt_exif(path: Path) -> None:
    """A JPEG whose EXIF block claims 5 entries and holds 1: Pillow warns when it reads the orientation."""
    import io

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 120, 30)).save(buf, format="JPEG")
    data = buf.getvalue()
    exif = (
        b"Exif\x00\x00II*\x00"
        + struct.pack("<I", 8)
        + struct.pack("<H", 5)
        + b"\x12\x01\x03\x00\x01\x00\x00\x00\x06\x00\x00\x00"
    )
    path.write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + data[2:])
