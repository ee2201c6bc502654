"""Fault injection: every corrupt file, bad input and output collision is a one-line exit 2
(or a warning and a recomputation), and whatever runs gives the same result as a clean run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sed_trt.cli import main
from tests.checks import onnxruntime_predict, tiny_export
from tests.conftest import ROOT

pytestmark = pytest.mark.parity

CLASSES = "sky; tree; road, route; person"


def _flip(path: Path, count: int = 64, offset: int | None = None) -> None:
    """Flip ``count`` bytes in the middle of ``path`` (or at ``offset``)."""
    data = bytearray(path.read_bytes())
    start = len(data) // 2 if offset is None else offset
    for i in range(start, min(len(data), start + count)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _one_line_error(capsys: pytest.CaptureFixture[str], message: str) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("[sed-trt] WARNING")]
    assert len(err) == 1 and err[0].startswith("sed-trt: error:") and message in err[0], err
    return err[0]


@pytest.fixture()
def engine_copy(parity_engine_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "engine"
    shutil.copytree(parity_engine_dir, dst)
    return dst


@pytest.fixture(scope="module")
def clean_ort(parity_dir: Path, parity_engine_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The reference: ONNX Runtime predict on the untouched engine directory, cold cache."""
    out = tmp_path_factory.mktemp("clean")
    rc = main(_ort_args(parity_dir, parity_engine_dir, out / "o.npz", cache=out / "cache"))
    assert rc == 0
    return dict(np.load(out / "o.npz"))


def _ort_args(
    parity_dir: Path, engine: Path, npz: Path, *, cache: Path | None = None, classes: str = CLASSES
) -> list[str]:
    cache_args = ["--cache-dir", str(cache)] if cache else ["--no-cache"]
    return [
        *onnxruntime_predict(engine, parity_dir / "image.png"),
        "--classes",
        classes,
        "--topk",
        "2",
        "--save-npz",
        str(npz),
        "--quiet",
        *cache_args,
    ]


def _assert_same(npz: Path, clean: dict) -> None:
    got = np.load(npz)
    np.testing.assert_array_equal(got["kept"], clean["kept"])
    np.testing.assert_array_equal(got["labels"], clean["labels"])
    np.testing.assert_allclose(got["probs"], clean["probs"], rtol=0, atol=1e-6)


# ---------------------------------------------------------------- engine directories


@pytest.mark.parametrize("graph", ["image_encoder", "text_encoder", "decoder_stage0", "decoder_stage3_fuse"])
def test_flipped_bytes_in_a_graph_are_refused(parity_dir, engine_copy, tmp_path, capsys, graph):
    _flip(engine_copy / f"{graph}.onnx")
    assert main(_ort_args(parity_dir, engine_copy, tmp_path / "o.npz")) == 2
    _one_line_error(capsys, "does not match its sha256 in the manifest")
    assert not (tmp_path / "o.npz").exists()


def test_flipped_tokenizer_and_foreign_paths_are_refused(parity_dir, engine_copy, tmp_path, capsys):
    manifest = json.loads((engine_copy / "manifest.json").read_text())
    _flip(engine_copy / manifest["tokenizer_file"], count=8, offset=100)
    assert main(_ort_args(parity_dir, engine_copy, tmp_path / "o.npz")) == 2
    _one_line_error(capsys, "(tokenizer) does not match its sha256")

    shutil.copyfile(engine_copy / "decoder_stage1_summaries.onnx", tmp_path / "outside.onnx")
    manifest["graphs"]["decoder_stage1_summaries"] = "../outside.onnx"
    (engine_copy / "manifest.json").write_text(json.dumps(manifest))
    assert main(_ort_args(parity_dir, engine_copy, tmp_path / "o.npz")) == 2
    _one_line_error(capsys, "outside the engine directory")

    (engine_copy / "manifest.json").write_text("{ not json")
    assert main(_ort_args(parity_dir, engine_copy, tmp_path / "o.npz")) == 2
    _one_line_error(capsys, "cannot read")


def test_missing_checksums_are_refused(parity_dir, engine_copy, tmp_path, capsys):
    manifest = json.loads((engine_copy / "manifest.json").read_text())
    del manifest["graph_sha256"]["decoder_stage2_fuse"]
    (engine_copy / "manifest.json").write_text(json.dumps(manifest))
    assert main(_ort_args(parity_dir, engine_copy, tmp_path / "o.npz")) == 2
    _one_line_error(capsys, "records no sha256 for graph decoder_stage2_fuse")


def test_killed_export_leaves_the_old_engines_intact(parity_dir, parity_engine_dir, tmp_path, clean_ort):
    """SIGKILL while re-exporting into an engine directory: the old one still works, unchanged."""
    target = tmp_path / "engine"
    shutil.copytree(parity_engine_dir, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    cmd = [
        sys.executable,
        "-m",
        "sed_trt",
        *tiny_export(target),
        "--max-classes",
        "8",
        "--class-chunk",
        "3",
        "--engines",
        "skip",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    staged = []
    while time.monotonic() < deadline and proc.poll() is None:
        staged = [p for p in tmp_path.glob(".engine.export-*") if any(p.glob("*.onnx"))]
        if staged:
            break
        time.sleep(0.05)
    assert staged and proc.poll() is None, (
        f"the export ended before a graph was staged: {proc.stderr.read().decode() if proc.poll() is not None else ''}"
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert main(_ort_args(parity_dir, target, tmp_path / "o.npz")) == 0
    _assert_same(tmp_path / "o.npz", dict(clean_ort.items()))
    # the next export first removes the dead one's staging directory (what it does next, a whole export
    # and swap, is tested in tests/sed_trt/test_faults.py)
    from sed_trt.export.onnx_export import _remove_stale_staging

    _remove_stale_staging(target)
    assert not list(tmp_path.glob(".engine.*"))
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before


def test_export_refuses_a_directory_that_is_not_an_engine_directory(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"precious")
    base = ["export", "--backbone", "sed_tiny_linear", "--weights", str(tmp_path / "missing.pth"), "--quiet"]
    assert main([*base, "--out-dir", str(tmp_path / "photos")]) == 2
    _one_line_error(capsys, "not an engine directory")
    assert (tmp_path / "photos" / "holiday.jpg").read_bytes() == b"precious"
    (tmp_path / "file").write_text("x")
    # checked before the model loads: the missing checkpoint is not what fails
    assert main([*base, "--out-dir", str(tmp_path / "file" / "engines")]) == 2
    _one_line_error(capsys, "is a file, not a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into any directory")
def test_export_into_unwritable_directory(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert main(["export", "--backbone", "sed_tiny_linear", "--out-dir", str(locked / "e"), "--quiet"]) == 2
    _one_line_error(capsys, "is not writable")


# ---------------------------------------------------------------- text-feature cache


def _entries(cache: Path) -> list[Path]:
    return sorted((cache / "text").glob("*.npz"))


@pytest.mark.parametrize("damage", ["flip", "empty", "nan", "shape", "garbage"])
def test_corrupt_cache_entries_are_recomputed(parity_dir, parity_engine_dir, tmp_path, capsys, clean_ort, damage):
    from sed_trt.runtime.text_cache import _save_entry

    cache = tmp_path / "cache"
    assert main(_ort_args(parity_dir, parity_engine_dir, tmp_path / "a.npz", cache=cache)) == 0
    (entry,) = _entries(cache)
    if damage == "flip":
        _flip(entry, count=16)
    elif damage == "empty":
        entry.write_bytes(b"")
    elif damage == "garbage":
        entry.write_bytes(os.urandom(4096))
    else:  # a well-formed entry, with a valid checksum, of wrong content
        with np.load(entry) as data:
            header, feats = json.loads(str(data["header"])), np.array(data["features"])
        feats = feats[:2] if damage == "shape" else np.full_like(feats, np.nan)
        import hashlib

        header.update(shape=list(feats.shape), sha256=hashlib.sha256(feats.tobytes()).hexdigest())
        _save_entry(str(entry), header, feats)
    capsys.readouterr()
    assert main(_ort_args(parity_dir, parity_engine_dir, tmp_path / "b.npz", cache=cache)) == 0
    assert "text-feature cache entry" in capsys.readouterr().err
    _assert_same(tmp_path / "b.npz", clean_ort)
    # the entry was rewritten intact: a third run uses it without a warning
    assert main(_ort_args(parity_dir, parity_engine_dir, tmp_path / "c.npz", cache=cache)) == 0
    assert "WARNING" not in capsys.readouterr().err


def test_unwritable_cache_is_a_warning(parity_dir, parity_engine_dir, tmp_path, capsys, clean_ort):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache directory should be")
    assert main(_ort_args(parity_dir, parity_engine_dir, tmp_path / "o.npz", cache=blocker)) == 0
    assert "cannot write the cache at" in capsys.readouterr().err
    _assert_same(tmp_path / "o.npz", clean_ort)


def test_cache_is_keyed_by_the_text_encoder_actually_used(parity_engine_dir, tmp_path):
    """Another text-encoder file (same export fingerprint) never reads the first one's entries."""
    from sed_trt.runtime.backends import create_backend

    other = tmp_path / "other"
    shutil.copytree(parity_engine_dir, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["graph_sha256"]["text_encoder"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    a = create_backend("onnxruntime", engine_dir=parity_engine_dir)
    b = create_backend("onnxruntime", engine_dir=other)
    assert a.manifest.text_fingerprint == b.manifest.text_fingerprint
    assert a.text_fingerprint != b.text_fingerprint


def test_non_finite_text_features_are_never_cached(tmp_path):
    from sed_trt.runtime.errors import EngineError
    from sed_trt.runtime.text_cache import TextFeatureCache, cached_text_features
    from sed_trt.runtime.tokenizer import ClipTokenizer

    cache = TextFeatureCache(tmp_path)
    with pytest.raises(EngineError, match="non-finite"):
        cached_text_features(
            lambda tok: np.full((len(tok), 8), np.nan, np.float32),
            ClipTokenizer(),
            ["cat"],
            fingerprint="x",
            cache=cache,
            num_templates=2,
            embed_dim=8,
        )
    assert not list(tmp_path.rglob("*.npz"))


def test_concurrent_predicts_on_one_cold_cache(parity_dir, parity_engine_dir, tmp_path, clean_ort):
    cache = tmp_path / "cache"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sed_trt",
                *_ort_args(parity_dir, parity_engine_dir, tmp_path / f"{i}.npz", cache=cache),
                "--threads",
                "1",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i in range(3)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
        assert b"WARNING" not in err, err.decode()
    for i in range(3):
        _assert_same(tmp_path / f"{i}.npz", clean_ort)
    assert len(_entries(cache)) == 1 and not list((cache / "text").glob(".*tmp"))


# ---------------------------------------------------------------- outputs


def test_outputs_never_clobber_inputs_or_each_other(parity_dir, tmp_path, capsys):
    image = tmp_path / "photo.png"
    shutil.copyfile(parity_dir / "image.png", image)
    original = image.read_bytes()

    def predict(*extra: str, classes: str = "cat,dog") -> int:
        return main(
            [
                "predict",
                "--backbone",
                "sed_tiny_linear",
                "--image",
                str(image),
                "--classes",
                classes,
                "--no-cache",
                "--quiet",
                *extra,
            ]
        )

    assert predict("--out", str(image)) == 2
    _one_line_error(capsys, "same file as --image")
    assert predict("--out", str(tmp_path / "x.png"), "--save-npz", str(tmp_path / "x.png")) == 2
    _one_line_error(capsys, "name the same file")
    (tmp_path / "dir.png").mkdir()
    assert predict("--save-npz", str(tmp_path / "o.npz"), "--out", str(tmp_path / "dir.png")) == 2
    _one_line_error(capsys, "is a directory")
    vocab = tmp_path / "classes.txt"
    vocab.write_text("cat\ndog\n")
    assert predict("--out", str(vocab), classes=str(vocab)) == 2
    _one_line_error(capsys, "same file as --classes")
    assert image.read_bytes() == original and not (tmp_path / "o.npz").exists() and vocab.read_text() == "cat\ndog\n"


def test_atomic_write_respects_umask_and_cleans_up(tmp_path):
    from sed_trt.runtime.fsutil import atomic_write

    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a.txt", lambda tmp: Path(tmp).write_text("ok"))
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640

    def boom(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise KeyboardInterrupt

    (tmp_path / "b.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "b.txt", boom)
    assert (tmp_path / "b.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


# ---------------------------------------------------------------- images and post-processing


def test_image_pixel_limit_is_checked_before_decoding(parity_dir, tmp_path, capsys):
    big = tmp_path / "big.png"
    Image.new("1", (16_000, 16_000)).save(big)  # 256 MP, a few kB on disk: Pillow alone calls it a bomb
    base = ["predict", "--backbone", "sed_tiny_linear", "--classes", "cat,dog", "--no-cache", "--quiet"]
    assert main([*base, "--image", str(big)]) == 2
    _one_line_error(capsys, "above the limit of 250 megapixels")
    assert main([*base, "--image", str(parity_dir / "image.png"), "--max-pixels", "1000"]) == 2
    _one_line_error(capsys, "raise it with --max-pixels")


# ---------------------------------------------------------------- bad inputs: exit 2, one line


def test_bad_inputs_exit_2_with_one_line(parity_dir, tmp_path, capsys):
    image = str(parity_dir / "image.png")
    base = ["predict", "--backbone", "sed_tiny_linear", "--image", image, "--no-cache", "--quiet"]
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9\nth\xe9\n".encode("latin-1"))
    long_name = " ".join(["very"] * 80) + " long class"
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    cases = [
        ([*base, "--classes", str(latin1)], "is not UTF-8 text"),
        ([*base, "--classes", f"{nfc},{nfd}"], "duplicate class names"),
        ([*base, "--classes", f"cat,{long_name}"], "longer than CLIP's 77 tokens"),
        ([*base, "--classes", "cat", "--device", "tpu9"], "is not a torch device"),
        ([*base, "--classes", "cat", "--pooling", "1000"], "--pooling must be between 1 and 24"),
    ]
    if not torch.cuda.is_available():
        cases.append(([*base, "--classes", "cat", "--device", "cuda"], "no CUDA GPU is available"))
    for args, message in cases:
        assert main(args) == 2, args
        _one_line_error(capsys, message)


def test_bad_checkpoints_exit_2_with_one_line(parity_dir, tmp_path, capsys):
    sd = torch.load(parity_dir / "checkpoint.pth", map_location="cpu", weights_only=True)
    model = sd.get("model", sd)
    key = sorted(k for k in model if "transformer" in k and model[k].is_floating_point())[0]
    model[key] = torch.full_like(model[key], float("nan"))
    torch.save({"model": model}, tmp_path / "nan.pth")

    class Evil:
        def __reduce__(self):  # would run code when unpickled
            return (print, ("pwned",))

    torch.save({"model": {}, "extra": Evil()}, tmp_path / "pickle.pth")
    base = [
        "predict",
        "--backbone",
        str(parity_dir / "cfg" / "sed_tiny_linear.json"),
        "--image",
        str(parity_dir / "image.png"),
        "--classes",
        "cat",
        "--no-cache",
        "--quiet",
    ]
    assert main([*base, "--weights", str(tmp_path / "nan.pth")]) == 2
    assert key.removeprefix("sem_seg_head.predictor.") in _one_line_error(capsys, "NaN or infinite values")
    assert main([*base, "--weights", str(tmp_path / "pickle.pth")]) == 2
    line = _one_line_error(capsys, "holds Python objects besides tensors")
    assert "weights_only" not in line and "pwned" not in capsys.readouterr().out


# ---------------------------------------------------------------- friction a new user met


def test_predict_names_its_files_and_the_npz_carries_class_names(parity_dir, small_engine_dir, tmp_path, capsys):
    from sed_trt.runtime.backends import base

    base._warned_random.clear()  # warned once per directory and process: earlier tests may have used it
    args = [
        "predict",
        "--backend",
        "onnxruntime",
        "--engine-dir",
        str(small_engine_dir),
        "--image",
        str(parity_dir / "image.png"),
        "--classes",
        "sky; tree, bush",
        "--no-cache",
        "--quiet",
        "--out",
        str(tmp_path / "s.png"),
        "--save-npz",
        str(tmp_path / "s.npz"),
    ]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert f"wrote {tmp_path / 's.npz'}, {tmp_path / 's.png'}" in captured.out
    assert "RANDOM weights" in captured.err  # the export had no --weights
    with np.load(tmp_path / "s.npz", allow_pickle=False) as data:
        assert list(data["classes"]) == ["sky", "tree, bush"]


def test_random_weights_are_seeded_and_leave_the_global_rng_alone():
    from sed_trt.sed.build import load_sed

    state = torch.random.get_rng_state()
    a, b = load_sed("sed_tiny_linear", warn_random=False), load_sed("sed_tiny_linear", warn_random=False)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k
    c = load_sed("sed_tiny_linear", warn_random=False, seed=1)
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


def test_every_flag_has_help():
    import argparse

    from sed_trt.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [
        f"{name} {'/'.join(a.option_strings)}"
        for name, p in sub.choices.items()
        for a in p._actions
        if a.option_strings and a.dest != "help" and not a.help
    ]
    assert not missing
    text = sub.choices["predict"].format_help()
    assert "(default: 250000000)" in text and "(default: None)" not in text


def test_overlay_legend_says_how_many_it_left_out():
    from sed_trt.runtime.visualize import legend_entries, overlay

    labels = np.repeat(np.arange(50), 8).reshape(20, 20)
    labels[:, :10] = 7  # class 7 covers the most area
    classes = [f"chest of drawers {i}" for i in range(50)]
    entries, hidden = legend_entries(labels, classes, max_legend=10)
    assert len(entries) == 10 and hidden == len(np.unique(labels)) - 10 == 30
    assert entries[0] == (7, "chest of drawers 7 51.0%")  # spaces kept, largest first
    vis = overlay(np.zeros((20, 20, 3), np.uint8), labels, classes, max_legend=10)
    full = overlay(np.zeros((20, 20, 3), np.uint8), labels, classes, max_legend=50)
    assert vis.shape[0] == 12 * 18 + 8 < full.shape[0]  # title, 10 entries and the "+30 more" line
    both = overlay(np.zeros((20, 20, 3), np.uint8), labels, classes, max_legend=10, side_by_side=True, alpha=1.0)
    assert both.shape[1] == vis.shape[1] + 20 and (both[:20, :20] == 0).all() and (both[:20, 20:40] != 0).any()


@pytest.mark.parametrize("backend_name", ["onnxruntime", "openvino"])
def test_a_graph_swapped_after_verification_is_never_loaded(
    parity_engine_dir, small_engine_dir, tmp_path, backend_name
):
    """Activation loads each graph from the bytes it verified: an export that replaces a file
    between the check and the load is refused in one line, never run as a mix of two exports
    (release 0.2 verified by path, then opened by path again).

    The OpenVINO variant runs in a fresh interpreter: in the suite's process, a later test then
    died of a heap corruption (SIGSEGV in CPython, reproduced 5 times with tests/runtime +
    tests/sed, never without this variant; releasing the half-loaded graphs at once and in order
    did not prevent it). The cause inside OpenVINO is not found."""
    pytest.importorskip(backend_name)
    if backend_name == "openvino":
        code = (
            "from pathlib import Path; from tests.runtime.test_integrity import _swap_body; "
            f"_swap_body(Path({str(parity_engine_dir)!r}), Path({str(small_engine_dir)!r}), Path({str(tmp_path)!r}), 'openvino'); "
            "print('swap ok')"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=Path(__file__).parents[2], capture_output=True, text=True
        )
        assert out.returncode == 0 and "swap ok" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]
        return
    _swap_body(parity_engine_dir, small_engine_dir, tmp_path, backend_name)


def _swap_body(parity_engine_dir: Path, small_engine_dir: Path, tmp_path: Path, backend_name: str) -> None:
    from sed_trt.runtime.backends import create_backend
    from sed_trt.runtime.backends.base import EngineDirBackend
    from sed_trt.runtime.errors import EngineError
    from sed_trt.runtime.manifest import Manifest

    work = tmp_path / "engine"
    shutil.copytree(parity_engine_dir, work)
    rel = Manifest.load(work).graphs["decoder_stage1_fuse"]
    other = small_engine_dir / Manifest.load(small_engine_dir).graphs["decoder_stage1_fuse"]
    verify = EngineDirBackend.verify
    loaded: list[bytes] = []

    def verify_then_swap(self):
        verify(self)
        shutil.copyfile(other, work / rel)  # another export lands between the check and the load

    backend = create_backend(backend_name, engine_dir=work)
    load = backend._load
    backend._load = lambda graph, path, data: loaded.append(data) or load(graph, path, data)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(EngineDirBackend, "verify", verify_then_swap)
        with pytest.raises(EngineError, match="does not match its sha256"):
            backend.activate()
    assert other.read_bytes() not in loaded
    # nothing half-loaded is left to the garbage collector (the loaded graphs were kept until then)
    assert loaded and not backend.active and backend._runners == {} and getattr(backend, "_compiled", {}) == {}
